"""The outbox: outbound messages as rows, moved through their statuses one way only.

A message is a row before it is a task: `accept` stores it, the caller enqueues its id after commit,
`claim` lets exactly one worker take it, and `advance` is the only writer of its status.

`recheck_at` says when the sweeper should look at a message again if nothing has moved it by then:
a deferred one now due, a sent one whose final status never came; for a queued one, when its task
should have started, and the sweeper calls the task lost once the lost-task time has passed since.
Every step sets it, so the sweeper's queries are index ranges.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ARRAY,
    BigInteger,
    String,
    and_,
    any_,
    bindparam,
    cast,
    exists,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, selectinload

from gateway.domain.gate import Decision, Kind
from gateway.domain.outbound import MOVES, WAITING, Status, accepted_status, may_move
from gateway.domain.pacing import PACED, Waiting
from gateway.domain.segments import count as count_segments
from gateway.store import bulk, dialect
from gateway.store.database import Ids, Store, Writes, driver_sql, on_driver
from gateway.store.models import (
    MessageEvent,
    OutboundMessage,
    PhoneNumber,
    Program,
    UTCDateTime,
    new_message_id,
    utcnow,
)

MAX_ATTEMPTS = 6
# How long a claim is a worker's, and how long a queued message's task has to take it before the
# sweeper calls it lost, are settings (OUTBOX_CLAIM_LEASE_SECONDS, OUTBOX_LOST_TASK_SECONDS): the
# callers pass them in. A message the sweeper enqueued again is not enqueued again for this long
# (plus the lost-task time): in a long backlog its task is merely waiting, and a duplicate task every
# sweep would multiply the queue.
REQUEUE_HOLD = timedelta(minutes=10)
# A sent message without a final status after this long: ask the provider (then less and less often).
RECONCILE_AFTER = timedelta(minutes=30)
# ... until it is this old: Twilio settles a status within 72 hours, after that we stop asking.
RECONCILE_FOR = timedelta(days=3)


def recheck_time(status: Status, now: datetime, not_before: datetime | None) -> datetime | None:
    """When the sweeper should look at a message that has just moved to `status`."""
    if status == Status.QUEUED:
        return max(now, not_before or now)  # the sweeper adds the lost-task time (`due_ids`)
    if status == Status.DEFERRED:
        return not_before or now
    if status == Status.SENT:
        return now + RECONCILE_AFTER
    return None  # sending: the claim times out instead; final: nothing left to do


def _moving_to(status: Status) -> str:
    """`may_move` as SQL: the statuses a message may be in to move to `status`, as an IN list.

    Literals, not parameters: each statement is built once per status, and the list is the rule.
    """
    return ", ".join(f"'{current.value}'" for current in MOVES if may_move(current, status))


def advance(
    session: Session,
    message: OutboundMessage,
    status: Status,
    *,
    now: datetime | None = None,
    reason: str | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
    not_before: datetime | None = None,
    rule: Mapping | None = None,
    decision: str | None = None,
) -> bool:
    """Move `message` to `status` if that is forward; record the step. Return whether it moved.

    `decision`: the gate's record when the step is its decision (Decision.record, domain/decisions.py).

    `advance_by_id` is the same move for a row that is not loaded, written in SQL.
    """
    if not may_move(message.status, status):
        return False
    now = now or utcnow()
    message.status = status
    message.updated_at = now
    if reason is not None:
        message.reason = reason
    if error_code is not None:
        message.error_code = error_code
    if error_message is not None:
        message.error_message = error_message[:500]
    message.not_before = not_before
    message.recheck_at = recheck_time(status, now, not_before)
    if status != Status.SENDING:
        message.claimed_at = None
    session.add(MessageEvent(message_id=message.id, status=status, reason=reason, error_code=error_code,
                             rule=rule_text(rule), decision=decision, occurred_at=now))
    return True


def rule_text(rule: Mapping | None) -> str | None:
    """A decision's rule as the history stores it (JSON text, the same on every database)."""
    return None if rule is None else json.dumps(dict(rule), sort_keys=True, separators=(",", ":"))


def accept(
    session: Session,
    *,
    number: PhoneNumber,
    program: Program,
    kind: Kind,
    body: str,
    decision: Decision,
    now: datetime | None = None,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    batch_id: str | None = None,
) -> OutboundMessage:
    """Store a message the gate allowed (or deferred). The caller enqueues `queued` ones after commit."""
    if not (decision.allowed or decision.deferred):
        raise ValueError(f"the gate refused this message: {decision.reason}")
    now = now or utcnow()
    segments = count_segments(body)
    status = accepted_status(decision.deferred)
    message = OutboundMessage(
        number_id=number.id, program_id=program.id, kind=kind.value, sender=program.sender_key, body=body,
        segments=segments.segments, encoding=segments.encoding, status=status,
        reason=decision.reason.value if decision.reason else None, not_before=decision.not_before,
        api_key_id=api_key_id, idempotency_key=idempotency_key, batch_id=batch_id, created_at=now, updated_at=now,
        recheck_at=recheck_time(status, now, decision.not_before),
    )
    session.add(message)
    session.flush()
    session.add(MessageEvent(message_id=message.id, status=status, reason=message.reason,
                             rule=rule_text(decision.rule), decision=decision.record, occurred_at=now))
    return message


@dataclass(frozen=True)
class Accepted:
    id: str
    status: Status  # queued | deferred
    segments: int
    encoding: str
    not_before: datetime | None


def accept_many(
    session: Store,
    *,
    program: Program,
    kind: Kind,
    body: str,
    decisions: Sequence[tuple[int, Decision]],
    now: datetime,
    api_key_id: int | None = None,
    idempotency_key: str | None = None,
    batch_id: str | None = None,
) -> list[Accepted]:
    """`accept` for many numbers (number id, the gate's decision) in two bulk inserts, without the ORM.

    The send API takes this path for its one message too, on a Core connection (many need a Session).
    """
    if idempotency_key is not None and len(decisions) != 1:
        raise ValueError("an idempotency key names one message")
    if now.tzinfo is None:  # COPY and the driver would take it as the server's local time
        raise ValueError("naive datetime given to the store; use aware UTC")
    segments = count_segments(body)
    messages, events, accepted = [], [], []
    for number_id, decision in decisions:
        if not (decision.allowed or decision.deferred):
            raise ValueError(f"the gate refused this message: {decision.reason}")
        message_id = new_message_id()
        status = accepted_status(decision.deferred)
        reason = decision.reason.value if decision.reason else None
        messages.append((message_id, number_id, program.id, kind.value, program.sender_key, body, segments.segments,
                         segments.encoding, status, reason, decision.not_before, 0, api_key_id, idempotency_key,
                         batch_id, now, now, recheck_time(status, now, decision.not_before)))
        events.append((message_id, status, reason, rule_text(decision.rule), decision.record, now))
        accepted.append(Accepted(message_id, status, segments.segments, segments.encoding, decision.not_before))
    message_columns, event_columns = _MESSAGE_COLUMNS, _EVENT_COLUMNS
    if len(messages) == 1:
        if dialect.is_postgresql(session):
            # One message (the send API): both rows in one statement, one round trip fewer per send,
            # and atomic without a transaction around it.
            on_driver(session, _ACCEPT_ONE_SQL, {**dict(zip(message_columns, messages[0])),
                                                 **{f"event_{k}": v for k, v in zip(event_columns, events[0])}},
                      returns_rows=False)
        else:
            session.execute(insert(OutboundMessage.__table__), dict(zip(message_columns, messages[0])))
            session.execute(insert(MessageEvent.__table__), dict(zip(event_columns, events[0])))
        return accepted
    bulk.insert_rows(session, OutboundMessage.__table__, message_columns, messages)
    bulk.insert_rows(session, MessageEvent.__table__, event_columns, events)
    return accepted


_MESSAGE_COLUMNS = ("id", "number_id", "program_id", "kind", "sender", "body", "segments", "encoding", "status",
                    "reason", "not_before", "attempts", "api_key_id", "idempotency_key", "batch_id", "created_at",
                    "updated_at", "recheck_at")
_EVENT_COLUMNS = ("message_id", "status", "reason", "rule", "decision", "occurred_at")


def accept_into(writes: Writes, *, number_id: int, program: Program, kind: Kind, body: str, decision: Decision,
                now: datetime) -> str:
    """`accept` one message as rows of `writes`: stored with the change that asks for it (a double
    opt-in request and its confirmation text), or not at all. Returns its id, to enqueue after commit."""
    if not (decision.allowed or decision.deferred):
        raise ValueError(f"the gate refused this message: {decision.reason}")
    segments = count_segments(body)
    message_id = new_message_id()
    status = accepted_status(decision.deferred)
    reason = decision.reason.value if decision.reason else None
    recheck_at = recheck_time(status, now, decision.not_before)
    writes.insert(OutboundMessage.__table__, dict(zip(_MESSAGE_COLUMNS, (
        message_id, number_id, program.id, kind.value, program.sender_key, body, segments.segments, segments.encoding,
        status, reason, decision.not_before, 0, None, None, None, now, now, recheck_at))))
    writes.insert(MessageEvent.__table__, dict(zip(_EVENT_COLUMNS, (message_id, status, reason,
                                                                    rule_text(decision.rule), decision.record, now))))
    return message_id


_BLOCKED_SQL = literal_column(f"'{Status.BLOCKED.value}'", String)  # a literal: driver SQL takes no preset values


_IS_WAITING = OutboundMessage.__table__.c.status.in_([literal_column(f"'{status.value}'") for status in WAITING])


class _BlockWaiting:
    """The `Writes` part that blocks a number's waiting (queued and deferred) messages of some programs,
    with a history step each: an opt-out ends what was already queued for what it ends, in the same
    write as the opt-out itself. A message a worker has claimed ("sending") is not waiting: the
    worker's own gate, asked in its claim transaction, decides it."""

    name = "block_waiting"
    _MESSAGES, _EVENTS = OutboundMessage.__table__, MessageEvent.__table__

    def _where(self, prefix: str, program_ids):
        return self._MESSAGES.c.number_id == bindparam(f"{prefix}number_id"), program_ids, _IS_WAITING

    def _values(self, prefix: str) -> dict:
        # As `advance` to blocked leaves them: nothing left to recheck, no claim.
        return {"status": _BLOCKED_SQL, "reason": bindparam(f"{prefix}reason", type_=String),
                "updated_at": bindparam(f"{prefix}now", type_=UTCDateTime()), "not_before": null(),
                "recheck_at": null(), "claimed_at": null()}

    def ctes(self, gate, prefix: str) -> list:
        messages, events = self._MESSAGES, self._EVENTS
        # One index range of the number's messages, filtered by program (an array: its count does not
        # tip PostgreSQL into planning this statement per execution, tests/integration/store/
        # test_generic_plans.py; `Writes` passes an update's ids one by one because there it did).
        program_ids = messages.c.program_id == any_(cast(bindparam(f"{prefix}program_ids"), ARRAY(BigInteger)))
        blocked = update(messages).where(*self._where(prefix, program_ids))
        if gate is not None:
            blocked = blocked.where(gate)
        blocked = blocked.values(self._values(prefix)).returning(messages.c.id).cte(f"{prefix}blocked")
        steps = insert(events).from_select(
            ["message_id", "status", "reason", "occurred_at"],
            select(blocked.c.id, _BLOCKED_SQL, cast(bindparam(f"{prefix}reason"), String),
                   bindparam(f"{prefix}now", type_=UTCDateTime())))
        return [blocked, steps.cte(f"{prefix}blocked_steps")]

    def run(self, connection: Connection, params: dict) -> None:
        messages, events = self._MESSAGES, self._EVENTS
        program_ids = messages.c.program_id.in_(bindparam("b_program_ids", expanding=True))
        where = self._where("b_", program_ids)
        bound = {f"b_{key}": value for key, value in params.items()}
        # The history first: once updated, the rows no longer match.
        connection.execute(insert(events).from_select(
            ["message_id", "status", "reason", "occurred_at"],
            select(messages.c.id, _BLOCKED_SQL, bindparam("b_reason", type_=String),
                   bindparam("b_now", type_=UTCDateTime())).where(*where)), bound)
        connection.execute(update(messages).where(*where).values(self._values("b_")), bound)


_BLOCK_WAITING = _BlockWaiting()


def waiting_of(number_id):
    """Whether the number (a column) has messages waiting: those `block_waiting_into` would block."""
    return exists().where(OutboundMessage.__table__.c.number_id == number_id, _IS_WAITING)


def block_waiting_into(writes: Writes, *, number_id: int, program_ids: Sequence[int], reason: str,
                       now: datetime) -> None:
    """Block the number's queued and deferred messages of `program_ids` with `reason`, as part of `writes`."""
    if program_ids:
        writes.part(_BLOCK_WAITING, {"number_id": number_id, "program_ids": Ids(program_ids), "reason": reason,
                                     "now": now})


def block_waiting(connection: Connection, *, number_id: int, program_ids: Sequence[int], reason: str,
                  now: datetime) -> None:
    """Block the number's queued and deferred messages of `program_ids` with `reason`, now (a bulk
    import's opt-outs, written set-wise rather than through `Writes`)."""
    if program_ids:
        _BLOCK_WAITING.run(connection, {"number_id": number_id, "program_ids": list(program_ids), "reason": reason,
                                        "now": now})


_ACCEPT_ONE = text("""
    WITH stored AS (
        INSERT INTO messages (id, number_id, program_id, kind, sender, body, segments, encoding, status, reason,
                              not_before, attempts, api_key_id, idempotency_key, batch_id, created_at, updated_at,
                              recheck_at)
        VALUES (:id, :number_id, :program_id, :kind, :sender, :body, :segments, :encoding, :status, :reason,
                :not_before, :attempts, :api_key_id, :idempotency_key, :batch_id, :created_at, :updated_at,
                :recheck_at)
    )
    INSERT INTO message_events (message_id, status, reason, rule, decision, occurred_at)
    VALUES (:event_message_id, :event_status, :event_reason, :event_rule, :event_decision, :event_occurred_at)
""").bindparams(*(bindparam(name, type_=UTCDateTime()) for name in (
    "not_before", "created_at", "updated_at", "recheck_at", "event_occurred_at")))
_ACCEPT_ONE_SQL = driver_sql(_ACCEPT_ONE)  # run on the driver: aware datetimes, as `now` is


def queued_in_batch(session: Session, batch_id: str, now: datetime) -> list[str]:
    """Ids of a batch's messages that are ready to go (the deferred ones wait for the sweeper)."""
    return list(session.scalars(
        select(OutboundMessage.id).where(
            OutboundMessage.batch_id == batch_id, OutboundMessage.status == Status.QUEUED,
            or_(OutboundMessage.not_before.is_(None), OutboundMessage.not_before <= now),
        ).order_by(OutboundMessage.created_at, OutboundMessage.id)
    ))


@dataclass(frozen=True)
class Claimed:
    """A message this worker now holds in "sending", with what the gate and the provider need.

    `number` and `program` are detached, partial copies of the rows: what the gate reads of them
    (their ids, the e164, the program's settings; it reads the rest of the number's facts itself).
    Nothing writes them.
    """

    id: str
    kind: str
    sender: str
    body: str
    attempts: int  # this one included
    claimed_at: datetime
    number: PhoneNumber
    program: Program
    step_id: int  # its "sending" step in the history: the worker's decision is kept on it (`keep_decision`)
    released: bool = False  # a deferred message whose slot came (paced release), not a first look


def claim(session: Store, message_id: str, now: datetime | None = None) -> Claimed | None:
    """Take the message for sending, or None if it is not ours to send (done, held, or not yet due).

    The row lock plus the status check make two workers racing for one id send it once: on
    PostgreSQL the row is locked with SKIP LOCKED (a row another transaction holds is not ours to
    take), moved to "sending" with its history step, and read back with its number and program,
    all in one statement; SQLite's write lock is the whole database, taken at BEGIN.
    """
    now = now or utcnow()
    params = {"id": message_id, "now": now}
    if dialect.is_postgresql(session):
        row = session.execute(_CLAIM, params).one_or_none()
    else:
        moved = session.execute(_CLAIM_SQLITE, params).rowcount
        if moved:
            step_id = session.execute(_STEP_SQLITE, {
                "message_id": message_id, "status": Status.SENDING, "reason": None, "error_code": None, "rule": None,
                "decision": None, "occurred_at": now}).lastrowid
        row = (*session.execute(_CLAIMED_SQLITE, {"id": message_id}).one(), step_id) if moved else None
    if row is None:
        return None
    id_, kind, sender, body, attempts, number_id, e164, program_id, category, version, settings, reason, step_id = row
    # All the gate reads of a program: its category names the texts its cap counts, its version the
    # promise a refusal cites. Without them the worker's second look counted nothing against the cap.
    return Claimed(id_, kind, sender, body, attempts, now, PhoneNumber(id=number_id, e164=e164),
                   Program(id=program_id, category=category, version=version, settings=settings), step_id,
                   released=reason == PACED)


def keep_decision(session: Store, step_id: int, decision: str | None) -> None:
    """Keep the gate's record on a history step already written (the claim's "sending" step: the
    worker decides after it claims, in the same transaction)."""
    session.execute(_KEEP_DECISION, {"id": step_id, "decision": decision})


_KEEP_DECISION = text("UPDATE message_events SET decision = :decision WHERE id = :id")


def waiting_until(session: Store, message_id: str) -> tuple[Status, datetime] | None:
    """(status, not_before) of a waiting message held until a time; None otherwise."""
    row = session.execute(select(OutboundMessage.status, OutboundMessage.not_before).where(
        OutboundMessage.id == message_id, OutboundMessage.status.in_(WAITING),
        OutboundMessage.not_before.is_not(None))).one_or_none()
    return None if row is None else (Status(row[0]), row[1])


# What `claim` sets: `advance(…, "sending")` plus the claim's own columns.
_CLAIM_SET = f"""status = '{Status.SENDING.value}', updated_at = :now, claimed_at = :now, attempts = attempts + 1,
                not_before = NULL, recheck_at = NULL"""
_CLAIMABLE = f"""status IN ({_moving_to(Status.SENDING)}) AND (not_before IS NULL OR not_before <= :now)"""
_CLAIMED_COLUMNS = ("c.id, c.kind, c.sender, c.body, c.attempts, n.id, n.e164, p.id, p.category, p.version, "
                    "p.settings, c.reason")
_CLAIMED_JOINS = "JOIN numbers n ON n.id = c.number_id JOIN programs p ON p.id = c.program_id"


# The claims of one number's texts take turns: each holds this lock (the number's id in our own key
# space) until its transaction ends, so the gate's next read in a claim sees every earlier claim of
# that number committed, and the program's cap counts a text another worker is sending right now.
# Claims of different numbers never wait for each other; SQLite's write lock serialises every claim.
_NUMBER_TURN = 0x5E2D


def _claimed_statement(sql: str):
    return text(sql).columns(settings=Program.__table__.c.settings.type)  # JSON: SQLite gives it as text


_CLAIM = _claimed_statement(f"""
    WITH c AS (
        UPDATE messages SET {_CLAIM_SET}
        WHERE id = (SELECT id FROM messages WHERE id = :id AND {_CLAIMABLE} FOR UPDATE SKIP LOCKED)
        RETURNING id, kind, sender, body, attempts, number_id, program_id, reason
    ), step AS (
        INSERT INTO message_events (message_id, status, occurred_at) SELECT id, '{Status.SENDING.value}', :now FROM c
        RETURNING id
    ), turn AS (
        SELECT pg_advisory_xact_lock({_NUMBER_TURN}, (number_id % 2147483647)::int) FROM c
    )
    SELECT {_CLAIMED_COLUMNS}, step.id FROM c CROSS JOIN turn CROSS JOIN step {_CLAIMED_JOINS}
""").bindparams(bindparam("now", type_=UTCDateTime()))
_CLAIM_SQLITE = text(f"UPDATE messages SET {_CLAIM_SET} WHERE id = :id AND {_CLAIMABLE}").bindparams(
    bindparam("now", type_=UTCDateTime()))
_CLAIMED_SQLITE = _claimed_statement(f"SELECT {_CLAIMED_COLUMNS} FROM messages c {_CLAIMED_JOINS} WHERE c.id = :id")
_STEP_SQLITE = text("""
    INSERT INTO message_events (message_id, status, reason, error_code, rule, decision, occurred_at)
    VALUES (:message_id, :status, :reason, :error_code, :rule, :decision, :occurred_at)
""").bindparams(bindparam("occurred_at", type_=UTCDateTime()))


def advance_by_id(
    session: Store,
    message_id: str,
    status: Status,
    *,
    now: datetime,
    reason: str | None = None,
    error_code: int | None = None,
    error_message: str | None = None,
    not_before: datetime | None = None,
    provider_sid: str | None = None,
    rule: Mapping | None = None,
    decision: str | None = None,
) -> bool:
    """`advance` for a row that is not loaded: the same move and history step, with `may_move`
    checked in the UPDATE itself (so a status callback that got there first, e.g. "delivered"
    before the worker writes "sent", is never undone). One statement on PostgreSQL.

    `provider_sid` is stored with the move (the provider's id for the message, once sent); `rule`
    with its history step (the rule behind a deferral or refusal), and `decision`, the gate's record.
    """
    if status == Status.SENDING:
        raise ValueError("a message moves to sending only by `claim`")
    params = {"id": message_id, "status": status, "now": now, "reason": reason, "error_code": error_code,
              "error_message": error_message[:500] if error_message is not None else None,
              "not_before": not_before, "recheck_at": recheck_time(status, now, not_before),
              "provider_sid": provider_sid, "rule": rule_text(rule), "decision": decision}
    if dialect.is_postgresql(session):
        return session.execute(_advance_statement(status, "postgresql"), params).rowcount > 0
    if not session.execute(_advance_statement(status, "sqlite"), params).rowcount:
        return False
    session.execute(_STEP_SQLITE, {"message_id": message_id, "status": status, "reason": reason,
                                   "error_code": error_code, "rule": params["rule"], "decision": decision,
                                   "occurred_at": now})
    return True


@functools.cache
def _advance_statement(status: Status, dialect: str):
    """The UPDATE (and, on PostgreSQL, the history INSERT with it) that moves a row to `status`."""
    update_sql = f"""
        UPDATE messages SET status = :status, updated_at = :now, reason = COALESCE(:reason, reason),
            error_code = COALESCE(:error_code, error_code), error_message = COALESCE(:error_message, error_message),
            not_before = :not_before, recheck_at = :recheck_at, claimed_at = NULL,
            provider_sid = COALESCE(:provider_sid, provider_sid)
        WHERE id = :id AND status IN ({_moving_to(status)})"""
    if dialect == "postgresql":
        # Typed: a NULL parameter in a SELECT list would otherwise be text.
        update_sql = f"""
            WITH moved AS ({update_sql} RETURNING id)
            INSERT INTO message_events (message_id, status, reason, error_code, rule, decision, occurred_at)
            SELECT id, :status, CAST(:reason AS VARCHAR), CAST(:error_code AS INTEGER), CAST(:rule AS TEXT),
                   CAST(:decision AS TEXT), :now
            FROM moved"""
    return text(update_sql).bindparams(*(bindparam(name, type_=UTCDateTime())
                                         for name in ("now", "not_before", "recheck_at")))


def stale_claims(session: Session, now: datetime, lease: timedelta, limit: int = 500) -> list[OutboundMessage]:
    """Messages a worker claimed and never finished: it died between claim and result.

    Few rows are ever "sending" (one per send in flight): the status prefix of the recheck index
    finds them.
    """
    return list(session.scalars(
        select(OutboundMessage)
        .where(OutboundMessage.status == Status.SENDING, OutboundMessage.claimed_at < now - lease)
        .order_by(OutboundMessage.claimed_at).limit(limit).with_for_update(skip_locked=True)
    ))


def due_ids(session: Session, now: datetime, lost_after: timedelta, limit: int = 5000,
            ahead: timedelta = timedelta(0)) -> list[tuple[str, Status, datetime | None]]:
    """(id, status, when) to (re-)enqueue: paced deferred messages whose slot comes within `ahead`
    (`when`: the slot, to enqueue for then when it is still to come), and queued ones whose task has
    had `lost_after` to take them and has not (`when` None: now). Two ranges of the (status,
    recheck_at) index. A deferred message without its slot yet waits for the release pass."""
    found = session.execute(
        select(OutboundMessage.id, OutboundMessage.status, OutboundMessage.recheck_at)
        .where(or_(and_(OutboundMessage.status == Status.DEFERRED, OutboundMessage.recheck_at <= now + ahead,
                        OutboundMessage.reason == PACED),
                   and_(OutboundMessage.status == Status.QUEUED, OutboundMessage.recheck_at <= now - lost_after)))
        .order_by(OutboundMessage.recheck_at).limit(limit)
    )
    return [(id_, Status(status), when if status == Status.DEFERRED and when > now else None)
            for id_, status, when in found]


# --- paced release (gateway/services/release.py) ------------------------------------------------------


def hold_release(session: Session) -> bool:
    """Take the release pass's lock for this transaction; False if another pass holds it.

    Two passes at once would each read a sender's schedule without the other's slots and lay theirs
    over it. PostgreSQL: a transaction-level advisory lock; SQLite's transactions are serialised
    already (BEGIN IMMEDIATE).
    """
    if not dialect.is_postgresql(session):
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _RELEASE_LOCK}).scalar())


_RELEASE_LOCK = 0x5E1EA5E  # any constant of ours: the one release pass at a time


def due_for_release(session: Session, until: datetime, limit: int = 5000) -> list[Waiting]:
    """Deferred messages whose window opens by `until` and that have no slot yet, oldest opening first."""
    return [Waiting(id_, sender, not_before or until) for id_, sender, not_before in session.execute(
        select(OutboundMessage.id, OutboundMessage.sender, OutboundMessage.not_before)
        .where(OutboundMessage.status == Status.DEFERRED, OutboundMessage.recheck_at <= until,
               or_(OutboundMessage.reason.is_(None), OutboundMessage.reason != PACED))
        .order_by(OutboundMessage.recheck_at, OutboundMessage.created_at, OutboundMessage.id).limit(limit)
    )]


def release_tails(session: Session, senders: Iterable[str]) -> dict[str, datetime]:
    """The last slot each sender has scheduled and not yet handed to a worker."""
    return dict(session.execute(
        select(OutboundMessage.sender, func.max(OutboundMessage.not_before))
        .where(OutboundMessage.status == Status.DEFERRED, OutboundMessage.reason == PACED,
               OutboundMessage.sender.in_(list(senders)))
        .group_by(OutboundMessage.sender)
    ).all())


def pace(session: Session, slots: Sequence[tuple[str, datetime]], now: datetime) -> set[str]:
    """Give each message its slot: it stays deferred, with reason `paced`, until then (`not_before`,
    and `recheck_at` for the sweeper), with a step in its history. A message that moved meanwhile
    (an opt-out blocked it) is left as it is. Returns the ids that took their slot."""
    paced: set[str] = set()
    for chunk in chunks(slots, 5000):
        if dialect.is_postgresql(session):
            paced.update(row[0] for row in on_driver(
                session, _PACE_SQL, {"ids": [i for i, _ in chunk], "slots": [s for _, s in chunk], "now": now}))
            continue
        for message_id, slot in chunk:
            if session.execute(_PACE_ONE, {"b_id": message_id, "b_slot": slot, "b_now": now}).rowcount:
                session.execute(_STEP_SQLITE, {"message_id": message_id, "status": Status.DEFERRED, "reason": PACED,
                                               "error_code": None, "rule": None, "decision": None,
                                               "occurred_at": now})
                paced.add(message_id)
    return paced


_PACE_SQL = f"""
    WITH paced AS (
        UPDATE messages m SET reason = '{PACED}', not_before = s.slot, recheck_at = s.slot, updated_at = %(now)s
        FROM unnest(%(ids)s::text[], %(slots)s::timestamptz[]) AS s(id, slot)
        WHERE m.id = s.id AND m.status = '{Status.DEFERRED.value}'
        RETURNING m.id
    ), steps AS (
        INSERT INTO message_events (message_id, status, reason, occurred_at)
        SELECT id, '{Status.DEFERRED.value}', '{PACED}', %(now)s FROM paced
    )
    SELECT id FROM paced
"""
_PACE_ONE = (update(OutboundMessage.__table__)
             .where(OutboundMessage.__table__.c.id == bindparam("b_id"),
                    OutboundMessage.__table__.c.status == Status.DEFERRED.value)
             .values(reason=PACED, not_before=bindparam("b_slot", type_=UTCDateTime()),
                     recheck_at=bindparam("b_slot", type_=UTCDateTime()),
                     updated_at=bindparam("b_now", type_=UTCDateTime())))


def mark_enqueued(session: Session, ids: Sequence[str], now: datetime, hold: timedelta = timedelta(0)) -> None:
    """A task for each of `ids` is on its way from `now`: look at them again only if it gets lost too.

    `hold`: how much longer than a first task's to give this one (the sweeper's REQUEUE_HOLD).
    """
    for chunk in chunks(ids, 5000):
        session.execute(
            update(OutboundMessage).where(OutboundMessage.id.in_(chunk))
            .values(recheck_at=now + hold).execution_options(synchronize_session=False)
        )


def postpone(session: Session, message_id: str, not_before: datetime) -> None:
    """Hold a waiting message until `not_before` without a step in its history (its sender was busy).

    Its task retries then; the sweeper steps in only if that task is lost too.
    """
    session.execute(
        update(OutboundMessage)
        .where(OutboundMessage.id == message_id, OutboundMessage.status.in_(WAITING))
        .values(not_before=not_before, recheck_at=not_before)
        .execution_options(synchronize_session=False)
    )


def unsettled(session: Session, now: datetime, limit: int = 200) -> list[OutboundMessage]:
    """Sent messages whose final status is overdue: the reconciler asks the provider about them."""
    return list(session.scalars(
        select(OutboundMessage)
        .where(OutboundMessage.status == Status.SENT, OutboundMessage.recheck_at <= now,
               OutboundMessage.provider_sid.is_not(None))
        .order_by(OutboundMessage.recheck_at).limit(limit).with_for_update(skip_locked=True)
    ))


def ask_again(message: OutboundMessage, now: datetime) -> None:
    """Still no final status: ask again after as long again as it has waited, or stop at RECONCILE_FOR."""
    waited = now - message.updated_at
    message.recheck_at = None if waited >= RECONCILE_FOR else now + max(RECONCILE_AFTER, waited)


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff for retryable provider errors: 10 s, 20 s, 40 s … capped at 10 min."""
    return timedelta(seconds=min(600, 10 * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class History:
    status: str
    reason: str | None
    error_code: int | None
    at: datetime
    rule: dict | None = None  # the rule behind a deferral or refusal: {rule, law, version, citation, source}
    decision: dict | None = None  # the gate's whole record when the step is its decision (domain/decisions.py)


def find(session: Session, message_id: str) -> OutboundMessage | None:
    """One message with its number, program and every step (what GET /v1/messages/{id} shows)."""
    return session.scalars(
        select(OutboundMessage).where(OutboundMessage.id == message_id)
        .options(selectinload(OutboundMessage.number), selectinload(OutboundMessage.program),
                 selectinload(OutboundMessage.events))
    ).one_or_none()


def history(message: OutboundMessage) -> list[History]:
    return [History(e.status, e.reason, e.error_code, e.occurred_at, json.loads(e.rule) if e.rule else None,
                    json.loads(e.decision) if e.decision else None)
            for e in message.events]


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
