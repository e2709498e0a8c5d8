"""The inbound journal: a local, append-only file of JSON lines for texts the database could not take.

One journal per host (under the var directory), shared by every web process on it: gunicorn's
workers append under an exclusive `flock` on a lock file beside it, never on the journal itself, since
the journal is replaced by a rename when replayed texts leave it and a writer holding the old file
would append into a file no one reads again. Each append is fsync'd (and the directory, when the
file is new) before it returns: the webhook answers Twilio only after that, and Twilio does not send
the text again.

A process killed mid-append leaves a last line without its newline. The next append ends that line
first, so the fragment stands alone and reads as torn instead of spoiling the next record; the reader
returns torn lines apart from the records, for the caller to keep aside and count. A record is one
line of ASCII JSON (non-ASCII escaped), so a cut line is never a valid record.

Pure file I/O: what a record means, and what to do with one, is gateway.services.inbound_journal's.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Snapshot:
    """The journal as read at one moment: its records in order, its torn lines, and where it ended."""

    records: list[dict]
    torn: list[str]
    end: int


class Journal:
    """`directory/name.jsonl`, its held part `name.held.jsonl`, and their lock files."""

    def __init__(self, directory: Path, name: str = "inbound-journal"):
        self.directory = Path(directory)
        self.path = self.directory / f"{name}.jsonl"
        self._path_text = str(self.path)  # for `is_empty`, asked on every webhook: os.stat without pathlib
        self.held_path = self.directory / f"{name}.held.jsonl"
        self._lock_path = self.directory / f"{name}.lock"
        self._replay_lock_path = self.directory / f"{name}.replay.lock"

    def append(self, record: dict) -> None:
        """Add one record at the end, durably, before returning."""
        _append_lines(self, self.path, [_line(record)])

    def hold(self, records: list[dict]) -> None:
        """Add records to the held part (texts that could not be applied), durably."""
        if records:
            _append_lines(self, self.held_path, [_line(record) for record in records])

    def is_empty(self) -> bool:
        """True when nothing waits to be replayed. A stat, no lock: cheap enough for every webhook."""
        try:
            return os.stat(self._path_text).st_size == 0
        except FileNotFoundError:
            return True

    def length(self) -> int:
        """How many texts wait to be replayed (an empty journal is not read)."""
        return 0 if self.is_empty() else len(self.snapshot().records)

    def snapshot(self) -> Snapshot:
        with self._locked():
            data = _read(self.path)
        records, torn = _parse(data)
        return Snapshot(records, torn, len(data))

    def held(self) -> list[dict]:
        with self._locked():
            data = _read(self.held_path)
        return _parse(data)[0]

    def settle(self, snapshot: Snapshot, remaining: list[dict]) -> None:
        """Replace the part of the journal `snapshot` read by `remaining`; what was appended since stays after it.

        Written to a temporary file, fsync'd and renamed over the journal under the lock, so a crash
        leaves either the old journal or the new one, whole.
        """
        with self._locked():
            appended_since = _read(self.path)[snapshot.end:]
            content = b"".join(_line(record) for record in remaining) + appended_since
            if not content:
                self.path.unlink(missing_ok=True)
                _fsync_directory(self.directory)
                return
            temporary = self.path.with_name(self.path.name + ".tmp")
            with open(temporary, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            _fsync_directory(self.directory)

    def rewrite_held(self, remaining: list[dict]) -> None:
        """Replace the held part by `remaining` (after held texts were applied), atomically."""
        with self._locked():
            temporary = self.held_path.with_name(self.held_path.name + ".tmp")
            with open(temporary, "wb") as handle:
                handle.write(b"".join(_line(record) for record in remaining))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.held_path)
            _fsync_directory(self.directory)

    @contextmanager
    def replaying(self) -> Iterator[bool]:
        """Yield True to the one replayer of this host at a time; False at once to any other."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self._replay_lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True  # closing the file releases the lock

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


def _line(record: dict) -> bytes:
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), sort_keys=True).encode("ascii") + b"\n"


def _append_lines(journal: Journal, path: Path, lines: list[bytes]) -> None:
    with journal._locked():
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            data = b"".join(lines)
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a writer died mid-line: leave its fragment on a line of its own
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                # Disk full or the like: take back what part of the record went in, so no torn line
                # is left by a writer that lives to report the failure.
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        if created:
            _fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _parse(data: bytes) -> tuple[list[dict], list[str]]:
    records, torn = [], []
    for raw in data.split(b"\n"):
        if not raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            torn.append(raw.decode("ascii", errors="backslashreplace"))
    return records, torn


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["Journal", "Snapshot"]
