"""The inbound journal's file: appends, reading, torn lines, the atomic rewrite and the host-wide lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from gateway.config import ROOT
from gateway.store.journal import Journal


def test_records_come_back_in_order_with_what_they_held(tmp_path):
    journal = Journal(tmp_path)
    assert journal.is_empty() and journal.snapshot().records == []
    odd = {"body": "STOP \u00e9\u0000 \ud800 \U0001f600", "n": 1}
    journal.append(odd)
    journal.append({"n": 2})
    snapshot = journal.snapshot()
    assert snapshot.records == [odd, {"n": 2}] and snapshot.torn == []
    assert not journal.is_empty()
    # One ASCII line per record: a cut line can never read as a record.
    lines = journal.path.read_bytes().split(b"\n")
    assert len(lines) == 3 and lines[-1] == b"" and all(line.isascii() for line in lines)
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"


def test_a_torn_last_line_is_set_apart_and_the_next_record_is_whole(tmp_path):
    journal = Journal(tmp_path)
    journal.append({"n": 1})
    with open(journal.path, "ab") as handle:  # a writer killed halfway through its line
        handle.write(b'{"n":2,"bo')
    snapshot = journal.snapshot()
    assert snapshot.records == [{"n": 1}] and snapshot.torn == ['{"n":2,"bo']
    journal.append({"n": 3})
    snapshot = journal.snapshot()
    assert snapshot.records == [{"n": 1}, {"n": 3}] and snapshot.torn == ['{"n":2,"bo']


def test_a_line_that_is_not_a_record_is_torn_too(tmp_path):
    journal = Journal(tmp_path)
    journal.path.write_bytes(b'[1]\n{"n":1}\n\xff\xfe\n')
    snapshot = journal.snapshot()
    assert snapshot.records == [{"n": 1}] and snapshot.torn == ["[1]", "\\xff\\xfe"]


def test_settling_keeps_what_remains_and_what_was_appended_since(tmp_path):
    journal = Journal(tmp_path)
    for n in range(4):
        journal.append({"n": n})
    snapshot = journal.snapshot()
    journal.append({"n": 4})  # arrives while the replayer works on the snapshot
    inode = journal.path.stat().st_ino
    journal.settle(snapshot, [{"n": 2}, {"n": 3}])
    assert journal.snapshot().records == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert journal.path.stat().st_ino != inode  # a new file renamed over the old one, never edited in place
    assert not list(tmp_path.glob("*.tmp"))


def test_settling_everything_away_leaves_no_journal(tmp_path):
    journal = Journal(tmp_path)
    journal.append({"n": 1})
    journal.settle(journal.snapshot(), [])
    assert not journal.path.exists() and journal.is_empty()
    journal.append({"n": 2})
    assert journal.snapshot().records == [{"n": 2}]


def test_the_held_part_is_kept_apart(tmp_path):
    journal = Journal(tmp_path)
    journal.hold([{"reason": "unknown_sender", "entry": {"n": 1}}, {"reason": "torn", "line": "{"}])
    journal.hold([])
    assert journal.is_empty()
    assert journal.held() == [{"reason": "unknown_sender", "entry": {"n": 1}}, {"reason": "torn", "line": "{"}]
    journal.rewrite_held([{"reason": "torn", "line": "{"}])
    assert journal.held() == [{"reason": "torn", "line": "{"}]


def test_one_replayer_at_a_time(tmp_path):
    journal, other = Journal(tmp_path), Journal(tmp_path)
    with journal.replaying() as first:
        with other.replaying() as second:
            assert first is True and second is False
    with other.replaying() as again:
        assert again is True


_APPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from gateway.store.journal import Journal

    journal = Journal(Path(sys.argv[1]))
    sys.stdin.readline()  # start together
    for n in range(int(sys.argv[3])):
        journal.append({"writer": int(sys.argv[2]), "n": n, "pad": "x" * 3000})
""")


def test_processes_appending_at_once_each_write_whole_lines(tmp_path):
    """gunicorn's workers share the host's journal: the lock keeps their lines whole and in order.

    Records larger than a pipe buffer and a page, so unlocked appends could interleave.
    """
    writers, each = 4, 150
    processes = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), str(writer), str(each)], cwd=ROOT,
                         stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for writer in range(writers)
    ]
    for process in processes:
        process.stdin.write(b"go\n")
        process.stdin.flush()
    for process in processes:
        process.stdin.close()
        assert process.wait(60) == 0
    snapshot = Journal(tmp_path).snapshot()
    assert snapshot.torn == [] and len(snapshot.records) == writers * each
    for writer in range(writers):
        assert [r["n"] for r in snapshot.records if r["writer"] == writer] == list(range(each))
    assert all(json.loads(line) for line in Journal(tmp_path).path.read_bytes().splitlines())


def test_no_append_is_lost_to_a_rewrite_running_beside_it(tmp_path):
    """The replayer renames a new journal over the old one while workers append: an append must land
    in the file that stays, never in the one renamed away."""
    writers, each = 2, 300
    processes = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), str(writer), str(each)], cwd=ROOT,
                         stdin=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        for writer in range(writers)
    ]
    for process in processes:
        process.stdin.write(b"go\n")
        process.stdin.flush()
        process.stdin.close()
    journal, taken = Journal(tmp_path), []
    while any(process.poll() is None for process in processes):
        with journal.replaying():
            snapshot = journal.snapshot()
            taken += snapshot.records[::2]  # applied; the others stay
            journal.settle(snapshot, snapshot.records[1::2])
    assert all(process.wait(60) == 0 for process in processes)
    everything = taken + journal.snapshot().records
    assert journal.snapshot().torn == []
    assert sorted((r["writer"], r["n"]) for r in everything) == [(w, n) for w in range(writers) for n in range(each)]
