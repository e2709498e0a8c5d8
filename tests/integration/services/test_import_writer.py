"""The bulk import's writer: the next chunk is read and planned while the one before it is written,
and the store ends up as one chunk after the other would leave it, whatever fails where, on
PostgreSQL and SQLite (docs/decisions/0025-bulk-import.md)."""

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from gateway.domain.numbers import parse
from gateway.store import consents as store_consents
from gateway.store import imports as store
from gateway.store import ledger
from gateway.store.models import Consent, Import, LedgerEvent, PhoneNumber
from tests.integration.services.test_imports import _run


def _number(i: int) -> str:
    return f"+1415{2_300_000 + i:07d}"  # in the order of i


def _file(rows: int) -> str:
    """Rows of new numbers, each odd row naming again the number of three rows before: so every chunk
    of four holds, between rows of numbers new to it, a row of a number the chunk before it moved
    (and which may still be being written when this one is read)."""
    lines = ["phone,program,status,ref"]
    for i in range(rows):
        if i % 2 and i >= 3:
            lines.append(f"{_number(i - 3)},alerts,{'opted_out' if i % 3 == 0 else 'opted_in'},r{i}")
        else:
            lines.append(f"{_number(i)},deals,opted_in,r{i}")
    return "\n".join(lines) + "\n"


def _events(db):
    with db.sessions() as session:
        return session.execute(select(LedgerEvent.reference, PhoneNumber.e164, LedgerEvent.seq, LedgerEvent.input)
                               .join(PhoneNumber, PhoneNumber.id == LedgerEvent.number_id)
                               .order_by(LedgerEvent.id)).all()


def test_rows_of_a_number_the_chunk_before_moved_are_read_after_it_commits_and_keep_file_order(db, settings, gateway):
    rows = 40
    outcome = _run(db, settings, gateway, _file(rows), chunk=4)
    assert (outcome.status, outcome.line_done, outcome.applied, outcome.refused) == ("done", rows + 1, rows, 0)
    events = _events(db)
    # Every row's event, in the order of the file's lines (the ids are given in that order), each
    # chained after what the chunk before it wrote for the same number.
    assert [reference for reference, *_ in events] == [f"line {line}" for line in range(2, rows + 2)]
    for i in range(3, rows, 2):
        reference, e164, seq, input = events[i]
        assert (e164, seq, input) == (_number(i - 3), 2, "import_opt_out" if i % 3 == 0 else "import_opt_in")
    with db.sessions() as session:
        ids = dict(session.execute(select(PhoneNumber.e164, PhoneNumber.id)).all())
        assert [ids[_number(i)] for i in (0, 1, *range(2, rows, 2))] == sorted(ids.values())  # in file order
        alerts = session.scalar(select(func.count()).select_from(Consent).where(Consent.program_id != 1))
        assert alerts == rows // 2 - 1  # a second program for each odd row but the first
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []
    with db.transaction() as session:
        before = session.execute(select(Consent.number_id, Consent.program_id, Consent.status)).all()
        store_consents.rebuild(session)
        assert sorted(session.execute(select(Consent.number_id, Consent.program_id, Consent.status)).all()) == \
            sorted(before)


def test_a_chunk_that_meets_a_number_created_meanwhile_runs_again_and_the_next_one_starts_over(
        db, settings, gateway, monkeypatch):
    """Someone else stores one of the second chunk's new numbers between its read and its write: its
    write fails on the number's unique key, the third chunk (already read and planned beside it) is
    rolled back, the second runs again, holding the number as it now is, and the third starts over."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite's import creates a chunk's new numbers as it reads them, under the store's one "
                    "write lock: no one can create one before its write")
    real_write, calls = store.write, []

    def write_after_someone_else(session, **kwargs):
        calls.append(kwargs["line_from"])
        if calls == [1, 5]:
            with db.transaction() as other:  # the second chunk's first number, stored by someone else
                store_consents.number_row(other, parse(_number(4)))
        return real_write(session, **kwargs)

    monkeypatch.setattr(store, "write", write_after_someone_else)
    rows = 16
    outcome = _run(db, settings, gateway, _file(rows), chunk=4)
    assert calls == [1, 5, 5, 9, 13]
    assert (outcome.status, outcome.line_done, outcome.applied, outcome.refused) == ("done", rows + 1, rows, 0)
    assert [reference for reference, *_ in _events(db)] == [f"line {line}" for line in range(2, rows + 2)]
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []


def test_a_fault_while_the_next_chunk_is_read_lets_the_chunk_being_written_commit(db, settings, gateway, monkeypatch):
    """The store failing while the third chunk's numbers are read: the second chunk, being written
    meanwhile, still commits, the import is marked failed after it, and a second run does the rest."""
    real_hold = store.hold

    def failing_hold(session, numbers, now):
        if any(e164 == _number(8) for e164, *_ in numbers):
            raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))
        return real_hold(session, numbers, now)

    monkeypatch.setattr(store, "hold", failing_hold)
    text = _file(16)
    with pytest.raises(OperationalError):
        _run(db, settings, gateway, text, chunk=4)
    with db.sessions() as session:
        row = session.scalars(select(Import)).one()
        assert (row.status, row.line_done, row.applied) == ("failed", 9, 8)
        assert session.scalar(select(func.count()).select_from(LedgerEvent)) == 8
    monkeypatch.setattr(store, "hold", real_hold)
    outcome = _run(db, settings, gateway, text, chunk=4)  # the same file: the same import, run again
    assert (outcome.status, outcome.line_done, outcome.applied, outcome.refused) == ("done", 17, 16, 0)
    assert [reference for reference, *_ in _events(db)] == [f"line {line}" for line in range(2, 18)]
    with db.snapshot() as session:
        assert list(ledger.verify(session)) == []


def test_the_collector_stays_on_when_the_process_runs_other_threads(db, settings, gateway, monkeypatch):
    """The writer pauses cyclic garbage collection only when the import has its process to itself: in
    the worker's thread pool the other tasks' garbage would wait for the whole import."""
    import gc
    import threading

    real_write, seen = store.write, []

    def write_seeing_the_collector(session, **kwargs):
        seen.append(gc.isenabled())
        return real_write(session, **kwargs)

    monkeypatch.setattr(store, "write", write_seeing_the_collector)
    other_task, stop = threading.Thread(target=lambda: stop.wait(60)), threading.Event()
    other_task.start()
    try:
        assert gc.isenabled()
        _run(db, settings, gateway, _file(8), chunk=4)
    finally:
        stop.set()
        other_task.join()
    assert seen == [True, True]
