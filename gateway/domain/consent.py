"""The consent state machine: named inputs move one (number, program) between states.

Pure: no database. `consent.service` is the only caller that persists what this decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"  # asked, waiting for the person's YES
    OPTED_IN = "opted_in"
    OPTED_OUT = "opted_out"
    EXPIRED = "expired"  # pending too long; a YES no longer confirms it


class Input(StrEnum):
    API_REQUEST = "api_request"  # a marketing system starts a double opt-in
    WEB_REQUEST = "web_request"  # the hosted form starts a double opt-in
    KEYWORD_JOIN = "keyword_join"  # the person texted a join keyword of a double opt-in program
    KEYWORD_JOIN_DIRECT = "keyword_join_direct"  # ... of a single opt-in program: the handset proves possession
    CONFIRM_YES = "confirm_yes"  # the person replied YES to a pending request
    KEYWORD_STOP = "keyword_stop"  # STOP family, or a clear free-text revocation
    # "Wrong number": whoever holds the number now never agreed. Ends every consent of the number, and
    # nothing it ends can be restored by START: that consent was someone else's.
    WRONG_NUMBER = "wrong_number"
    # A reply that may be a revocation ("no thanks", "not interested") on a program that treats one as an
    # opt-out (ambiguous_replies = "opt_out", the default); on "review" it is listed for staff instead.
    AMBIGUOUS_REPLY = "ambiguous_reply"
    REVIEW_OPT_OUT = "review_opt_out"  # staff read a listed ambiguous reply as a revocation
    KEYWORD_START = "keyword_start"  # START / UNSTOP: restores what was confirmed before the opt-out
    CARRIER_OPT_OUT = "carrier_opt_out"  # Twilio answered 21610: the person opted out at Twilio
    # The carriers' daily Deactivations list named the number: its subscriber gave it up. Like a wrong
    # number, what it ends cannot be restored by START (the next holder never agreed).
    CARRIER_DEACTIVATION = "carrier_deactivation"
    # Lookup's reassigned-number check said "yes" for the consent's date: someone else holds it now.
    REASSIGNED_NUMBER = "reassigned_number"
    API_OPT_OUT = "api_opt_out"  # an opt-out heard another way (phone call, email), recorded by staff
    DOI_EXPIRED = "doi_expired"  # a pending request passed its deadline
    IMPORT_OPT_IN = "import_opt_in"  # consent collected elsewhere, imported with its evidence
    IMPORT_OPT_OUT = "import_opt_out"
    ERASE = "erase"  # personal data erased; the state is forgotten (a suppression hash remains)


class Source(StrEnum):
    SMS = "sms"
    WEB = "web"
    API = "api"
    IMPORT = "import"
    CARRIER = "carrier"
    SYSTEM = "system"


# Ledger event type for each input: what a compliance reader looks for.
EVENT_TYPES: dict[Input, str] = {
    Input.API_REQUEST: "request",
    Input.WEB_REQUEST: "request",
    Input.KEYWORD_JOIN: "request",
    Input.KEYWORD_JOIN_DIRECT: "opt_in",
    Input.CONFIRM_YES: "confirmation",
    Input.KEYWORD_STOP: "opt_out",
    Input.WRONG_NUMBER: "opt_out",
    Input.AMBIGUOUS_REPLY: "opt_out",
    Input.REVIEW_OPT_OUT: "opt_out",
    Input.KEYWORD_START: "opt_in",
    Input.CARRIER_OPT_OUT: "carrier_opt_out",
    Input.CARRIER_DEACTIVATION: "opt_out",
    Input.REASSIGNED_NUMBER: "opt_out",
    Input.API_OPT_OUT: "opt_out",
    Input.DOI_EXPIRED: "expiry",
    Input.IMPORT_OPT_IN: "import",
    Input.IMPORT_OPT_OUT: "import",
    Input.ERASE: "erasure",
}

_NEVER = None  # "no row": never asked
_ANY = (_NEVER, *Status)
_REQUESTABLE = (_NEVER, Status.PENDING, Status.EXPIRED)

# input -> (states it may be applied in, state it leads to). Anything else is illegal.
TRANSITIONS: dict[Input, tuple[tuple[Status | None, ...], Status | None]] = {
    # A business may (re)ask only someone who never said no: an opted-out person must come back by text.
    Input.API_REQUEST: (_REQUESTABLE, Status.PENDING),
    Input.WEB_REQUEST: (_REQUESTABLE, Status.PENDING),
    Input.KEYWORD_JOIN: ((*_REQUESTABLE, Status.OPTED_OUT), Status.PENDING),
    Input.KEYWORD_JOIN_DIRECT: ((*_REQUESTABLE, Status.OPTED_OUT), Status.OPTED_IN),
    Input.CONFIRM_YES: ((Status.PENDING,), Status.OPTED_IN),
    Input.KEYWORD_STOP: (_ANY, Status.OPTED_OUT),
    Input.WRONG_NUMBER: (_ANY, Status.OPTED_OUT),
    Input.AMBIGUOUS_REPLY: (_ANY, Status.OPTED_OUT),
    Input.REVIEW_OPT_OUT: (_ANY, Status.OPTED_OUT),
    Input.CARRIER_OPT_OUT: (_ANY, Status.OPTED_OUT),
    Input.CARRIER_DEACTIVATION: (_ANY, Status.OPTED_OUT),
    Input.REASSIGNED_NUMBER: (_ANY, Status.OPTED_OUT),
    Input.API_OPT_OUT: (_ANY, Status.OPTED_OUT),
    Input.IMPORT_OPT_OUT: (_ANY, Status.OPTED_OUT),
    Input.KEYWORD_START: ((Status.OPTED_OUT,), Status.OPTED_IN),
    Input.DOI_EXPIRED: ((Status.PENDING,), Status.EXPIRED),
    # An import never overrides a person's own opt-out, nor repeats a live consent.
    Input.IMPORT_OPT_IN: (_REQUESTABLE, Status.OPTED_IN),
    Input.ERASE: (_ANY, _NEVER),
}

OPT_OUT_INPUTS = frozenset(
    {Input.KEYWORD_STOP, Input.WRONG_NUMBER, Input.AMBIGUOUS_REPLY, Input.REVIEW_OPT_OUT, Input.CARRIER_OPT_OUT,
     Input.CARRIER_DEACTIVATION, Input.REASSIGNED_NUMBER, Input.API_OPT_OUT, Input.IMPORT_OPT_OUT}
)
# The number changed hands: the consent ends, but nobody revoked it (its next holder never agreed, and
# never said no either).
NUMBER_CHANGED_HANDS = frozenset({Input.CARRIER_DEACTIVATION, Input.REASSIGNED_NUMBER})
# Inputs that say the consent was (or will be) another person's: START must never revive what they end.
NOT_RESTORABLE = frozenset({Input.WRONG_NUMBER, *NUMBER_CHANGED_HANDS})
# Revocations: every opt-out that is the person's own "no", whether texted (STOP, a wrong-number reply, an
# ambiguous reply a program takes as one or staff read as one), given at Twilio, told to staff another way
# or collected elsewhere and imported. What a STOP that binds for years binds (a rule pack's
# stop_binds_years, services/consents.stop_binding). A number that changed hands is no revocation: a
# STOP binds the person who said it, and the number's next holder may well opt in the day they get it.
REVOCATIONS = OPT_OUT_INPUTS - NUMBER_CHANGED_HANDS
# The person's own "yes", by text: the only thing that lifts a STOP that binds for years.
OWN_OPT_INS = frozenset({Input.KEYWORD_START, Input.CONFIRM_YES, Input.KEYWORD_JOIN, Input.KEYWORD_JOIN_DIRECT})


class IllegalTransition(ValueError):
    """The input does not apply in the current state; nothing was changed."""

    def __init__(self, state: Status | None, input: Input):
        super().__init__(f"{input.value} is not allowed from {state.value if state else 'no consent'}")
        self.state = state
        self.input = input

    def __reduce__(self):  # pickled as what it was made from (a job of `ledger rebuild` raises it)
        return IllegalTransition, (self.state, self.input)


@dataclass(frozen=True)
class State:
    """The state of one (number, program); `status` None means never asked (or erased)."""

    status: Status | None = None
    # Set when an opt-out ended a confirmed consent, so START can restore exactly that.
    restorable: bool = False


def allowed(state: State, input: Input) -> bool:
    sources, _ = TRANSITIONS[input]
    if input is Input.KEYWORD_START and not state.restorable:
        return False
    return state.status in sources


def apply(state: State, input: Input) -> State:
    """The state after `input`; raise IllegalTransition when it does not apply."""
    if not allowed(state, input):
        raise IllegalTransition(state.status, input)
    _, target = TRANSITIONS[input]
    if input in NOT_RESTORABLE:
        return State(target, restorable=False)  # the consent was another person's: START must not revive it
    if input in OPT_OUT_INPUTS:
        # A second STOP must not forget that the first one ended a real consent.
        return State(target, restorable=state.status is Status.OPTED_IN or state.restorable)
    return State(target, restorable=False)
