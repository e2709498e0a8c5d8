"""What an operator asks of the store: the outbox's backlog, pending requests, the workers'
heartbeats, and when the last text came in and the last message went out.

Every read here is cheap enough for a Prometheus scrape: the backlog is read through the index on
(status, not_before), the pending requests through their partial index, the newest rows by primary
key. Nothing here counts the finished messages (they only grow: the counters say how many).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from gateway.domain.consent import Status as ConsentStatus
from gateway.domain.outbound import Status
from gateway.store import dialect
from gateway.store.models import (
    PENDING_DEADLINE,
    Consent,
    InboundMessage,
    InboundWatermark,
    MessageEvent,
    OutboundMessage,
    WorkerHeartbeat,
)

_MESSAGES, _EVENTS = OutboundMessage.__table__, MessageEvent.__table__
_CONSENTS, _INBOUND = Consent.__table__, InboundMessage.__table__
_HEARTBEATS, _WATERMARKS = WorkerHeartbeat.__table__, InboundWatermark.__table__
# Not yet with the provider: waiting for a worker, for their time, or in a worker's hands.
BACKLOG = (Status.QUEUED, Status.DEFERRED, Status.SENDING)


@dataclass(frozen=True)
class Backlog:
    """The messages not yet handed to the provider, at one moment."""

    by_status: dict[str, int]  # every BACKLOG status, 0 included
    oldest_queued_at: datetime | None  # the queued message accepted longest ago: waiting for a worker
    deferred_due: int  # deferred messages whose time has come (the sweeper releases them)


def backlog(connection: Connection, now: datetime) -> Backlog:
    waiting = [status.value for status in BACKLOG]
    counts = dict.fromkeys(waiting, 0)
    rows = connection.execute(
        select(_MESSAGES.c.status, func.count(), func.min(_MESSAGES.c.created_at))
        .where(_MESSAGES.c.status.in_(waiting)).group_by(_MESSAGES.c.status))
    oldest = None
    for status, count, first_created in rows:
        counts[status] = count
        if status == Status.QUEUED:
            oldest = _utc(first_created)
    due = connection.scalar(select(func.count()).select_from(_MESSAGES).where(
        _MESSAGES.c.status == Status.DEFERRED.value, _MESSAGES.c.not_before <= now))
    return Backlog(counts, oldest, due or 0)


def pending_requests(connection: Connection) -> int:
    """Double opt-in requests waiting for their YES (expired ones not yet swept count until they are).

    Read from the index of consents with a deadline (PENDING_DEADLINE), not the whole table."""
    return connection.scalar(select(func.count()).select_from(_CONSENTS)
                             .where(PENDING_DEADLINE, _CONSENTS.c.status == ConsentStatus.PENDING.value)) or 0


def beat(connection: Connection, worker: str, now: datetime) -> None:
    """Record that `worker` ran a task at `now`."""
    statement = dialect.insert_for(connection, WorkerHeartbeat).values(worker=worker[:200], beat_at=now)
    connection.execute(statement.on_conflict_do_update(index_elements=[_HEARTBEATS.c.worker],
                                                       set_={"beat_at": statement.excluded.beat_at}))


def last_heartbeat(connection: Connection) -> tuple[str, datetime] | None:
    """The worker that beat most recently, and when."""
    row = connection.execute(select(_HEARTBEATS.c.worker, _HEARTBEATS.c.beat_at)
                             .order_by(_HEARTBEATS.c.beat_at.desc()).limit(1)).first()
    return None if row is None else (row.worker, _utc(row.beat_at))


def oldest_watermark(connection: Connection) -> datetime | None:
    """Inbound reconciliation's furthest-behind sender: texts sent before it were looked for."""
    return _utc(connection.scalar(select(func.min(_WATERMARKS.c.listed_through))))


def last_inbound(connection: Connection) -> datetime | None:
    """When the newest inbound text was received (the newest row by key: no scan)."""
    return _utc(connection.scalar(select(_INBOUND.c.received_at).order_by(_INBOUND.c.id.desc()).limit(1)))


def last_sent(connection: Connection) -> datetime | None:
    """When a message was last handed to the provider (newest history rows first)."""
    return _utc(connection.scalar(select(_EVENTS.c.occurred_at).where(_EVENTS.c.status == Status.SENT.value)
                                  .order_by(_EVENTS.c.id.desc()).limit(1)))


def autovacuum(connection: Connection) -> bool | None:
    """Whether PostgreSQL runs autovacuum (None: the store is not PostgreSQL). Without it a table that
    grew keeps the statistics of when it was small, and statements the web and worker processes
    prepared then keep plans made for a small table: a send gate planned on an empty `messages`
    table scans the whole table on every send (bench/README.md, "Scale")."""
    if not dialect.is_postgresql(connection):
        return None
    return connection.exec_driver_sql("SHOW autovacuum").scalar() == "on"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
