"""`ledger verify` checks what the gate reads, and signed checkpoints catch what a hash chain cannot.

The attacks are the ones a person with write access to the database (and none to the signing key)
can make: flip a consent, drop a STOP and move the head back, delete a number's chain, recompute a
chain with valid hashes.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, select, update

from gateway.cli import main
from gateway.config import ConfigError, load_settings
from gateway.domain import merkle
from gateway.domain.consent import Input, Source
from gateway.domain.gate import Decision, Kind
from gateway.domain.ledger import GENESIS_HASH, chain
from gateway.domain.numbers import parse
from gateway.domain.quiet_hours import default_rules
from gateway.queue.app import QueueNames, TaskNames, make_celery
from gateway.services import consents, policy, privacy
from gateway.store import checkpoints, ledger
from gateway.store import consents as store_consents
from gateway.store.models import Consent, InboundMessage, LedgerEvent, OutboundMessage, PhoneNumber
from gateway.store.programs import by_slug
from tests.conftest import wait_for

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
PHONE, OTHER = "+14155552671", "+14155552672"
MASKED = "+1415***2671"
EVIDENCE = consents.Evidence(Source.SMS, actor="twilio", reference="SM1", details={"body": "words"})


def apply(db, *steps, phone=PHONE, at=T0):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug, input in steps:
            consents.apply(session, row, by_slug(session, slug), input, EVIDENCE, now=at,
                          expires_at=at + timedelta(hours=48))


def opted_in_then_stopped(db, phone=PHONE):
    apply(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP), phone=phone)


def log_and_signer(settings):
    return checkpoints.from_settings(settings)


def checkpoint(db, settings, now=None):
    log, signer = log_and_signer(settings)
    with db.snapshot() as session:
        return checkpoints.take(session, log, signer, now=now)


def problems(db, settings):
    """What `ledger verify` reports, as the command finds it: the log's problems, then the store's."""
    log, _ = log_and_signer(settings)
    newest, found = log.newest()
    with db.snapshot() as session:
        return [str(p) for p in found] + [str(p) for p in ledger.verify(session, checkpoint=newest)]


def cli(test_env, *args):
    return CliRunner().invoke(main, list(args), env=test_env)


def number_id(db, phone=PHONE) -> int:
    with db.sessions() as session:
        return session.scalar(select(PhoneNumber.id).where(PhoneNumber.e164 == phone))


def may_send(db, settings, phone=PHONE) -> Decision:
    with db.sessions() as session:
        row = store_consents.find_number(session, phone)
        return policy.Gate(settings.suppression_key, default_rules()).may_send(
            session, row, by_slug(session, "deals"), Kind.TRANSACTIONAL, T0)


def drop_last_event_and_move_the_head_back(db, phone=PHONE):
    """The two statements of the finding: no hashing needed."""
    with db.transaction() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()
        last, before = session.scalars(select(LedgerEvent).where(LedgerEvent.number_id == number.id)
                                       .order_by(LedgerEvent.seq.desc()).limit(2)).all()
        session.execute(delete(LedgerEvent).where(LedgerEvent.id == last.id))
        number.ledger_seq, number.ledger_head = before.seq, before.hash


def rebuild(db):
    """The cover-up: `ledger rebuild` makes the consents match whatever the ledger now says."""
    with db.transaction() as session:
        store_consents.rebuild(session)


def flip(db, status, phone=PHONE):
    with db.transaction() as session:
        session.execute(update(Consent).where(Consent.number_id == number_id(db, phone)).values(status=status))


def test_an_intact_store_verifies_and_checkpoints(db, settings, test_env):
    opted_in_then_stopped(db)
    apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=OTHER)
    assert problems(db, settings) == []
    written = checkpoint(db, settings)
    assert written.size == 2
    result = cli(test_env, "ledger", "verify")
    assert result.exit_code == 0, result.output
    assert "ledger intact: 2 chains, 4 events" in result.output and written.created_at in result.output


def test_a_flipped_consent_is_named_with_its_masked_number_and_program(db, settings, test_env):
    opted_in_then_stopped(db)
    flip(db, "opted_in")
    assert may_send(db, settings).allowed  # what the finding showed: the gate reads the projection
    assert problems(db, settings) == [
        f"{MASKED} (number 1), program deals: the consent row says opted_in but the ledger says opted_out"]
    result = cli(test_env, "ledger", "verify")
    assert result.exit_code == 1
    assert "BROKEN +1415***2671 (number 1), program deals: the consent row says opted_in" in result.output
    assert PHONE not in result.output


def test_missing_and_extra_consent_rows_and_other_fields_are_named(db, settings):
    apply(db, ("deals", Input.API_REQUEST), ("alerts", Input.API_REQUEST), ("alerts", Input.CONFIRM_YES),
          ("alerts", Input.KEYWORD_STOP))
    deals, alerts, orders = (by_slug_id(db, slug) for slug in ("deals", "alerts", "orders"))
    with db.transaction() as session:
        session.execute(delete(Consent).where(Consent.program_id == deals))
        session.add(Consent(number_id=1, program_id=orders, status="opted_in", updated_at=T0))
        session.execute(update(Consent).where(Consent.program_id == alerts).values(restorable=False))
    assert sorted(problems(db, settings)) == sorted([
        f"{MASKED} (number 1), program deals: the ledger says pending but there is no consent row",
        f"{MASKED} (number 1), program orders: the consent row says opted_in but the ledger holds no consent",
        f"{MASKED} (number 1), program alerts: the consent row says restorable=False but the ledger says True",
    ])
    with db.transaction() as session:
        store_consents.rebuild(session)
    assert problems(db, settings) == []
    with db.transaction() as session:
        session.execute(update(Consent).where(Consent.program_id == deals).values(expires_at=T0 + timedelta(days=30)))
    assert problems(db, settings) == [
        f"{MASKED} (number 1), program deals: the consent row expires at 2026-04-01T15:00:00.000000+00:00 but "
        "the ledger says 2026-03-04T15:00:00.000000+00:00"]


def by_slug_id(db, slug) -> int:
    with db.sessions() as session:
        return by_slug(session, slug).id


def test_a_chain_that_could_not_have_happened_is_named(db, settings):
    apply(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES))
    # Recomputed with valid hashes, but a YES nobody was asked for.
    rewrite_chain(db, lambda drafts: drafts[1:], cover_up=False)
    (found,) = problems(db, settings)
    assert found.startswith(f"{MASKED} (number 1), program deals, event ")
    assert found.endswith(" at seq 1: could not have happened: confirm_yes is not allowed from no consent")


def test_a_truncated_tail_with_its_head_moved_back(db, settings, test_env):
    opted_in_then_stopped(db)
    checkpoint(db, settings)
    drop_last_event_and_move_the_head_back(db)
    # The chain itself verifies now; the replay does not match the consents it left behind …
    with db.snapshot() as session:
        assert [str(p) for p in ledger.verify(session)] == [
            f"{MASKED} (number 1), program deals: the consent row says opted_out but the ledger says opted_in"]
    # … and when the consents are made to match, only the signed checkpoint still tells.
    rebuild(db)
    found = problems(db, settings)
    assert len(found) == 1
    assert found[0].startswith(f"{MASKED} (number 1): the chain ends at seq 2 but the checkpoint of ")
    assert found[0].endswith("signed seq 3: events were removed and the head moved back")
    assert cli(test_env, "ledger", "verify").exit_code == 1


def test_a_whole_chain_deleted(db, settings, test_env):
    opted_in_then_stopped(db)
    apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=OTHER)
    checkpoint(db, settings)
    gone = number_id(db)
    with db.transaction() as session:
        for table in (Consent, LedgerEvent, InboundMessage, OutboundMessage):
            session.execute(delete(table).where(table.number_id == gone))
        session.execute(delete(PhoneNumber).where(PhoneNumber.id == gone))
    found = problems(db, settings)
    assert len(found) == 1
    assert found[0].startswith(f"number {gone}: has no chain any more, but the checkpoint of ")
    assert found[0].endswith("signed it at seq 3: the whole chain was deleted")
    result = cli(test_env, "ledger", "verify")
    assert result.exit_code == 1 and "the whole chain was deleted" in result.output


def rewrite_chain(db, edit, phone=PHONE, cover_up=True):
    """Recompute a number's chain from edited drafts, with valid hashes and head, and the consents to
    match: everything but the signing key."""
    with db.transaction() as session:
        number = session.scalars(select(PhoneNumber).where(PhoneNumber.e164 == phone)).one()
        events = session.scalars(select(LedgerEvent).where(LedgerEvent.number_id == number.id)
                                 .order_by(LedgerEvent.seq)).all()
        drafts = [{key: getattr(e, key) for key in (
            "type", "input", "program_id", "status_before", "status_after", "expires_at", "source", "actor",
            "reference", "evidence", "occurred_at")} for e in events]
        session.execute(delete(LedgerEvent).where(LedgerEvent.number_id == number.id))
        chained = chain(number.id, 0, GENESIS_HASH, edit(drafts))
        for event in chained:
            session.add(LedgerEvent(**event.row()))
        number.ledger_seq, number.ledger_head = chained[-1].seq, chained[-1].hash
    if cover_up:
        rebuild(db)


def test_a_whole_chain_recomputed_without_the_key(db, settings, test_env):
    opted_in_then_stopped(db)
    checkpoint(db, settings)
    # The STOP becomes a HELP: the same length, valid hashes, a matching head, consents rebuilt.
    rewrite_chain(db, lambda drafts: drafts[:2] + [
        dict(drafts[2], type="help", input="help", program_id=None, status_before=None, status_after=None)])
    assert may_send(db, settings).allowed
    found = problems(db, settings)
    assert len(found) == 1
    assert found[0].startswith(f"{MASKED} (number 1), event ")
    assert " at seq 3: differs from the checkpoint of " in found[0]
    assert found[0].endswith("the chain was rewritten")
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []  # without the checkpoint, nothing shows


def test_checkpoint_refuses_to_sign_over_tampering(db, settings, test_env):
    opted_in_then_stopped(db)
    apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=OTHER)
    first = checkpoint(db, settings, now=T0)
    apply(db, ("alerts", Input.KEYWORD_STOP), phone=OTHER)  # the other chain grows meanwhile: fine
    drop_last_event_and_move_the_head_back(db)
    rebuild(db)
    log, _ = log_and_signer(settings)
    with pytest.raises(checkpoints.Refused) as refused:
        checkpoint(db, settings, now=T0 + timedelta(hours=1))
    assert [str(p) for p in refused.value.problems] == [
        f"{MASKED} (number 1): the chain ends at seq 2 but the checkpoint of {first.created_at} signed seq 3: "
        "events were removed"]
    assert log.files() == [first.path]
    assert sorted(os.listdir(log.directory)) == [first.path.name]  # no temporary file left behind
    result = cli(test_env, "ledger", "checkpoint")
    assert result.exit_code == 1 and "no checkpoint written" in result.output and MASKED in result.output


def test_checkpoint_refuses_a_rewritten_chain_that_grew(db, settings):
    opted_in_then_stopped(db)
    first = checkpoint(db, settings, now=T0)
    rewrite_chain(db, lambda drafts: drafts[:2] + [dict(drafts[2], actor="someone else"), drafts[2]])
    with pytest.raises(checkpoints.Refused) as refused:
        checkpoint(db, settings, now=T0 + timedelta(hours=1))
    assert [str(p) for p in refused.value.problems] == [
        f"{MASKED} (number 1): its event at seq 3 differs from the checkpoint of {first.created_at}: "
        "the chain was rewritten"]


def test_checkpoints_follow_a_growing_ledger_and_verify_uses_the_newest(db, settings):
    apply(db, ("deals", Input.API_REQUEST))
    first = checkpoint(db, settings, now=T0)
    apply(db, ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP))
    apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=OTHER)
    second = checkpoint(db, settings, now=T0 + timedelta(hours=1))
    log, _ = log_and_signer(settings)
    assert log.files() == [first.path, second.path]
    assert log.newest() == (second, [])
    assert [(h.number_id, h.seq) for h in second.heads()] == [(number_id(db), 3), (number_id(db, OTHER), 1)]
    assert problems(db, settings) == []
    with pytest.raises(FileExistsError):  # a checkpoint's file is never replaced
        log.write(iter([]), log_and_signer(settings)[1], now=T0 + timedelta(hours=1))


def test_a_bad_checkpoint_is_reported_and_the_one_before_it_used(db, settings, test_env):
    opted_in_then_stopped(db)
    good = checkpoint(db, settings, now=T0)
    drop_last_event_and_move_the_head_back(db)
    rebuild(db)
    log, _ = log_and_signer(settings)
    # Someone with the database and the log, but not the key, writes a checkpoint of the truncated store.
    forged = log.directory / "checkpoint-20260302T160000.000000Z.jsonl"
    lines = good.path.read_text().splitlines()
    header = json.loads(lines[0]) | {"created_at": "2026-03-02T16:00:00.000000Z"}
    head = checkpoints.Head(1, 2, session_head(db))
    header |= {"root": merkle.root([head.leaf()]).hex()}
    forged.write_text(json.dumps(header) + "\n" + json.dumps([1, 2, head.hash]) + "\n")
    found = problems(db, settings)
    assert found[0] == f"checkpoint {forged.name}: the signature does not verify: the checkpoint was altered"
    assert "signed seq 3: events were removed" in found[1] and good.created_at in found[1]
    result = cli(test_env, "ledger", "verify")
    assert result.exit_code == 1 and "the signature does not verify" in result.output


def session_head(db) -> str:
    with db.sessions() as session:
        return session.scalar(select(PhoneNumber.ledger_head))


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda header, heads: (header, heads[:-1]), "its heads do not match its signed root: the list was altered"),
    (lambda header, heads: (header, [heads[0].replace("[1,", "[7,").replace("[1, ", "[7, ")]),
     "its heads do not match its signed root: the list was altered"),
    (lambda header, heads: (header | {"public_key": "ab" * 32}, heads), "signed by another key (abababababababab…)"),
    (lambda header, heads: (header | {"size": 5}, heads), "the signature does not verify"),
    (lambda header, heads: ({"format": "something else"}, heads), "not a smsgate-ledger-checkpoint/1 checkpoint"),
    (lambda header, heads: (header, ["[1, 0]"]), "head 1 is not [number_id, seq, hash]"),
])
def test_altered_checkpoint_files_are_refused_saying_why(db, settings, edit, problem):
    opted_in_then_stopped(db)
    apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=OTHER)
    written = checkpoint(db, settings)
    first, *heads = written.path.read_text().splitlines()
    header, heads = edit(json.loads(first), heads)
    written.path.write_text("\n".join([json.dumps(header), *heads]) + "\n")
    log, _ = log_and_signer(settings)
    newest, found = log.newest()
    assert newest is None and len(found) == 1 and problem in str(found[0])
    with pytest.raises(checkpoints.Refused):  # nor is a new checkpoint written over it
        checkpoint(db, settings)


def test_a_renamed_checkpoint_is_refused(db, settings):
    opted_in_then_stopped(db)
    written = checkpoint(db, settings, now=T0)
    later = written.path.with_name("checkpoint-20990101T000000.000000Z.jsonl")
    later.write_bytes(written.path.read_bytes())
    log, _ = log_and_signer(settings)
    newest, found = log.newest()
    assert newest == written
    assert [str(p) for p in found] == [
        f"checkpoint {later.name}: its name does not match its signed time {written.created_at}: renamed or copied"]


def test_erasure_keeps_every_check_true(db, settings, test_env):
    opted_in_then_stopped(db)
    apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT))
    checkpoint(db, settings, now=T0)
    with db.transaction() as session:
        privacy.erase(session, store_consents.find_number(session, PHONE), settings.suppression_key,
                      consents.Evidence(Source.API, actor="dpo"), now=T0 + timedelta(days=1))
    assert problems(db, settings) == []
    after = checkpoint(db, settings, now=T0 + timedelta(days=2))
    assert [(h.number_id, h.seq) for h in after.heads()] == [(1, 7)]  # 4 events, 2 erasures, the marker
    assert problems(db, settings) == []
    deals = by_slug_id(db, "deals")
    with db.transaction() as session:  # an erased number's consents are gone: a row back is a break
        session.add(Consent(number_id=1, program_id=deals, status="opted_in", updated_at=T0))
    assert problems(db, settings) == [
        "erased number 1, program deals: the consent row says opted_in but the ledger holds no consent"]


def test_a_third_party_checks_a_checkpoint_and_one_head_with_the_public_key_alone(db, settings, test_env):
    """What docs/ledger.md tells an auditor to do, done here without the gateway's own code."""
    for index in range(5):
        apply(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone=f"+1415555267{index}")
    written = checkpoint(db, settings)
    public_key = cli(test_env, "ledger", "public-key").output.strip()
    header_line, *head_lines = written.path.read_text(encoding="ascii").splitlines()
    header = json.loads(header_line)
    message = (f"smsgate-ledger-checkpoint/1\ncreated_at {header['created_at']}\npublic_key {header['public_key']}\n"
               f"size {header['size']}\nroot {header['root']}\n").encode()
    assert header["public_key"] == public_key
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(header["signature"]), message)
    leaves = [merkle.leaf_hash(f"{n}:{s}:{h}".encode()) for n, s, h in map(json.loads, head_lines)]
    assert merkle.root(leaves).hex() == header["root"] and len(leaves) == header["size"]
    # One number's head against the signed root, with log2(size) hashes instead of the list.
    proof = merkle.inclusion_proof(leaves, 3)
    assert len(proof) == 3
    assert merkle.verify_inclusion(leaves[3], 3, header["size"], proof, bytes.fromhex(header["root"]))


def test_signing_key_is_generated_once_private_and_validated(tmp_path):
    first = load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path)})
    second = load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path)})
    assert first.ledger_signing_key == second.ledger_signing_key and len(first.ledger_signing_key) == 32
    key_file = tmp_path / "ledger-signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert first.ledger_checkpoint_dir == tmp_path / "checkpoints" and first.ledger_checkpoint_seconds == 3600
    assert "ledger_signing_key" not in repr(first)
    given = load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path), "LEDGER_SIGNING_KEY": "AB" * 32})
    assert given.ledger_signing_key == bytes([0xAB]) * 32
    key_file.write_text("not a key")
    with pytest.raises(ConfigError, match="LEDGER_SIGNING_KEY .generated into .*ledger-signing.key.: expected 64 hex"):
        load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path)})


@pytest.mark.parametrize(("overrides", "named"), [
    ({"LEDGER_SIGNING_KEY": "00" * 31}, "LEDGER_SIGNING_KEY: expected 64 hex digits"),
    ({"LEDGER_CHECKPOINT_SECONDS": "hourly"}, "LEDGER_CHECKPOINT_SECONDS"),
    ({"LEDGER_CHECKPOINT_SECONDS": "0"}, "LEDGER_CHECKPOINT_SECONDS"),
])
def test_bad_ledger_settings_name_themselves(tmp_path, overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path), **overrides})


def test_checkpoint_dir_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="LEDGER_CHECKPOINT_DIR"):
        load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path), "LEDGER_CHECKPOINT_DIR": str(tmp_path / "file")})
    assert load_settings(env={"SANDBOX": "on", "VAR_DIR": str(tmp_path), "LEDGER_CHECKPOINT_DIR": str(tmp_path / "log"),
                              "LEDGER_CHECKPOINT_SECONDS": "600"}).ledger_checkpoint_dir == tmp_path / "log"


def test_beat_checkpoints_on_the_periodic_queue_at_the_configured_interval(gateway):
    celery = make_celery(gateway.settings)  # the worker's app (the test's dispatcher is an in-memory one)
    entry = celery.conf.beat_schedule["checkpoint-ledger"]
    assert entry == {"task": TaskNames.CHECKPOINT_LEDGER, "schedule": float(gateway.settings.ledger_checkpoint_seconds)}
    assert celery.amqp.router.route({}, TaskNames.CHECKPOINT_LEDGER)["queue"].name == QueueNames.PERIODIC


@pytest.mark.e2e
def test_the_worker_writes_a_checkpoint(worker_process, db, gateway, settings):
    opted_in_then_stopped(db)
    gateway.dispatcher.send(TaskNames.CHECKPOINT_LEDGER)
    log, _ = log_and_signer(settings)
    wait_for(log.files)
    newest, found = log.newest()
    assert found == [] and [(h.number_id, h.seq) for h in newest.heads()] == [(1, 3)]
    assert problems(db, settings) == []
