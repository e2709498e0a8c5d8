"""Signed checkpoints of every chain's head, in a log outside the database (docs/ledger.md).

A hash chain proves nothing to someone who can rewrite the database: they can recompute every hash
and the head. A checkpoint signs every head (number id, seq, hash) at one moment with an Ed25519
key that does not live in the database, and goes to a log that does not either (a directory, meant
to be shipped to write-once storage). Chains only ever grow, so each later state of a chain must
still hold the event a checkpoint signed: `ledger.verify` checks that against the newest checkpoint,
and a new checkpoint is written only if every chain still holds the heads the one before signed,
so the beat schedule never signs over tampering (docs/decisions/0009-ledger-checkpoints.md).

File format (one file per checkpoint, named by its time, never rewritten): a header line, then one
line per head, in ascending number id::

    {"format": "smsgate-ledger-checkpoint/1", "created_at": "...Z", "public_key": HEX, "size": N,
     "root": HEX, "signature": HEX}
    [number_id, seq, "hash"]
    ...

The signature covers `signed_message()`: the format, time, public key, size and the RFC 6962
Merkle root over the heads, so one number's head can be proven with an inclusion proof alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from gateway.domain import merkle
from gateway.domain.ledger import Break, SignedHeads, number_label
from gateway.store.ledger import number_batches
from gateway.store.models import LedgerEvent, utcnow

FORMAT = "smsgate-ledger-checkpoint/1"
_NAME = re.compile(r"^checkpoint-(\d{8}T\d{6}\.\d{6}Z)\.jsonl$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_EVENTS = LedgerEvent.__table__


@dataclass(frozen=True)
class Head:
    """A chain's head: its number, the seq of its last event and that event's hash."""

    number_id: int
    seq: int
    hash: str

    def leaf(self) -> bytes:
        """The Merkle leaf hash of this head: SHA-256(0x00 || "number_id:seq:hash")."""
        return merkle.leaf_hash(f"{self.number_id}:{self.seq}:{self.hash}".encode("ascii"))


def signed_message(created_at: str, public_key: str, size: int, root: str) -> bytes:
    """The bytes a checkpoint's signature covers: five lines, each ending in a newline."""
    return (f"{FORMAT}\ncreated_at {created_at}\npublic_key {public_key}\nsize {size}\nroot {root}\n"
            ).encode("ascii")


class Signer:
    """The checkpoint key: an Ed25519 private key from its 32 raw bytes (LEDGER_SIGNING_KEY)."""

    def __init__(self, private_key: bytes):
        self._key = Ed25519PrivateKey.from_private_bytes(private_key)
        self.public_key = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()


def signature_holds(public_key: str, message: bytes, signature: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of the log whose signature and heads have been checked."""

    path: Path
    created_at: str
    public_key: str
    size: int
    root: str
    signature: str

    def heads(self, first: int | None = None) -> Iterator[Head]:
        """Its heads in ascending number id, read from the file as they are needed; `first`: from the
        first head of that number id or above, found by bisecting the file (a job of the parallel
        check reads only its range)."""
        with open(self.path, "rb") as handle:
            handle.readline()
            if first is not None:
                handle.seek(_offset_of(handle, first))
            for line in handle:
                number_id, seq, hash = json.loads(line)
                yield Head(number_id, seq, hash)


def _offset_of(handle, number_id: int) -> int:
    """The offset of the first head line with a number id of `number_id` or above (or the end), in a
    file whose head lines ascend by number id (`CheckpointLog.check` made sure), by bisection."""
    start = handle.tell()  # the first head line
    end = handle.seek(0, os.SEEK_END)

    def line_from(position: int) -> int:  # the first line starting at `position` or after
        if position <= start:
            return handle.seek(start)
        handle.seek(position - 1)
        handle.readline()
        return handle.tell()

    def below(position: int) -> bool:
        handle.seek(line_from(position))
        line = handle.readline()
        return bool(line) and json.loads(line)[0] < number_id

    low, high = start, end
    while low < high:  # the smallest position whose next line is not below number_id
        middle = (low + high) // 2
        if below(middle):
            low = middle + 1
        else:
            high = middle
    return line_from(low)


@dataclass(frozen=True)
class LogProblem:
    """A checkpoint file that cannot be trusted."""

    path: Path
    problem: str

    def __str__(self) -> str:
        return f"checkpoint {self.path.name}: {self.problem}"


class BadCheckpoint(ValueError):
    pass


def checkpoint_files(directory: Path) -> list[Path]:
    """The checkpoint files in `directory`, oldest first (their names sort by time)."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if _NAME.match(path.name))


def newest_taken_at(directory: Path) -> datetime | None:
    """When the newest checkpoint in `directory` was taken, by its file's name (unverified: `ledger
    verify` checks its signature)."""
    files = checkpoint_files(directory)
    if not files:
        return None
    return datetime.strptime(_NAME.match(files[-1].name).group(1), "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)


class CheckpointLog:
    """The directory of checkpoint files, read with our public key."""

    def __init__(self, directory: Path, public_key: str):
        self.directory = directory
        self.public_key = public_key

    def files(self) -> list[Path]:
        """Checkpoint files, oldest first (their names sort by time); temporary files are not listed."""
        return checkpoint_files(self.directory)

    def newest(self) -> tuple[Checkpoint | None, list[LogProblem]]:
        """The newest checkpoint that our key signed and whose heads match its root, and every newer
        file that failed (each is itself a problem: altered, foreign or broken)."""
        problems = []
        for path in reversed(self.files()):
            try:
                return self.check(path), problems
            except BadCheckpoint as error:
                problems.append(LogProblem(path, str(error)))
        return None, problems

    def check(self, path: Path) -> Checkpoint:
        """The checkpoint in `path`, verified: raise BadCheckpoint saying why not."""
        try:
            with open(path, encoding="ascii") as handle:
                header = _header(handle.readline())
                if header["public_key"] != self.public_key:
                    raise BadCheckpoint(f"signed by another key ({header['public_key'][:16]}…), "
                                        f"not ours ({self.public_key[:16]}…)")
                message = signed_message(header["created_at"], header["public_key"], header["size"], header["root"])
                if not signature_holds(self.public_key, message, header["signature"]):
                    raise BadCheckpoint("the signature does not verify: the checkpoint was altered")
                if _NAME.match(path.name).group(1) != _compact(header["created_at"]):
                    raise BadCheckpoint(f"its name does not match its signed time {header['created_at']}: "
                                        "renamed or copied")
                _check_heads(handle, header)
        except (OSError, UnicodeDecodeError) as error:
            raise BadCheckpoint(f"unreadable: {error}") from None
        return Checkpoint(path, header["created_at"], header["public_key"], header["size"], header["root"],
                          header["signature"])

    def write(self, heads: Iterable[Head], signer: Signer, now: datetime | None = None, *,
              check: Callable[[], None] | None = None) -> Checkpoint:
        """Sign `heads` (ascending number id) and add the checkpoint to the log; never overwrites a file.

        The heads are spooled to a temporary file while the root is computed (the header that
        signs it comes first), then the whole file appears at once under its final name. `check`
        runs once every head was read, before anything is signed: what it raises stops the write.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        builder = merkle.RootBuilder()
        spool = tempfile.NamedTemporaryFile("w+", encoding="ascii", dir=self.directory, prefix=".heads-",
                                            suffix=".tmp", delete=False)
        staged = None
        try:
            with spool:
                for head in heads:
                    builder.add(head.leaf())
                    spool.write(json.dumps([head.number_id, head.seq, head.hash]) + "\n")
                if check is not None:
                    check()
                created_at = (now or utcnow()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                root = builder.root().hex()
                header = {"format": FORMAT, "created_at": created_at, "public_key": signer.public_key,
                          "size": builder.size, "root": root,
                          "signature": signer.sign(signed_message(created_at, signer.public_key, builder.size, root))}
                final = self.directory / f"checkpoint-{_compact(created_at)}.jsonl"
                staged = final.with_name(f".{final.name}.tmp")
                with open(staged, "x", encoding="ascii") as out:
                    out.write(json.dumps(header, separators=(",", ":")) + "\n")
                    spool.seek(0)
                    shutil.copyfileobj(spool, out)
                    out.flush()
                    os.fsync(out.fileno())
            # A hard link fails where the name exists: a checkpoint is never replaced.
            os.link(staged, final)
            _sync_directory(self.directory)
        finally:
            for path in (spool.name, staged):
                if path is not None:
                    Path(path).unlink(missing_ok=True)
        return Checkpoint(final, created_at, signer.public_key, builder.size, root, header["signature"])


def _header(line: str) -> dict:
    try:
        header = json.loads(line)
    except ValueError:
        raise BadCheckpoint("its first line is not a JSON header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BadCheckpoint(f"not a {FORMAT} checkpoint")
    for key, kind in (("created_at", str), ("public_key", str), ("size", int), ("root", str), ("signature", str)):
        if not isinstance(header.get(key), kind):
            raise BadCheckpoint(f"its header lacks {key}")
    return header


def _check_heads(lines: Iterable[str], header: dict) -> None:
    builder, last = merkle.RootBuilder(), 0
    for line in lines:
        try:
            number_id, seq, hash = json.loads(line)
            valid = type(number_id) is int and type(seq) is int and seq >= 1 and bool(_HEX64.match(hash))
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise BadCheckpoint(f"head {builder.size + 1} is not [number_id, seq, hash]")
        if number_id <= last:
            raise BadCheckpoint(f"head {builder.size + 1} is out of number order")
        last = number_id
        builder.add(Head(number_id, seq, hash).leaf())
    if builder.size != header["size"] or builder.root().hex() != header["root"]:
        raise BadCheckpoint("its heads do not match its signed root: the list was altered")


def _compact(created_at: str) -> str:
    return created_at.replace("-", "").replace(":", "")


def _sync_directory(directory: Path) -> None:
    """Make the new name durable too, not only the file's content."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Refused(Exception):
    """No checkpoint was written: the log or the ledger disagrees with the newest checkpoint."""

    def __init__(self, problems: list):
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


def take(session: Session, log: CheckpointLog, signer: Signer, *, now: datetime | None = None,
         batch: int = 1000) -> Checkpoint:
    """Checkpoint every chain's head as the store holds it now; raise Refused, writing nothing, where
    the log has a bad checkpoint or a chain no longer holds the head the newest checkpoint signed.

    Signing over a rewritten or truncated chain would make the rewrite the new truth; instead it
    stays reported until someone looks (docs/ledger.md says how to start a new log after restoring
    a backup).
    """
    previous, log_problems = log.newest()
    if log_problems:
        raise Refused(log_problems)
    problems: list[Break] = []

    def only_if_consistent() -> None:
        if problems:
            raise Refused(problems)

    return log.write(_consistent_heads(session, previous, problems, batch), signer, now, check=only_if_consistent)


def _consistent_heads(session: Session, previous: Checkpoint | None, problems: list[Break],
                      batch: int) -> Iterator[Head]:
    """Every chain's head now, ascending; where `previous` signed a head the chain no longer holds,
    a Break goes to `problems`."""
    signed = SignedHeads(previous)
    when = signed.signed_at
    for rows in number_batches(session, batch, chained_only=True):
        grown: list[tuple[Head, str]] = []  # heads signed before, now further on: the chain must hold them
        for row in rows:
            pending, missing = signed.take(row.id)
            problems.extend(missing)
            if pending is None:
                continue
            label = number_label(row.id, row.e164)
            if row.ledger_seq < pending.seq:
                problems.append(Break(row.id, label, f"the chain ends at seq {row.ledger_seq} but the "
                                      f"checkpoint of {when} signed seq {pending.seq}: events were removed"))
            elif row.ledger_seq == pending.seq and row.ledger_head != pending.hash:
                problems.append(Break(row.id, label, f"its head differs from the checkpoint of {when}: "
                                                     "the chain was rewritten"))
            elif row.ledger_seq > pending.seq:
                grown.append((pending, label))
        if grown:
            held = {(number_id, seq): hash for number_id, seq, hash in session.execute(
                select(_EVENTS.c.number_id, _EVENTS.c.seq, _EVENTS.c.hash)
                .where(tuple_(_EVENTS.c.number_id, _EVENTS.c.seq).in_([(h.number_id, h.seq) for h, _ in grown]))
            )}
            for head, label in grown:
                if held.get((head.number_id, head.seq)) != head.hash:
                    problems.append(Break(head.number_id, label, f"its event at seq {head.seq} differs from the "
                                                                 f"checkpoint of {when}: the chain was rewritten"))
        for row in rows:
            yield Head(row.id, row.ledger_seq, row.ledger_head)
    problems.extend(signed.rest())


def from_settings(settings) -> tuple[CheckpointLog, Signer]:
    """The log and the key the settings name (LEDGER_CHECKPOINT_DIR, LEDGER_SIGNING_KEY)."""
    signer = Signer(settings.ledger_signing_key)
    return CheckpointLog(settings.ledger_checkpoint_dir, signer.public_key), signer
