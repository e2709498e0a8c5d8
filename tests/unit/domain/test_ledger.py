"""The ledger's chains without a store: hashing, chaining, checking and replaying one number's events.

Reading chains from the store and signed checkpoints are tests/integration/store/test_ledger.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.consent import Input, Status
from gateway.domain.ledger import (
    GENESIS_HASH,
    Event,
    ImpossibleEvent,
    chain,
    check_against_checkpoint,
    check_chain,
    check_projection,
    event_hash,
    evidence_digest,
    number_label,
    replay,
)

T0 = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
LABEL = "+1415***2671 (number 7)"


def draft(input: Input, at: datetime, program_id: int | None = 1, **changes) -> dict:
    return {"type": "opt_in", "input": input.value, "program_id": program_id, "status_before": None,
            "status_after": None, "expires_at": None, "source": "api", "actor": "test", "reference": None,
            "evidence": {"said": input.value}, "occurred_at": at, **changes}


@dataclass
class Stored:
    """An event as a row holds it: the chained content, with the row's id."""

    event: Event
    id: int

    def __getattr__(self, name):
        return getattr(self.event, name)


@dataclass
class Number:
    id: int
    ledger_seq: int
    ledger_head: str


@dataclass
class ConsentRow:
    status: str
    restorable: bool
    expires_at: datetime | None


def stored(events: list[Event]) -> list[Stored]:
    return [Stored(event, id=100 + i) for i, event in enumerate(events)]


def chained(*drafts: dict) -> tuple[Number, list[Stored]]:
    events = chain(7, 0, GENESIS_HASH, list(drafts))
    return Number(7, len(events), events[-1].hash if events else GENESIS_HASH), stored(events)


OPTED_IN_THEN_STOPPED = (draft(Input.IMPORT_OPT_IN, T0), draft(Input.KEYWORD_STOP, T0 + timedelta(hours=1)))


def test_each_event_hashes_the_one_before_it():
    number, events = chained(*OPTED_IN_THEN_STOPPED)
    assert [e.seq for e in events] == [1, 2]
    assert events[0].prev_hash == GENESIS_HASH and events[1].prev_hash == events[0].hash
    assert all(event_hash(e) == e.hash for e in events)
    assert events[0].evidence_digest == evidence_digest({"said": "import_opt_in"})
    # Chaining more later continues from the head, as one chain made at once would.
    later = chain(7, 1, events[0].hash, [OPTED_IN_THEN_STOPPED[1]])
    assert later[0] == events[1].event


def test_the_hash_covers_the_content_and_the_place():
    _, events = chained(*OPTED_IN_THEN_STOPPED)
    first = events[0].event
    for change in ({"actor": "someone else"}, {"seq": 2}, {"prev_hash": "1" * 64},
                   {"occurred_at": T0 + timedelta(microseconds=1)}, {"evidence_digest": "0" * 64}):
        assert event_hash(replace(first, **change)) != first.hash, change


def test_an_intact_chain_checks():
    number, events = chained(*OPTED_IN_THEN_STOPPED)
    assert check_chain(number, events, LABEL) is None
    empty = Number(8, 0, GENESIS_HASH)
    assert check_chain(empty, [], LABEL) is None


@pytest.mark.parametrize(("tamper", "problem"), [
    (lambda n, es: (n, [es[1]]), "expected seq 1"),
    (lambda n, es: (n, [es[0], Stored(replace(es[1].event, prev_hash="1" * 64), es[1].id)]),
     "does not follow the event before it"),
    (lambda n, es: (n, [Stored(replace(es[0].event, evidence={"said": "other"}), es[0].id), es[1]]),
     "evidence was changed"),
    (lambda n, es: (n, [Stored(replace(es[0].event, actor="mallory"), es[0].id), es[1]]), "content was changed"),
    (lambda n, es: (Number(n.id, 1, es[0].hash), es[:1]), None),  # both cut back: only a checkpoint shows it
    (lambda n, es: (n, es[:1]), "the chain ends at seq 1 but the number's head says 2"),
])
def test_a_changed_chain_shows_where(tamper, problem):
    number, events = tamper(*chained(*OPTED_IN_THEN_STOPPED))
    found = check_chain(number, events, LABEL)
    if problem is None:
        assert found is None
    else:
        assert problem in found.problem and str(found).startswith(LABEL)


def test_erased_evidence_is_no_break_after_an_erasure():
    number, events = chained(*OPTED_IN_THEN_STOPPED, draft(Input.ERASE, T0 + timedelta(hours=2), type="erasure"))
    redacted = [Stored(replace(e.event, evidence={"redacted": True}), e.id) for e in events]
    assert check_chain(number, redacted, LABEL) is None


def test_a_checkpointed_head_must_still_be_in_the_chain():
    @dataclass
    class Head:
        seq: int
        hash: str

    number, events = chained(*OPTED_IN_THEN_STOPPED)
    assert check_against_checkpoint(number, events, LABEL, Head(2, events[1].hash), "then") is None
    assert "events were removed" in check_against_checkpoint(number, events[:1], LABEL, Head(2, "x"), "then").problem
    assert "rewritten" in check_against_checkpoint(number, events, LABEL, Head(1, "1" * 64), "then").problem


def test_replay_gives_the_consents_the_chain_leads_to():
    _, events = chained(*OPTED_IN_THEN_STOPPED, draft(Input.IMPORT_OPT_IN, T0, program_id=2),
                        draft(Input.API_REQUEST, T0, program_id=None))  # no program: changes no state
    replayed = replay(events)
    assert set(replayed) == {1, 2}
    assert replayed[1].state.status is Status.OPTED_OUT and replayed[1].updated_at == T0 + timedelta(hours=1)
    assert replayed[2].state.status is Status.OPTED_IN


def test_a_chain_the_state_machine_refuses_could_not_have_happened():
    _, events = chained(draft(Input.CONFIRM_YES, T0))  # YES with nothing pending
    with pytest.raises(ImpossibleEvent) as caught:
        replay(events)
    assert caught.value.event is events[0]
    [found] = check_projection(Number(7, 1, events[0].hash), events, {}, LABEL, {1: "deals"})
    assert "could not have happened" in found.problem and found.program == "deals"


def test_the_consents_must_be_what_the_chain_leads_to():
    number, events = chained(*OPTED_IN_THEN_STOPPED)
    restorable = replay(events)[1].state.restorable
    agreeing = {1: ConsentRow("opted_out", restorable, None)}
    assert list(check_projection(number, events, agreeing, LABEL, {1: "deals"})) == []
    [flipped] = check_projection(number, events, {1: ConsentRow("opted_in", restorable, None)}, LABEL, {1: "deals"})
    assert flipped.problem == "the consent row says opted_in but the ledger says opted_out"
    [missing] = check_projection(number, events, {}, LABEL, {})
    assert missing.problem == "the ledger says opted_out but there is no consent row" and missing.program == "#1"


def test_reports_mask_the_number():
    assert number_label(7, "+14155552671") == LABEL
    assert number_label(7, None) == "erased number 7"
