"""Sending one outbox message: claim, ask the gate again, call the provider, record the outcome.

This is the worker's whole job for a message; the Celery task only calls `send` and schedules a
retry when told to. The gate runs in the same transaction that claims the row, so an opt-out
committed before the claim always wins, and the provider is called only after that commit. The
sender's throughput slot is taken in that transaction too: a busy sender leaves the row untouched.

`sweep` and `reconcile` are the beat's side: they find what a lost task or a missing status
callback left behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select

from gateway import logs, metrics
from gateway.domain.consent import Source
from gateway.domain.decisions import Stage
from gateway.domain.gate import Kind
from gateway.domain.numbers import mask
from gateway.domain.outbound import ErrorKind, ProviderError, SentMessage, Status
from gateway.services import carrier, lookups, policy, release, throughput, unit_of_work
from gateway.services.consents import Evidence
from gateway.services.ports import Gateway
from gateway.store import outbox
from gateway.store.models import OutboundMessage, PhoneNumber, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to the message; `retry_in` asks the caller to run it again after a delay."""

    status: Status | str  # the message's status, or SKIPPED: not ours to send (done, held, not yet due)
    reason: str | None = None
    retry_in: timedelta | None = None


SKIPPED = Outcome("skipped")
# A task that comes this little before its message is due (a clock a few milliseconds behind the
# sweeper's, which gave the task its time) tries again then, rather than wait for the sweeper.
EARLY_TASK = timedelta(minutes=1)


class _SenderBusy(Exception):
    def __init__(self, retry_after: float, mps: int):
        super().__init__(f"sender busy for {retry_after:.3f}s")
        self.retry_after, self.mps = retry_after, mps


def _prepare(gateway: Gateway, message_id: str, now: datetime, waited: int) -> outbox.Claimed | Outcome:
    try:
        return _claim_and_check(gateway, message_id, now)
    except _SenderBusy as busy:
        # The claim was rolled back with the transaction: the row is queued as it was. Hold it until
        # the sender has a slot, so a duplicate task cannot take it sooner.
        delay = throughput.wait_time(busy.retry_after, busy.mps, waited)
        with gateway.db.transaction() as session:
            outbox.postpone(session, message_id, now + delay)
        return Outcome(Status.QUEUED, "sender_busy", retry_in=delay)


def _claim_and_check(gateway: Gateway, message_id: str, now: datetime) -> outbox.Claimed | Outcome:
    # A Core transaction: the statements here are prebuilt SQL, and a Session's unit of work would
    # cost more than they do.
    with gateway.db.statements(atomic=True) as connection:
        claimed = outbox.claim(connection, message_id, now)
        if claimed is None:
            waiting = outbox.waiting_until(connection, message_id)
            if waiting is not None and now < waiting[1] <= now + EARLY_TASK:
                return Outcome(waiting[0], "not_yet_due", retry_in=waiting[1] - now)
            return SKIPPED
        stage = Stage.RELEASE if claimed.released else Stage.WORKER
        decision = policy.gate_of(gateway).may_send(connection, claimed.number, claimed.program, Kind(claimed.kind),
                                                    now, message_id=claimed.id, stage=stage)
        if decision.deferred:
            outbox.advance_by_id(connection, claimed.id, Status.DEFERRED, now=now, reason=decision.reason.value,
                                 not_before=decision.not_before, rule=decision.rule, decision=decision.record)
            return Outcome(Status.DEFERRED, decision.reason.value)
        if not decision.allowed:
            outbox.advance_by_id(connection, claimed.id, Status.BLOCKED, now=now, reason=decision.reason.value,
                                 rule=decision.rule, decision=decision.record)
            metrics.MESSAGES_REFUSED.labels(reason=decision.reason.value, stage="worker").inc()
            logs.event(log, "send_blocked", message_id=claimed.id, number=claimed.number.e164,
                       reason=decision.reason.value, stage="worker")
            return Outcome(Status.BLOCKED, decision.reason.value)
        mps = throughput.sender_mps(connection, claimed.sender)
        verdict = throughput.take(gateway.limiter, claimed.sender, mps)
        if not verdict.allowed:
            raise _SenderBusy(verdict.retry_after, mps)
        # Allowed: kept on the claim's "sending" step, committed with the claim, before the provider call
        # (a worker that dies after the call leaves the reason it sent behind).
        outbox.keep_decision(connection, claimed.step_id, decision.record)
        return claimed


def send(gateway: Gateway, message_id: str, now: datetime | None = None, *, waited: int = 0) -> Outcome:
    """Send one message if it is still ours to send and still allowed.

    `waited`: how many times this message has already been retried (its wait for a busy sender grows).
    """
    now = now or utcnow()
    if lookups.enabled(gateway):
        # Before the claim: what the look-up learns is what the claim's gate then judges by.
        lookups.before_send(gateway, message_id, now)
    started = time.monotonic()
    prepared = _prepare(gateway, message_id, now, waited)
    if isinstance(prepared, Outcome):
        return prepared
    if time.monotonic() - started > claim_lease(gateway).total_seconds() / 2:
        return _give_back_late_claim(gateway, prepared)
    try:
        sent = gateway.provider.send(to=prepared.number.e164, sender=prepared.sender, body=prepared.body,
                                     reference=prepared.id)
    except ProviderError as error:
        return _record_failure(gateway, prepared, error)
    # One statement on PostgreSQL, atomic by itself: no BEGIN and COMMIT around it.
    with gateway.db.statements() as connection:
        # By id, not on the claimed row: a status callback may have moved it on already (it finds
        # the message by the id on its URL), and "sent" must not undo that.
        outbox.advance_by_id(connection, prepared.id, Status.SENT, now=utcnow(), provider_sid=sent.sid)
    metrics.MESSAGES_SENT.labels(kind=prepared.kind).inc()
    return Outcome(Status.SENT)


def claim_lease(gateway: Gateway) -> timedelta:
    """How long a claim is its worker's; past it the sweeper asks the provider what became of it."""
    return timedelta(seconds=gateway.settings.outbox_claim_lease_seconds)


def _give_back_late_claim(gateway: Gateway, claimed: outbox.Claimed) -> Outcome:
    """The claim took half its lease to commit (a stalled store): too late to call the provider.

    A call made now could still be under way when the lease ends and the sweeper asks the provider
    about the message, find nothing, and queue it again: a second send. The provider is called only
    in the first half of a lease, so the call (bounded by its timeout) has ended before then.
    """
    with gateway.db.statements() as connection:
        outbox.advance_by_id(connection, claimed.id, Status.QUEUED, now=utcnow(), reason="claim_late")
    log.warning("claim of %s took too long to call the provider now: queued again", claimed.id)
    return Outcome(Status.QUEUED, "claim_late", retry_in=timedelta(seconds=1))


def _record_failure(gateway: Gateway, request: outbox.Claimed, error: ProviderError) -> Outcome:
    now = utcnow()
    with gateway.db.transaction() as session:
        message = session.get(OutboundMessage, request.id)
        number = session.scalars(
            select(PhoneNumber).where(PhoneNumber.id == message.number_id).with_for_update()
        ).one()
        if error.kind is ErrorKind.RETRYABLE and request.attempts < outbox.MAX_ATTEMPTS:
            delay = outbox.retry_delay(request.attempts)
            outbox.advance(session, message, Status.QUEUED, now=now, reason="provider_retry", error_code=error.code,
                           error_message=error.message, not_before=now + delay)
            return Outcome(Status.QUEUED, "provider_retry", retry_in=delay)
        if error.kind is ErrorKind.RETRYABLE:
            outbox.advance(session, message, Status.FAILED, now=now, reason="provider_unavailable",
                           error_code=error.code, error_message=error.message)
            return Outcome(Status.FAILED, "provider_unavailable")
        if error.kind is ErrorKind.OPTED_OUT:
            learnt = carrier.learn_refusal_21610(session, number, message.sender, Evidence(
                source=Source.CARRIER, actor="twilio", reference=message.id,
                details={"error_code": error.code, "error_message": error.message, "stage": "send"},
            ), now=now, message_id=message.id)
            reason = error.kind.reason if learnt else carrier.TWILIO_BLOCKED
            outbox.advance(session, message, Status.BLOCKED, now=now, reason=reason, error_code=error.code,
                           error_message=error.message)
            return Outcome(Status.BLOCKED, reason)
        reason = error.kind.reason or "provider_error"
        if error.kind.reachability is not None:
            carrier.learn_reachability(number, error.kind.reachability, error.code)
        outbox.advance(session, message, Status.FAILED, now=now, reason=reason, error_code=error.code,
                       error_message=error.message)
        log.info("failed %s to %s: %s", message.id, mask(request.number.e164), error)
        return Outcome(Status.FAILED, reason)


# --- the sweeper ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    enqueued: int  # ids handed to the queue again: lost tasks, deferrals now due, recovered claims
    found_sent: int  # dead workers' claims the provider had sent after all: recorded, not resent
    requeued: int  # dead workers' claims the provider never saw: queued again
    unresolved: int  # dead workers' claims we could not ask the provider about: next sweep
    lost: int = 0  # of `enqueued`, queued messages whose task never took them
    paced: int = 0  # deferred messages whose window opened, given their slots by the release pass


def sweep(gateway: Gateway, now: datetime | None = None, *, max_ids: int = 100_000) -> Sweep:
    """Re-enqueue what no task will pick up, release deferred messages at their slots, and settle
    claims whose worker died mid-send.

    Deferred messages whose window opens before the next sweep are given their slots first
    (services/release.py), and those whose slot comes before the next sweep are enqueued for it:
    the worker holds such a task until its time (a few seconds at most, well within the broker's
    visibility timeout), so each sender's messages reach it spread as scheduled.
    """
    now = now or utcnow()
    ahead = timedelta(seconds=gateway.settings.outbox_sweep_seconds)
    released = release.release(gateway, now, ahead=ahead)
    found_sent = unresolved = lost = 0
    lease, lost_after = claim_lease(gateway), timedelta(seconds=gateway.settings.outbox_lost_task_seconds)
    with gateway.db.transaction() as session:
        stale = [m.id for m in outbox.stale_claims(session, now, lease)]
    back_in_queue = []
    # Each claim is settled in a transaction of its own (committed in _settle_claim).
    with unit_of_work.after_commit(gateway) as outgoing:
        for message_id in stale:
            result = _settle_claim(gateway, message_id, now, lease)
            found_sent += result is _Settled.SENT
            unresolved += result is _Settled.UNKNOWN
            if result is _Settled.QUEUED:
                back_in_queue.append(message_id)
        outgoing.send_messages(back_in_queue)
    requeued = len(back_in_queue)
    enqueued = requeued + released.enqueued
    while enqueued < max_ids:
        with unit_of_work.transaction(gateway) as (session, outgoing):
            due = outbox.due_ids(session, now, lost_after, limit=min(5000, max_ids - enqueued), ahead=ahead)
            ids = [message_id for message_id, _, _ in due]
            outbox.mark_enqueued(session, ids, now, outbox.REQUEUE_HOLD)
            outgoing.send_messages([message_id for message_id, _, when in due if when is None])
            outgoing.send_messages_at([(message_id, when) for message_id, _, when in due if when is not None])
        enqueued += len(ids)
        lost += sum(status == Status.QUEUED for _, status, _ in due)
        if len(ids) < 5000:
            break
    _count_recovered(lost, found_sent, requeued, unresolved)
    if enqueued or stale:
        log.info("sweep: %d enqueued (%d lost tasks), %d stale claims (%d sent, %d requeued, %d unresolved)",
                 enqueued, lost, len(stale), found_sent, requeued, unresolved)
    return Sweep(enqueued, found_sent, requeued, unresolved, lost, released.paced)


def _count_recovered(lost: int, found_sent: int, requeued: int, unresolved: int) -> None:
    for how, count in (("lost_task", lost), ("claim_sent", found_sent), ("claim_requeued", requeued)):
        if count:
            metrics.MESSAGES_RECOVERED.labels(how=how).inc(count)
    if unresolved:
        metrics.STALE_CLAIMS_UNRESOLVED.inc(unresolved)


class _Settled(StrEnum):
    SENT = "sent"  # the provider had it after all: recorded as sent
    QUEUED = "queued"  # the provider never saw it: back in the queue
    MOVED = "moved"  # another sweeper settled it, or it moved on since we looked
    UNKNOWN = "unknown"  # the provider could not be asked: the next sweep tries again


def _settle_claim(gateway: Gateway, message_id: str, now: datetime, lease: timedelta) -> _Settled:
    """Ask the provider whether a dead worker's claimed message went out; record what it says.

    No transaction is held during the provider call (on SQLite it would stop every writer); the
    row is checked again afterwards, so two sweepers settling one claim record it once.
    """

    def still_stale(session) -> OutboundMessage | None:
        message = session.scalars(
            select(OutboundMessage).where(OutboundMessage.id == message_id).with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        ).one_or_none()
        if message is None or message.status != Status.SENDING or message.claimed_at > now - lease:
            return None  # another sweeper has it, or it moved on since we looked
        return message

    with gateway.db.transaction() as session:
        message = still_stale(session)
        if message is None:
            return _Settled.MOVED
        to, sender, body, claimed_at = message.number.e164, message.sender, message.body, message.claimed_at
    candidates: list[SentMessage] = []
    if to:
        try:
            # The worker called the provider after its claim, so anything it sent is newer.
            candidates = gateway.provider.messages_since(to=to, sender=sender,
                                                         since=claimed_at - timedelta(minutes=1))
        except ProviderError as error:
            log.warning("sweep: cannot ask the provider about %s: %s", message_id, error)
            return _Settled.UNKNOWN
    with gateway.db.transaction() as session:
        message = still_stale(session)
        if message is None or message.claimed_at != claimed_at:
            return _Settled.MOVED
        sent = _matching(session, body, candidates)
        if sent is not None:
            message.provider_sid = sent.sid
            outbox.advance(session, message, Status.SENT, now=now, reason="recovered")
            return _Settled.SENT
        outbox.advance(session, message, Status.QUEUED, now=now, reason="claim_expired")
        return _Settled.QUEUED


def _matching(session, body: str, candidates: list[SentMessage]) -> SentMessage | None:
    """The provider's message that is this one: same body, and not already another message of ours."""
    same_body = [c for c in candidates if c.body == body]
    if not same_body:
        return None
    ours = set(session.scalars(select(OutboundMessage.provider_sid).where(
        OutboundMessage.provider_sid.in_([c.sid for c in same_body]))))
    unclaimed = [c for c in same_body if c.sid not in ours]
    unclaimed.sort(key=lambda c: c.date_created or datetime.max.replace(tzinfo=UTC))
    return unclaimed[0] if unclaimed else None


# --- the reconciler -------------------------------------------------------------------------------


def reconcile(gateway: Gateway, now: datetime | None = None, *, limit: int = 200) -> int:
    """Ask the provider about sent messages whose final status never came; return how many settled."""
    from gateway.services import delivery  # the status-callback path: one way to apply a provider status

    now = now or utcnow()
    with gateway.db.transaction() as session:
        due = []
        for message in outbox.unsettled(session, now, limit):
            due.append((message.id, message.provider_sid))
            # Look again later whatever happens below; a final status clears it.
            outbox.ask_again(message, now)
    settled = 0
    for message_id, sid in due:
        try:
            report = gateway.provider.delivery_report(sid)
        except ProviderError as error:
            log.info("reconcile: cannot fetch %s: %s", message_id, error)
            continue
        if report.status in (Status.SENT, None):
            continue
        recorded = delivery.record(gateway, report, now=now)
        settled += recorded.moved
    if due:
        log.info("reconcile: %d asked, %d settled", len(due), settled)
    return settled
