"""The ledger check that keeps up: split across processes (--jobs) and incremental (--since-checkpoint),
it still names every tampering the one-process check names, in the same words and order.

The tamperings are those of tests/integration/store/test_ledger.py (someone with write access to the
database and none to the signing key); the pieces are made tiny here so that two jobs share the work.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select, update

from gateway.cli import main
from gateway.config import ROOT
from gateway.domain.consent import IllegalTransition, Input
from gateway.domain.ledger import ImpossibleEvent
from gateway.store import checkpoints, ledger
from gateway.store import consents as store_consents
from gateway.store.models import Consent, InboundMessage, LedgerEvent, OutboundMessage, PhoneNumber
from tests.integration.store.test_ledger import (
    T0,
    apply,
    checkpoint,
    drop_last_event_and_move_the_head_back,
    log_and_signer,
    number_id,
    opted_in_then_stopped,
    rebuild,
    rewrite_chain,
)

PHONES = [f"+1415555{index:04d}" for index in range(1, 9)]


def masked(phone: str) -> str:
    return f"{phone[:5]}***{phone[-4:]}"


def a_store(db):
    """Eight numbers with chains of three or four events."""
    for index, phone in enumerate(PHONES):
        opted_in_then_stopped(db, phone=phone)
        if index % 2:
            apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=phone)


def one_process(db, settings) -> list[str]:
    """What the check of one process, one batch, finds: the reference."""
    newest, _ = log_and_signer(settings)[0].newest()
    with db.snapshot() as session:
        return [str(found) for found in ledger.verify(session, checkpoint=newest)]


def checked(db, settings, *, jobs=2, since=False, tally=None) -> list[str]:
    newest, _ = log_and_signer(settings)[0].newest()
    return [str(found) for found in ledger.check(db, checkpoint=newest, jobs=jobs, since_checkpoint=since,
                                                 tally=tally, piece=2)]


def cli(test_env, *args):
    return CliRunner().invoke(main, list(args), env=test_env)


def edit_event(db, phone, seq, **values):
    """An event's content changed in place, its hash left as it was: what an UPDATE does."""
    edited = number_id(db, phone)
    with db.transaction() as session:
        session.execute(update(LedgerEvent).where(LedgerEvent.number_id == edited,
                                                  LedgerEvent.seq == seq).values(**values))


def delete_chain(db, phone):
    gone = number_id(db, phone)
    with db.transaction() as session:
        for table in (Consent, LedgerEvent, InboundMessage, OutboundMessage):
            session.execute(delete(table).where(table.number_id == gone))
        session.execute(delete(PhoneNumber).where(PhoneNumber.id == gone))


def tamper_with_everything(db):
    """One tampering of each kind, each on its own number."""
    drop_last_event_and_move_the_head_back(db, phone=PHONES[4])  # truncated, head moved back
    # Recomputed with valid hashes, the consents rebuilt to match (of every number, so this comes
    # first): only the checkpoint tells.
    rewrite_chain(db, lambda drafts: drafts[:2] + [
        dict(drafts[2], type="help", input="help", program_id=None, status_before=None, status_after=None),
        *drafts[3:]], phone=PHONES[5])
    edit_event(db, PHONES[0], 2, source="web")  # an edited event
    edit_event(db, PHONES[1], 1, evidence={"body": "something else"})  # edited evidence
    linked, flipped = number_id(db, PHONES[2]), number_id(db, PHONES[3])
    with db.transaction() as session:  # a broken link: a middle event removed
        session.execute(delete(LedgerEvent).where(LedgerEvent.number_id == linked, LedgerEvent.seq == 2))
        session.execute(update(Consent).where(Consent.number_id == flipped).values(status="opted_in"))  # projection
    delete_chain(db, PHONES[7])  # a whole chain deleted


EXPECTED = [
    (PHONES[0], "event 2 at seq 2: content was changed"),
    (PHONES[1], "event 4 at seq 1: evidence was changed"),
    (PHONES[2], "at seq 3: expected seq 2: an event was removed or reordered"),
    (PHONES[3], "program deals: the consent row says opted_in but the ledger says opted_out"),
    (PHONES[4], "signed seq 3: events were removed and the head moved back"),
    (PHONES[5], "at seq 4: differs from the checkpoint of"),
    (None, ": has no chain any more"),
]


def assert_each_named(found: list[str]):
    assert len(found) == len(EXPECTED), found
    for line, (phone, words) in zip(found, EXPECTED):
        if phone is not None:
            assert line.startswith(masked(phone)), line
        assert words in line, line


def test_two_jobs_find_every_tampering_as_one_process_does(db, settings, test_env):
    a_store(db)
    checkpoint(db, settings, now=T0)
    tamper_with_everything(db)
    reference = one_process(db, settings)
    assert_each_named(reference)
    tally = ledger.Tally()
    assert checked(db, settings, jobs=2, tally=tally) == reference  # same words, same order
    assert (tally.chains, tally.unchanged) == (7, 0)
    result = cli(test_env, "ledger", "verify", "--jobs", "2")
    assert result.exit_code == 1
    assert result.output.count("BROKEN ") == len(EXPECTED) and "7 problem(s) in 7 chains" in result.output
    assert not any(phone in result.output for phone in PHONES)  # masked


def test_an_intact_store_checked_by_two_jobs(db, settings, test_env):
    a_store(db)
    checkpoint(db, settings, now=T0)
    tally = ledger.Tally()
    assert checked(db, settings, jobs=2, tally=tally) == []
    assert (tally.chains, tally.events) == (8, 28)
    result = cli(test_env, "ledger", "verify", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert "ledger intact: 8 chains, 28 events; the consents agree with them; every chain holds" in result.output


def test_since_the_checkpoint_only_moved_chains_are_read_and_every_head_is_held(db, settings, test_env):
    a_store(db)
    checkpoint(db, settings, now=T0)
    apply(db, ("alerts", Input.KEYWORD_JOIN_DIRECT), phone=PHONES[2], at=T0 + timedelta(hours=1))
    apply(db, ("deals", Input.KEYWORD_JOIN_DIRECT), phone="+14155559999", at=T0 + timedelta(hours=1))  # new
    for jobs in (1, 2):
        tally = ledger.Tally()
        assert checked(db, settings, jobs=jobs, since=True, tally=tally) == []
        assert (tally.unchanged, tally.chains, tally.events) == (7, 2, 4 + 1)
    result = cli(test_env, "ledger", "verify", "--since-checkpoint")
    assert result.exit_code == 0, result.output
    assert "7 chains end at the head the checkpoint of" in result.output
    assert "2 chains, 5 events moved since it and were checked whole" in result.output
    assert "were not read: the full check reads them" in result.output


def test_since_the_checkpoint_every_tampering_that_moves_a_head_or_a_moved_chain_is_named(db, settings, test_env):
    a_store(db)
    checkpoint(db, settings, now=T0)
    for phone in PHONES[:4]:  # these four move on after the checkpoint …
        apply(db, ("alerts", Input.KEYWORD_JOIN_DIRECT), phone=phone, at=T0 + timedelta(hours=1))
    # … and each of them is tampered with before the checkpoint (seq 1 or 2) or after it: the chain
    # that moved is read whole.
    tamper_with_everything(db)
    for jobs in (1, 2):
        found = checked(db, settings, jobs=jobs, since=True)
        assert [line.split(":")[0] for line in found] == [line.split(":")[0] for line in one_process(db, settings)]
        assert_each_named(found)
    result = cli(test_env, "ledger", "verify", "--since-checkpoint", "--jobs", "2")
    assert result.exit_code == 1 and result.output.count("BROKEN ") == len(EXPECTED)


def test_since_the_checkpoint_an_old_event_rewritten_with_valid_hashes_shows_through_the_signed_head(db, settings):
    a_store(db)
    checkpoint(db, settings, now=T0)
    # The first event of an unchanged chain rewritten, every hash after it and the head recomputed,
    # the consents rebuilt to match: nothing but the signed head can tell.
    rewrite_chain(db, lambda drafts: [dict(drafts[0], actor="someone else"), *drafts[1:]], phone=PHONES[6])
    tally = ledger.Tally()
    (found,) = checked(db, settings, since=True, tally=tally)
    assert found.startswith(masked(PHONES[6])) and " at seq 3: differs from the checkpoint of " in found
    assert tally.unchanged == 7


def test_since_the_checkpoint_an_old_event_edited_in_place_in_an_unchanged_chain_is_left_to_the_full_check(
        db, settings, test_env):
    """The documented limit (docs/ledger.md): an edit that keeps the stored hashes leaves the head,
    and the signed root, as they were; only re-hashing the chain shows it, which the full check does."""
    a_store(db)
    checkpoint(db, settings, now=T0)
    edit_event(db, PHONES[6], 1, actor="someone else")
    flipped = number_id(db, PHONES[7])
    with db.transaction() as session:
        session.execute(update(Consent).where(Consent.number_id == flipped).values(status="opted_in"))
    assert checked(db, settings, since=True) == []
    said = cli(test_env, "ledger", "verify", "--since-checkpoint")
    assert said.exit_code == 0 and "were not read: the full check reads them" in said.output
    full = cli(test_env, "ledger", "verify", "--jobs", "2")
    assert full.exit_code == 1
    assert f"BROKEN {masked(PHONES[6])} (number {number_id(db, PHONES[6])}), event " in full.output
    assert "at seq 1: content was changed" in full.output
    assert "the consent row says opted_in but the ledger says opted_out" in full.output


def test_since_the_checkpoint_needs_a_checkpoint_and_bad_options_are_refused(db, settings, test_env):
    a_store(db)
    result = cli(test_env, "ledger", "verify", "--since-checkpoint")
    assert result.exit_code == 1 and "no checkpoint to check since: run the full check" in result.output
    for args in (["--jobs", "0"], ["--jobs", "two"], ["--number", PHONES[0], "--jobs", "2"],
                 ["--number", PHONES[0], "--since-checkpoint"]):
        refused = cli(test_env, "ledger", "verify", *args)
        assert refused.exit_code == 2, (args, refused.output)
    with db.snapshot() as session:  # nothing was written by any of them
        assert session.scalar(select(PhoneNumber.ledger_seq).where(PhoneNumber.e164 == PHONES[0])) == 3


def test_a_bad_newer_checkpoint_is_reported_by_the_incremental_check_too(db, settings, test_env):
    a_store(db)
    good = checkpoint(db, settings, now=T0)
    forged = good.path.with_name("checkpoint-20990101T000000.000000Z.jsonl")
    forged.write_bytes(good.path.read_bytes())
    result = cli(test_env, "ledger", "verify", "--since-checkpoint")
    assert result.exit_code == 1 and f"BROKEN checkpoint {forged.name}: its name does not match" in result.output
    assert good.created_at in result.output  # the check ran against the good one


def test_rebuild_by_two_jobs_writes_what_one_writes(db, settings, test_env):
    a_store(db)
    with db.snapshot() as session:
        before = sorted(tuple(row) for row in session.execute(
            select(Consent.number_id, Consent.program_id, Consent.status, Consent.restorable, Consent.expires_at)))
    with db.transaction() as session:
        session.execute(update(Consent).values(status="opted_in"))
    result = cli(test_env, "ledger", "rebuild", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert f"rebuilt {len(before)} consents from the ledger" in result.output
    with db.snapshot() as session:
        after = sorted(tuple(row) for row in session.execute(
            select(Consent.number_id, Consent.program_id, Consent.status, Consent.restorable, Consent.expires_at)))
    assert after == before
    assert one_process(db, settings) == []


def test_rebuild_by_two_jobs_refuses_a_ledger_that_could_not_have_happened_and_writes_nothing(db, monkeypatch):
    a_store(db)
    rewrite_chain(db, lambda drafts: drafts[1:], phone=PHONES[3], cover_up=False)  # a YES nobody was asked for
    first = number_id(db, PHONES[0])
    with db.transaction() as session:
        session.execute(update(Consent).where(Consent.number_id == first).values(status="opted_in"))
    monkeypatch.setattr(ledger, "PIECE", 2)
    with pytest.raises(ImpossibleEvent, match="confirm_yes is not allowed from no consent"), \
            db.transaction() as session:
        store_consents.rebuild(session, jobs=2)
    with db.snapshot() as session:  # the transaction rolled back: the edited row is still there
        assert session.scalars(select(Consent.status).where(Consent.number_id == first)).all() == ["opted_in"]


def test_an_impossible_event_crosses_from_a_job_whole():
    error = ImpossibleEvent({"id": 7, "seq": 1}, IllegalTransition(None, Input.CONFIRM_YES))
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.event, again.input) == (str(error), {"id": 7, "seq": 1}, Input.CONFIRM_YES)


def test_a_job_that_dies_makes_the_check_fail_saying_so(db, settings, test_env):
    """A job process killed mid-check: the command exits 1 and says the check did not finish, never
    'intact'."""
    a_store(db)
    env = {**os.environ, **test_env}
    result = subprocess.run([sys.executable, "-c", KILL_A_JOB], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the check did not finish" in result.stderr and "intact" not in result.stdout
    assert "Traceback" not in result.stderr


# The CLI with its pieces made tiny, and a job that dies on its second piece.
KILL_A_JOB = """
import sys
from gateway.store import ledger
from tests import ledger_jobs_support
ledger.PIECE = 2
ledger._verify_piece = ledger_jobs_support.dying_piece
from gateway.cli import main
sys.argv = ["smsgate", "ledger", "verify", "--jobs", "2"]
main()
"""


def test_shared_snapshot_jobs_read_one_moment_and_no_writer_waits(db):
    """PostgreSQL: a job joins the snapshot, so what is written after it is not seen. SQLite: the
    snapshot takes no lock, so a writer goes on beside it."""
    opted_in_then_stopped(db)
    with db.shared_snapshot() as (session, token):
        assert session.scalar(select(PhoneNumber.ledger_seq)) == 3
        apply(db, ("deals", Input.KEYWORD_START), at=T0 + timedelta(days=1))  # a writer, not kept waiting
        with db.joined_snapshot(token) as joined:
            seen = joined.scalar(select(PhoneNumber.ledger_seq))
        assert session.scalar(select(PhoneNumber.ledger_seq)) == 3  # its own moment holds
    assert seen == (3 if db.dialect == "postgresql" else 4)
    if db.dialect == "postgresql":
        with pytest.raises(ValueError, match="not an exported snapshot"):
            with db.joined_snapshot("'; DROP TABLE numbers; --"):
                pass


def test_checkpoint_heads_from_a_number_on(db, settings):
    for phone in PHONES:
        apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=phone)
    delete_chain(db, PHONES[3])
    written = checkpoint(db, settings)
    ids = [head.number_id for head in written.heads()]
    assert ids == sorted(number_id(db, phone) for phone in PHONES if phone != PHONES[3])
    for first in range(0, ids[-1] + 3):
        assert [head.number_id for head in written.heads(first)] == [i for i in ids if i >= first]
    empty = checkpoints.CheckpointLog(written.path.parent / "empty", written.public_key)
    assert list(empty.write(iter([]), log_and_signer(settings)[1]).heads(5)) == []


def test_rebuild_cover_up_is_still_caught_by_two_jobs(db, settings):
    """The test_ledger cover-up (truncate, move the head back, rebuild the consents), found in parallel."""
    a_store(db)
    checkpoint(db, settings, now=T0)
    drop_last_event_and_move_the_head_back(db, phone=PHONES[2])
    rebuild(db)
    (found,) = checked(db, settings, jobs=2)
    assert found.startswith(masked(PHONES[2])) and found.endswith("events were removed and the head moved back")


def test_jobs_get_at_least_four_pieces_each_of_a_small_ledger():
    """26,668 numbers for two jobs: eight pieces, not one of 20,000 numbers and one of the rest."""
    pieces = ledger._pieces(1, 26_668, None, 2)
    assert len(pieces) == 8 and pieces[0] == (None, 3_334) and pieces[-1] == (23_339, None)
    assert all(last + 1 == first for (_, last), (first, _) in zip(pieces, pieces[1:]))
    assert ledger._pieces(1, 26_668, None, 1) == [(None, 20_000), (20_001, None)]  # one process: as before
    assert len(ledger._pieces(1, 5_000_000, None, 2)) == 250  # a large one: PIECE numbers a piece
    assert len(ledger._pieces(1, 3_000, None, 2)) == 3  # never below SMALLEST_PIECE numbers
