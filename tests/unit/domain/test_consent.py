"""Every transition of the consent state machine, and the refusal of every illegal one."""

import itertools

import pytest

from gateway.domain.consent import (
    NOT_RESTORABLE,
    NUMBER_CHANGED_HANDS,
    OPT_OUT_INPUTS,
    OWN_OPT_INS,
    REVOCATIONS,
    TRANSITIONS,
    IllegalTransition,
    Input,
    State,
    Status,
    allowed,
    apply,
)

NEVER = State()
PENDING = State(Status.PENDING)
OPTED_IN = State(Status.OPTED_IN)
OPTED_OUT = State(Status.OPTED_OUT)
OPTED_OUT_RESTORABLE = State(Status.OPTED_OUT, restorable=True)
EXPIRED = State(Status.EXPIRED)
ALL_STATES = [NEVER, PENDING, OPTED_IN, OPTED_OUT, OPTED_OUT_RESTORABLE, EXPIRED]

# (state, input) -> state after. Written out by hand: this table is the specification.
LEGAL = {
    (NEVER, Input.API_REQUEST): PENDING,
    (PENDING, Input.API_REQUEST): PENDING,
    (EXPIRED, Input.API_REQUEST): PENDING,
    (NEVER, Input.WEB_REQUEST): PENDING,
    (PENDING, Input.WEB_REQUEST): PENDING,
    (EXPIRED, Input.WEB_REQUEST): PENDING,
    (NEVER, Input.KEYWORD_JOIN): PENDING,
    (PENDING, Input.KEYWORD_JOIN): PENDING,
    (EXPIRED, Input.KEYWORD_JOIN): PENDING,
    (OPTED_OUT, Input.KEYWORD_JOIN): PENDING,
    (OPTED_OUT_RESTORABLE, Input.KEYWORD_JOIN): PENDING,
    (NEVER, Input.KEYWORD_JOIN_DIRECT): OPTED_IN,
    (PENDING, Input.KEYWORD_JOIN_DIRECT): OPTED_IN,
    (EXPIRED, Input.KEYWORD_JOIN_DIRECT): OPTED_IN,
    (OPTED_OUT, Input.KEYWORD_JOIN_DIRECT): OPTED_IN,
    (OPTED_OUT_RESTORABLE, Input.KEYWORD_JOIN_DIRECT): OPTED_IN,
    (PENDING, Input.CONFIRM_YES): OPTED_IN,
    (OPTED_OUT_RESTORABLE, Input.KEYWORD_START): OPTED_IN,
    (PENDING, Input.DOI_EXPIRED): EXPIRED,
    (NEVER, Input.IMPORT_OPT_IN): OPTED_IN,
    (PENDING, Input.IMPORT_OPT_IN): OPTED_IN,
    (EXPIRED, Input.IMPORT_OPT_IN): OPTED_IN,
    **{(state, Input.ERASE): NEVER for state in ALL_STATES},
}
for opt_out in (Input.KEYWORD_STOP, Input.AMBIGUOUS_REPLY, Input.REVIEW_OPT_OUT, Input.CARRIER_OPT_OUT,
                Input.API_OPT_OUT, Input.IMPORT_OPT_OUT):
    LEGAL.update({
        (NEVER, opt_out): OPTED_OUT,
        (PENDING, opt_out): OPTED_OUT,
        (EXPIRED, opt_out): OPTED_OUT,
        (OPTED_IN, opt_out): OPTED_OUT_RESTORABLE,
        (OPTED_OUT, opt_out): OPTED_OUT,
        (OPTED_OUT_RESTORABLE, opt_out): OPTED_OUT_RESTORABLE,
    })
# A wrong number ends every consent and none of them can come back with START: it was someone else's.
LEGAL.update({(state, ending): OPTED_OUT for state in ALL_STATES
              for ending in (Input.WRONG_NUMBER, Input.CARRIER_DEACTIVATION, Input.REASSIGNED_NUMBER)})


def test_start_after_a_wrong_number_restores_nothing():
    after = apply(apply(OPTED_IN, Input.KEYWORD_STOP), Input.WRONG_NUMBER)
    assert after == OPTED_OUT
    assert not allowed(after, Input.KEYWORD_START)
    assert allowed(after, Input.KEYWORD_JOIN)  # the number's new holder may still join by text


@pytest.mark.parametrize(("state", "input"), list(LEGAL), ids=lambda v: getattr(v, "value", None) or str(v))
def test_legal_transition(state, input):
    assert allowed(state, input)
    assert apply(state, input) == LEGAL[(state, input)]


ILLEGAL = [(s, i) for s, i in itertools.product(ALL_STATES, Input) if (s, i) not in LEGAL]


@pytest.mark.parametrize(("state", "input"), ILLEGAL, ids=lambda v: getattr(v, "value", None) or str(v))
def test_illegal_transition_is_refused(state, input):
    assert not allowed(state, input)
    with pytest.raises(IllegalTransition) as caught:
        apply(state, input)
    assert input.value in str(caught.value)


def test_every_input_has_a_transition_rule():
    assert set(TRANSITIONS) == set(Input)


def test_nobody_who_opted_out_can_be_asked_again_by_a_business():
    for input in (Input.API_REQUEST, Input.WEB_REQUEST, Input.IMPORT_OPT_IN):
        assert not allowed(OPTED_OUT, input)
        assert not allowed(OPTED_OUT_RESTORABLE, input)


def test_start_restores_only_what_had_been_confirmed():
    stopped_while_pending = apply(PENDING, Input.KEYWORD_STOP)
    stopped_while_confirmed = apply(OPTED_IN, Input.KEYWORD_STOP)
    assert not allowed(stopped_while_pending, Input.KEYWORD_START)
    assert apply(stopped_while_confirmed, Input.KEYWORD_START) == OPTED_IN
    # A second STOP keeps the memory of the first one's consent.
    assert apply(stopped_while_confirmed, Input.KEYWORD_STOP).restorable


def test_revocations_are_every_opt_out_but_a_number_that_changed_hands():
    """What a STOP that binds for years binds: the person's own no, however it reached us."""
    assert REVOCATIONS == {Input.KEYWORD_STOP, Input.WRONG_NUMBER, Input.AMBIGUOUS_REPLY, Input.REVIEW_OPT_OUT,
                           Input.CARRIER_OPT_OUT, Input.API_OPT_OUT, Input.IMPORT_OPT_OUT}
    assert REVOCATIONS | NUMBER_CHANGED_HANDS == OPT_OUT_INPUTS and not REVOCATIONS & NUMBER_CHANGED_HANDS
    assert NOT_RESTORABLE == {Input.WRONG_NUMBER, Input.CARRIER_DEACTIVATION, Input.REASSIGNED_NUMBER}
    # Every input that ends in opted_out is an opt-out input: a new one cannot be left out of these sets.
    assert {input for input, (_, target) in TRANSITIONS.items() if target is Status.OPTED_OUT} == OPT_OUT_INPUTS
    # Only the person's texts lift such a STOP, and each of them leads to a consent.
    assert OWN_OPT_INS == {Input.KEYWORD_START, Input.CONFIRM_YES, Input.KEYWORD_JOIN, Input.KEYWORD_JOIN_DIRECT}
    assert all(TRANSITIONS[input][1] in (Status.PENDING, Status.OPTED_IN) for input in OWN_OPT_INS)
