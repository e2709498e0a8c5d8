"""The bulk consent import: refusals per row, the ledger and the projection it leaves, a killed import
continuing where it stopped (a real process, killed with SIGKILL), on PostgreSQL and SQLite."""

import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from sqlalchemy import func, select

from gateway.config import ROOT
from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents, imports, privacy
from gateway.store import consents as store_consents
from gateway.store import ledger
from gateway.store.models import Consent, Import, LedgerEvent, PhoneNumber
from gateway.store.programs import by_slug

NOW = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)
RICHMOND_VA = "+18045550123"  # an opt-out binds for ten years in Virginia


def _consent(db, phone, slug, input):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        consents.apply(session, row, by_slug(session, slug), input,
                       consents.Evidence(Source.SMS, reference="SM1", details={"body": "words"}), now=NOW)


def _run(db, settings, gateway, text, *, chunk, jobs=1, now=NOW):
    found, _ = imports.begin(db, digest=str(hash(text)), name="t.csv", actor="ops", total_lines=None, again=True)
    return imports.run(db, found.id, io.StringIO(text, newline=""), region="US",
                       suppression_key=settings.suppression_key, rules=gateway.quiet_hours, jobs=jobs, chunk=chunk,
                       now=now)


def _projection(db):
    with db.sessions() as session:
        return sorted(session.execute(select(Consent.number_id, Consent.program_id, Consent.status,
                                             Consent.restorable, Consent.expires_at, Consent.updated_at)).all())


def test_each_row_is_applied_or_refused_with_its_reason_in_file_order(db, settings, gateway):
    _consent(db, "+14155550001", "deals", Input.KEYWORD_STOP)  # the person's own opt-out
    _consent(db, "+14155550002", "deals", Input.KEYWORD_STOP)
    with db.transaction() as session:  # erased after opting out: suppressed for good
        privacy.erase(session, store_consents.find_number(session, "+14155550002"), settings.suppression_key,
                      consents.Evidence(Source.API, actor="dpo"))
    text = (
        "phone,program,status,collected_at\n"
        "+14155550001,deals,opted_in,2025-01-01\n"  # 2: would override the person's STOP
        "+14155550002,deals,opted_in,\n"  # 3: suppressed
        "not a number,deals,opted_in,\n"  # 4
        "+14155550003,newsletter,opted_in,\n"  # 5: no such program
        "+14155550003,deals,maybe,\n"  # 6: no such status
        "+14155550003,deals,opted_in,a\x00b\n"  # 7: a NUL
        "+14155550004,deals,opted_in,2025-01-02\n"  # 8: imported
        "\n"  # an empty line is no row
        "(415) 555-0004,deals,opted_in,\n"  # 9: the same number again: a repeat
        "+14155550004,alerts,opted_in,\n"  # 10: its second program, chained after line 8's event
        f"{RICHMOND_VA},deals,opted_out,\n"  # 11: imported
        f"{RICHMOND_VA},alerts,opted_in,\n"  # 12: the opt-out of line 11 binds for ten years
        "+14155550004,deals,opted_out,2025-03-01\n"  # 13: imported
    )
    outcome = _run(db, settings, gateway, text, chunk=3)
    refused = dict(imports.refusals(db, outcome.import_id))
    assert sorted(refused) == [2, 3, 4, 5, 6, 7, 9, 12]
    assert refused[2] == "import_opt_in is not allowed from opted_out"
    assert refused[3].startswith("suppressed")
    assert refused[4] == "invalid number (not_a_number)"
    assert refused[5] == "unknown program 'newsletter'"
    assert refused[6] == "status must be opted_in or opted_out, not 'maybe'"
    assert refused[7] == "column 'collected_at' contains a NUL character (U+0000), which cannot be stored"
    assert refused[9] == "import_opt_in is not allowed from opted_in"
    assert refused[12].startswith("stop_binding: this number opted out on 2026-03-04")
    assert (outcome.status, outcome.line_done, outcome.applied, outcome.refused) == ("done", 13, 4, 8)
    assert dict(outcome.counts) == {"import_opt_in": 2, "import_opt_out": 2}
    with db.sessions() as session:
        number = store_consents.find_number(session, "+14155550004")
        chain = consents.events(session, number)
        assert [(e.seq, e.reference, e.input, e.status_before, e.status_after) for e in chain] == [
            (1, "line 8", "import_opt_in", None, "opted_in"), (2, "line 10", "import_opt_in", None, "opted_in"),
            (3, "line 13", "import_opt_out", "opted_in", "opted_out")]
        assert chain[0].evidence == {"collected_at": "2025-01-02"} and chain[1].evidence == {}
        assert number.ledger_seq == 3 and number.ledger_head == chain[-1].hash
        assert store_consents.find_number(session, "+14155550002") is None  # an erased number is not stored again
        assert store_consents.find_number(session, "+14155550003") is None  # nor one whose rows were all refused
    results = io.StringIO()
    imports.write_results(db, outcome.import_id, results)
    lines = results.getvalue().splitlines()
    assert lines[0] == "line,result,reason" and len(lines) == 13
    assert lines[1] == "2,refused,import_opt_in is not allowed from opted_out" and lines[7] == "8,imported,"
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []


def test_the_projection_equals_a_rebuild_from_the_ledger(db, settings, gateway):
    """Numbers held before (with consents of their own) and new ones, several rows a number across
    chunks, screened in worker processes: the consents written are what replaying the ledger gives."""
    _consent(db, "+14155550100", "deals", Input.KEYWORD_STOP)
    _consent(db, "+14155550101", "alerts", Input.KEYWORD_JOIN_DIRECT)
    rows = ["phone,program,status,ref"]
    for i in range(120):
        phone = f"+1415555{100 + i % 40:04d}"
        rows.append(f"{phone},{('deals', 'alerts')[i // 40 % 2]},{('opted_in', 'opted_out')[i // 80]},r{i}")
    outcome = _run(db, settings, gateway, "\n".join(rows) + "\n", chunk=7, jobs=2)
    assert outcome.applied + outcome.refused == 120 and outcome.applied > 100
    written = _projection(db)
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []
    with db.transaction() as session:
        store_consents.rebuild(session)
    assert _projection(db) == written
    with db.sessions() as session:
        events = session.scalar(select(func.count()).select_from(LedgerEvent).where(LedgerEvent.source == "import"))
        assert events == outcome.applied


def test_a_file_refused_whole_changes_nothing(db, settings, gateway):
    for text, message in (("phone,program\n+14155550001,deals\n", "lacks the column(s): status"),
                          ("phone,program,status,a,a\n+14155550001,deals,opted_in,1,2\n", "names a column twice")):
        try:
            _run(db, settings, gateway, text, chunk=10)
        except ValueError as error:
            assert message in str(error)
        else:
            raise AssertionError("the file was not refused")
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 0
        assert {row.status for row in session.scalars(select(Import))} == {"failed"}


def _cli(test_env, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env={**os.environ, **test_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_an_import_killed_midway_continues_where_it_stopped(app, db, test_env, tmp_path):
    rows = 3000
    file = tmp_path / "crm.csv"
    file.write_text("phone,program,status,ref\n" + "".join(
        f"+1415{2_000_000 + i:07d},{'deals' if i % 3 else 'alerts'},{'opted_out' if i % 7 == 0 else 'opted_in'},r{i}\n"
        for i in range(rows)) + "not a number,deals,opted_in,bad\n")
    # The import is paused while we look, so it cannot finish between a look and the kill, and the look
    # reads beside the writer: on SQLite an ordinary session takes the write lock, and CI once saw the
    # whole import written while a look waited for it.
    first = _cli(test_env, "consent", "import", str(file), "--chunk", "20", "--jobs", "1", start_new_session=True)
    deadline = time.monotonic() + 120
    done = 1
    looks = db.reads_beside_writers()
    try:
        while time.monotonic() < deadline and first.poll() is None:
            os.killpg(first.pid, signal.SIGSTOP)
            with looks() as session:
                done = session.scalar(select(func.max(Import.line_done))) or 1
            if done > 500:
                break
            os.killpg(first.pid, signal.SIGCONT)
            time.sleep(0.005)
        assert first.poll() is None, f"the import ended before it could be killed: {first.communicate()}"
    finally:
        # Killed whatever happened above: a failed look must not leave the import stopped for good.
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    with db.sessions() as session:
        stopped = session.scalars(select(Import)).one()
        events_then = session.scalar(select(func.count()).select_from(LedgerEvent))
    assert 500 < stopped.line_done < rows + 2 and stopped.status == "running"
    assert events_then == stopped.applied  # whole chunks committed, nothing else
    second = _cli(test_env, "consent", "import", str(file), "--chunk", "100", "--jobs", "2")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert f"continuing import {stopped.id} after line {stopped.line_done}" in err
    assert f"imported {rows}, refused 1" in out
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == rows  # no row applied twice
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == rows
        assert session.scalars(select(Import)).one().status == "done"
    results = (tmp_path / "crm.csv.results.csv").read_text().splitlines()
    assert len(results) == rows + 2 and results[-1] == f"{rows + 2},refused,invalid number (not_a_number)"
    again = _cli(test_env, "consent", "import", str(file))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "was imported already" in err and f"imported {rows}, refused 1" in out
    verified = _cli(test_env, "ledger", "verify")
    out, err = verified.communicate(timeout=300)
    assert verified.returncode == 0, err


def test_a_store_fault_mid_import_leaves_whole_chunks_and_a_second_run_finishes(db, settings, gateway, monkeypatch):
    """The database failing during the third chunk's write: that chunk rolls back, the import is
    marked failed at the second chunk's last line, and running it again applies the rest once."""
    from sqlalchemy.exc import OperationalError

    from gateway.store import imports as store

    text = "phone,program,status\n" + "".join(f"+1415{2_100_000 + i:07d},deals,opted_in\n" for i in range(50))
    found, _ = imports.begin(db, digest="fault", name="t.csv", actor="ops", total_lines=51)
    real_write, calls = store.write, []

    def failing_write(session, **kwargs):
        calls.append(kwargs["line_to"])
        if len(calls) == 3:
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real_write(session, **kwargs)

    monkeypatch.setattr(store, "write", failing_write)
    run = dict(region="US", suppression_key=settings.suppression_key, rules=gateway.quiet_hours, chunk=10)
    try:
        imports.run(db, found.id, io.StringIO(text), **run)
    except OperationalError:
        pass
    else:
        raise AssertionError("the fault did not surface")
    with db.sessions() as session:
        row = session.get(Import, found.id)
        assert (row.status, row.line_done, row.applied) == ("failed", 21, 20)
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == 20
    monkeypatch.setattr(store, "write", real_write)
    outcome = imports.run(db, found.id, io.StringIO(text), **run)
    assert (outcome.status, outcome.line_done, outcome.applied, outcome.refused) == ("done", 51, 50, 0)
    with db.snapshot() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == 50
        assert list(ledger.verify(session)) == []
