"""Inbound texts the store could not take: journaled on the host, replayed once the store answers.

Twilio sends an inbound text's webhook once: an error answer is logged at Twilio and the text is
not sent again (only a fallback URL, if one is configured, is tried). So when the write of a signed,
well-formed text fails for a store reason (refused or lost connection, timeout, a serialization
failure after our own attempts), `receive` appends the parsed text and its receipt time to the
host's journal (gateway.store.journal), fsync'd, and the webhook answers an empty TwiML 200: no
reply, since we cannot know what the text did to the person's consents.

`replay` applies journaled texts in order, exactly as the webhook would have, with the receipt time
as the event time and `origin: journal` in the evidence; the MessageSid's unique key makes a text
applied twice (a crash between applying and settling the journal) a duplicate that changes nothing.
No reply goes out late: a confirmation minutes after a STOP would be a text to a number that just
opted out, and Twilio's own Advanced Opt-Out has answered the keyword already. A confirmation that
double opt-in queues (a join keyword) is an outbound message like any other and goes through the
gate. A text that cannot be applied (not ours, not a number, a bug) moves to the held part, counted;
nothing leaves the journal unapplied or unheld.

While the journal holds texts, new ones are journaled behind them even if the store is back, until
the replayer has caught up: a START that waited in the journal must not be applied after a STOP that
came later and went straight through. See docs/decisions/0013-inbound-journal.md.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway import logs, metrics
from gateway.domain.numbers import is_e164
from gateway.services import inbound
from gateway.services.ports import Gateway
from gateway.store.journal import Journal
from gateway.store.models import utcnow

log = logging.getLogger(__name__)

ORIGIN = "journal"
_FORMAT = 1


def is_store_fault(error: BaseException) -> bool:
    """True for a failure of the store itself, which a later attempt may not meet; False for a refusal
    of what we wrote (an integrity error) or a bug, which a later attempt would meet again."""
    if isinstance(error, IntegrityError):
        return False
    if isinstance(error, (OperationalError, InterfaceError, PoolTimeout, DisconnectionError, inbound.Contended)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


@lru_cache(maxsize=8)
def journal_in(var_dir: Path) -> Journal:
    return Journal(var_dir)


def journal_of(gateway: Gateway) -> Journal:
    return journal_in(gateway.settings.var_dir)


def receive(gateway: Gateway, text: inbound.InboundText) -> inbound.Handled:
    """The webhook's path: handle the text now, or journal it when the store cannot take it."""
    received_at = utcnow()
    journal = journal_of(gateway)
    if not journal.is_empty():
        if not is_e164(text.from_):
            raise inbound.BadInbound("invalid_number", "From is not an E.164 phone number")
        return _journaled(journal, text, received_at, "behind_journal")
    try:
        return inbound.handle(gateway, text, now=received_at)
    except inbound.BadInbound:
        raise
    except Exception as error:
        if not is_store_fault(error):
            raise
        return _journaled(journal, text, received_at, type(error).__name__)


def _journaled(journal: Journal, text: inbound.InboundText, received_at: datetime, because: str) -> inbound.Handled:
    journal.append({"v": _FORMAT, "received_at": received_at.isoformat(), "because": because,
                    "text": dataclasses.asdict(text)})
    # The text is safe on disk and answered; the store will have it when it answers again.
    logs.event(log, "inbound_journaled", level=logging.WARNING, message_sid=text.message_sid, number=text.from_,
               because=because)
    metrics.INBOUND_JOURNALED.inc()
    return inbound.Handled("journaled")


@dataclass(frozen=True)
class Replayed:
    """One replay's counts. `waiting`: still in the journal (the store failed again); `held`: in total."""

    applied: int = 0
    duplicates: int = 0
    newly_held: int = 0
    waiting: int = 0
    held: int = 0
    busy: bool = False  # another replayer of this host was at work: nothing done


def replay(gateway: Gateway) -> Replayed:
    """Apply what the journal holds, in order, until it is empty or the store fails again."""
    journal = journal_of(gateway)
    with journal.replaying() as mine:
        if not mine:
            return Replayed(busy=True)
        applied = duplicates = newly_held = 0
        while True:
            snapshot = journal.snapshot()
            if not snapshot.records and not snapshot.torn:
                break
            torn = [{"reason": "torn", "line": line, "held_at": utcnow().isoformat()} for line in snapshot.torn]
            outcome = _apply_in_order(gateway, snapshot.records)
            journal.hold(torn + outcome.held)
            journal.settle(snapshot, outcome.remaining)
            for record in torn + outcome.held:
                metrics.INBOUND_HELD.labels(reason=record["reason"]).inc()
            applied, duplicates = applied + outcome.applied, duplicates + outcome.duplicates
            newly_held += len(torn) + len(outcome.held)
            if outcome.remaining:
                break  # the store failed: try again at the next round
        waiting, held = len(journal.snapshot().records), len(journal.held())
    if applied or duplicates or newly_held:
        log.info("inbound journal: %d applied, %d already stored, %d held, %d waiting", applied, duplicates,
                 newly_held, waiting)
    return Replayed(applied, duplicates, newly_held, waiting, held)


def retry_held(gateway: Gateway) -> Replayed:
    """Apply the held texts again (after the cause was fixed: a sender added, a bug mended)."""
    journal = journal_of(gateway)
    with journal.replaying() as mine:
        if not mine:
            return Replayed(busy=True)
        held = journal.held()
        texts = [record["entry"] for record in held if "entry" in record]
        outcome = _apply_in_order(gateway, texts)
        still_held = [record for record in held if "entry" not in record]  # torn lines stay as they are
        still_held += outcome.held + [_held_record(entry, "store_fault") for entry in outcome.remaining]
        journal.rewrite_held(still_held)
    return Replayed(outcome.applied, outcome.duplicates, 0, 0, len(still_held))


@dataclass
class _Outcome:
    applied: int = 0
    duplicates: int = 0
    held: list[dict] = dataclasses.field(default_factory=list)
    remaining: list[dict] = dataclasses.field(default_factory=list)


def _apply_in_order(gateway: Gateway, entries: list[dict]) -> _Outcome:
    outcome = _Outcome()
    for position, entry in enumerate(entries):
        try:
            text, received_at = _text_of(entry)
            handled = inbound.handle(gateway, text, now=received_at)
        except inbound.BadInbound as refused:
            outcome.held.append(_held_record(entry, refused.code))
            continue
        except Exception as error:
            if is_store_fault(error):
                # Order matters (a STOP then a START): nothing after this text is tried before it.
                outcome.remaining = entries[position:]
                break
            log.exception("inbound journal: a text could not be applied; held")
            outcome.held.append(_held_record(entry, f"error:{type(error).__name__}"))
            continue
        if handled.duplicate:
            outcome.duplicates += 1
        else:
            outcome.applied += 1
        metrics.INBOUND_REPLAYED.inc()
    return outcome


def _text_of(entry: dict) -> tuple[inbound.InboundText, datetime]:
    if entry.get("v") != _FORMAT:
        raise inbound.BadInbound("unknown_format", f"journal record format {entry.get('v')!r}")
    try:
        text = inbound.InboundText(**{**entry["text"], "origin": ORIGIN})
        return text, datetime.fromisoformat(entry["received_at"])
    except (KeyError, TypeError, ValueError) as error:
        raise inbound.BadInbound("unreadable", f"journal record: {error}") from None


def _held_record(entry: dict, reason: str) -> dict:
    return {"reason": reason, "held_at": utcnow().isoformat(), "entry": entry}


class Replayer:
    """The web process's replayer: a daemon thread that replays every `seconds`."""

    def __init__(self, gateway: Gateway, seconds: float, context=None):
        self._gateway, self._seconds, self._context = gateway, seconds, context
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inbound-journal-replayer", daemon=True)

    def start(self) -> Replayer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.wait(self._seconds):
            try:
                if self._context is None:
                    replay(self._gateway)
                else:
                    with self._context():
                        replay(self._gateway)
            except Exception:
                # The next round tries again; the journal keeps every text meanwhile.
                log.exception("inbound journal: replay failed")


__all__ = ["ORIGIN", "Replayed", "Replayer", "is_store_fault", "journal_of", "receive", "replay", "retry_held"]
