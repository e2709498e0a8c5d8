"""What a number's ledger says, in plain words: the consent as of a moment, and the sentences of a
consent certificate. Pure: events are any objects with the ledger's fields (ORM rows in practice).

A certificate states only what the ledger holds. Each sentence names the event it comes from (its
seq), so a reader can match it with the proof bundle, where that event's hash is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain.consent import OPT_OUT_INPUTS, Status
from gateway.domain.ledger import Replayed, replay
from gateway.domain.review import NOT_REVOCATION_EVENT, REVIEW_EVENT

# Evidence fields that are the exact text a person saw or sent, with how a certificate names them.
QUOTED = (("disclosure_text", "The page showed"), ("consent_label", "The box they ticked said"),
          ("confirmation_text", "The confirmation text we sent read"), ("body", "Their text read"))
# Evidence fields about where an action came from.
ORIGIN = (("page_url", "page"), ("ip", "address"), ("user_agent", "browser"), ("to", "texted to"),
          ("messaging_service_sid", "messaging service"), ("keyword", "keyword"), ("language", "language"),
          ("opt_out_type", "Twilio opt-out type"))

STATUS_WORDS = {Status.PENDING: "asked, waiting for their YES", Status.OPTED_IN: "agreed (opted in)",
                Status.OPTED_OUT: "stopped (opted out)", Status.EXPIRED: "asked, but never confirmed (expired)",
                None: "no consent held"}


@dataclass(frozen=True)
class AsOf:
    """One program's consent at a moment, and the events of that program that led there."""

    program_id: int
    status: Status | None
    since: datetime | None
    events: list = field(default_factory=list)


def consent_as_of(events: Iterable, moment: datetime) -> dict[int, AsOf]:
    """The consent of every program as it stood at `moment`: the chain up to then, replayed through
    the state machine (the same replay `ledger verify` trusts), by program id."""
    before = [event for event in events if event.occurred_at <= moment]
    replayed: dict[int, Replayed] = replay(before)
    by_program: dict[int, list] = {}
    for event in before:
        if event.program_id is not None:
            by_program.setdefault(event.program_id, []).append(event)
    return {program_id: AsOf(program_id, replayed[program_id].state.status if program_id in replayed else None,
                             replayed[program_id].updated_at if program_id in replayed else None, chain)
            for program_id, chain in by_program.items()}


@dataclass(frozen=True)
class Statement:
    """One sentence of a certificate, about one event, with the exact texts it quotes."""

    seq: int
    when: str
    text: str
    quotes: list[tuple[str, str]]
    origin: list[tuple[str, str]]


def _who(event) -> str:
    if event.source == "sms":
        return "The person, texting from this number,"
    if event.source == "web":
        return "Someone using this number on our web form"
    if event.source == "api":
        return f"The business system using API key {event.actor!r}" if event.actor else "A business system (API)"
    if event.source == "import":
        return f"An import ({event.actor or 'unnamed'}, {event.reference or 'no reference'})"
    if event.source == "carrier":
        return "The mobile carrier, through Twilio,"
    return f"The gateway ({event.actor or 'system'})"


_WHAT = {
    "api_request": "asked for consent to {program}: a confirmation text was due",
    "web_request": "asked to receive texts from {program}: a confirmation text was due",
    "keyword_join": "texted a join keyword for {program}: a confirmation text was due",
    "keyword_join_direct": "texted a join keyword and joined {program} (single opt-in)",
    "confirm_yes": "replied to confirm: consent to {program} was given",
    "keyword_stop": "asked to stop: {program} ended",
    "wrong_number": "said this is a wrong number: {program} ended, and START cannot restore it",
    "ambiguous_reply": "replied in words that may revoke (\"no thanks\"), which {program} takes as an opt-out: "
                       "{program} ended",
    REVIEW_EVENT: "replied in words that may revoke (\"no thanks\"); {program} kept the consent and listed the "
                  "reply for staff to review",
    "review_opt_out": "read the person's reply on review as a revocation: {program} ended",
    NOT_REVOCATION_EVENT: "read the person's reply on review as not a revocation: {program} kept the consent",
    "keyword_start": "asked to start again: {program} was restored",
    "carrier_opt_out": "reported that the person opted out: {program} ended",
    "carrier_deactivation": "listed the number as deactivated by its carrier: {program} ended",
    "reassigned_number": "reported the number reassigned since consent was given: {program} ended",
    "api_opt_out": "recorded an opt-out made another way (a call, an email): {program} ended",
    "doi_expired": "closed the request: no YES came in time for {program}",
    "import_opt_in": "recorded consent to {program} collected elsewhere",
    "import_opt_out": "recorded an opt-out from {program} collected elsewhere",
    "erase": "erased the personal data held for {program}",
}


def statements(events: Iterable, program_name: Callable[[int | None], str],
               when: Callable[[datetime], str]) -> list[Statement]:
    """The certificate's sentences, one per event, oldest first."""
    said = []
    for event in events:
        template = _WHAT.get(event.input)
        program = program_name(event.program_id)
        if template is not None:
            what = template.format(program=program)
        elif event.type == "erasure":
            what = "erased the personal data held for this number (the events stay, their evidence redacted)"
        elif event.type == "help":
            what = "asked for help"
        else:
            what = f"recorded {event.type.replace('_', ' ')}" + (f" for {program}" if event.program_id else "")
        evidence = event.evidence or {}
        quotes = [(label, str(evidence[key])) for key, label in QUOTED if evidence.get(key)]
        origin = [(label, str(evidence[key])) for key, label in ORIGIN if evidence.get(key)]
        if evidence.get("redacted") is True:
            quotes.append(("Evidence", "erased at the person's request (its digest stays in the chain)"))
        said.append(Statement(event.seq, when(event.occurred_at), f"{_who(event)} {what}.", quotes, origin))
    return said


@dataclass(frozen=True)
class Summary:
    """The answer to "who agreed to what, when, and when did they stop", per program."""

    program_id: int
    status: Status | None
    asked_at: datetime | None
    agreed_at: datetime | None
    stopped_at: datetime | None


_ASKED = {"api_request", "web_request", "keyword_join", "import_opt_in", "keyword_join_direct"}
_AGREED = {"confirm_yes", "keyword_join_direct", "keyword_start", "import_opt_in"}
_STOPPED = {input.value for input in OPT_OUT_INPUTS}


def summaries(events: Iterable) -> dict[int, Summary]:
    """Per program: its state now and the last time it was asked for, agreed to and stopped."""
    events = list(events)
    now = replay(events)
    found: dict[int, dict] = {}
    for event in events:
        if event.program_id is None:
            continue
        times = found.setdefault(event.program_id, {"asked_at": None, "agreed_at": None, "stopped_at": None})
        for kinds, key in ((_ASKED, "asked_at"), (_AGREED, "agreed_at"), (_STOPPED, "stopped_at")):
            if event.input in kinds:
                times[key] = event.occurred_at
    return {program_id: Summary(program_id, now[program_id].state.status if program_id in now else None, **times)
            for program_id, times in found.items()}
