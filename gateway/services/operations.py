"""The gateway as an operator sees it: one read of its health, for `smsgate status` and the gauges
/metrics computes at scrape time, and the worker's heartbeat.

A frozen or dead worker answers nothing and logs nothing, so it is found by what it stops doing:
beat has a worker run the heartbeat task every WORKER_HEARTBEAT_SECONDS, which moves the worker's row
in worker_heartbeats; the row's age is the worker's liveness. The outbox's oldest queued message
says the same from the other side (messages accepted, nobody taking them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from gateway.config import Settings
from gateway.services.inbound_journal import journal_of
from gateway.services.ports import Gateway
from gateway.store import checkpoints, operations
from gateway.store.models import utcnow
from gateway.store.operations import Backlog

log = logging.getLogger(__name__)


def beat(gateway: Gateway, worker: str, *, now: datetime | None = None) -> None:
    """`worker` is alive and taking tasks."""
    with gateway.db.statements(atomic=True) as connection:
        operations.beat(connection, worker, now or utcnow())


@dataclass(frozen=True)
class Health:
    """What the store, the broker and the files said at `checked_at`. A part that could not be read
    is None, with the reason in `store_error` or `broker_error`."""

    checked_at: datetime
    store_error: str | None = None
    broker_error: str | None = None
    backlog: Backlog | None = None
    pending_requests: int | None = None
    heartbeat: tuple[str, datetime] | None = None  # the worker that beat last, and when
    journal_length: int = 0
    watermark: datetime | None = None  # inbound reconciliation's furthest-behind sender
    last_inbound: datetime | None = None
    last_sent: datetime | None = None
    last_checkpoint: datetime | None = None
    autovacuum: bool | None = None  # PostgreSQL's; None: not PostgreSQL, or not read

    def age(self, moment: datetime | None) -> float | None:
        return None if moment is None else max(0.0, (self.checked_at - moment).total_seconds())

    @property
    def heartbeat_age(self) -> float | None:
        return self.age(self.heartbeat[1]) if self.heartbeat else None

    @property
    def oldest_queued_age(self) -> float | None:
        return self.age(self.backlog.oldest_queued_at) if self.backlog else None

    def problems(self, settings: Settings) -> list[str]:
        """What is wrong, one sentence each; empty when all is well."""
        found = []
        if self.store_error:
            found.append(f"the store cannot be read: {self.store_error}")
        if self.broker_error:
            found.append(f"the broker cannot be reached: {self.broker_error}")
        if self.store_error is None:
            age = self.heartbeat_age
            if age is None:
                found.append("no worker has ever written a heartbeat: is the worker (with beat) running?")
            elif age > settings.worker_stale_seconds:
                found.append(f"the worker is stale: its last heartbeat ({self.heartbeat[0]}) was {age:.0f} s ago "
                             f"(WORKER_STALE_SECONDS={settings.worker_stale_seconds}); it is frozen, stopped, "
                             "or beat is not running")
            oldest = self.oldest_queued_age
            if oldest is not None and oldest > settings.outbox_backlog_max_seconds:
                found.append(f"the oldest queued message has waited {oldest:.0f} s for a worker "
                             f"(OUTBOX_BACKLOG_MAX_SECONDS={settings.outbox_backlog_max_seconds})")
        if self.journal_length:
            found.append(f"{self.journal_length} inbound texts wait in the journal for the store")
        return found


def read(gateway: Gateway, *, broker: bool = False, now: datetime | None = None) -> Health:
    """Everything `Health` holds, read now; a part that fails is reported, never raised."""
    now = now or utcnow()
    found: dict = {"journal_length": journal_of(gateway).length()}
    found["last_checkpoint"] = checkpoints.newest_taken_at(gateway.settings.ledger_checkpoint_dir)
    try:
        with gateway.db.statements() as connection:
            found.update(
                backlog=operations.backlog(connection, now),
                pending_requests=operations.pending_requests(connection),
                heartbeat=operations.last_heartbeat(connection),
                watermark=operations.oldest_watermark(connection),
                last_inbound=operations.last_inbound(connection),
                last_sent=operations.last_sent(connection),
                autovacuum=operations.autovacuum(connection),
            )
    except Exception as error:  # a store that cannot be read is the answer, not a failure to answer
        log.warning("health: the store cannot be read (%s)", type(error).__name__)
        found["store_error"] = _reason(error)
    if broker:
        try:
            gateway.dispatcher.ping()
        except Exception as error:
            found["broker_error"] = _reason(error)
    return Health(now, **found)


def _reason(error: Exception) -> str:
    """The error's kind and the first line of its message: enough to act on, no parameters."""
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
