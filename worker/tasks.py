"""Thin tasks: take ids, call the core, end in a terminal state. Names live in gateway.queue.app.

The Gateway is the worker's own, built by bootstrap when the `worker` package is imported.
"""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy.exc import DBAPIError

from gateway import metrics
from gateway.queue.app import TaskNames
from gateway.services import batches, expiry, inbound_reconcile, operations, sending
from gateway.store import checkpoints
from worker import gateway

log = logging.getLogger(__name__)


@shared_task(name=TaskNames.EXPIRE_PENDING)
def expire_pending() -> int:
    """Expire double opt-in requests past their deadline."""
    with gateway.db.transaction() as session:
        count = expiry.expire_pending(session)
    if count:
        log.info("expired %d pending requests", count)
    return count


# An unreadable store raises before anything is sent (fail closed); try again with backoff, and the
# sweeper re-enqueues the still-queued row should the retries run out.
@shared_task(name=TaskNames.SEND_MESSAGE, bind=True, acks_late=True, autoretry_for=(DBAPIError,),
             retry_backoff=2, retry_backoff_max=300, max_retries=8)
def send_message(self, message_id: str) -> str:
    """Send one outbox message; the row, not this task, remembers what happened."""
    outcome = sending.send(gateway, message_id, waited=self.request.retries)
    if outcome.retry_in is not None:
        # Waiting for a busy sender or a provider backoff is not failing: it never uses up the
        # retries kept for an unreadable store (and the row remembers the provider's attempts).
        raise self.retry(countdown=outcome.retry_in.total_seconds(), max_retries=self.request.retries + 1)
    return outcome.status


@shared_task(name=TaskNames.SEND_BATCH, acks_late=True)
def send_batch(batch_id: str) -> int:
    """Enqueue one send task per ready message of a batch (deferred ones wait for the sweeper)."""
    return batches.dispatch(gateway, batch_id)


@shared_task(name=TaskNames.SWEEP_OUTBOX)
def sweep_outbox() -> int:
    """Re-enqueue lost and due messages; settle claims whose worker died."""
    return sending.sweep(gateway).enqueued


@shared_task(name=TaskNames.RECONCILE_STATUSES)
def reconcile_statuses() -> int:
    """Fetch final statuses Twilio never called back with."""
    return sending.reconcile(gateway)


@shared_task(name=TaskNames.CHECKPOINT_LEDGER)
def checkpoint_ledger() -> str | None:
    """Sign every chain's head into the checkpoint log; refuse, loudly, where a chain lost what the
    last checkpoint signed (signing over it would make the tampering the new truth)."""
    checkpoint_log, signer = checkpoints.from_settings(gateway.settings)
    try:
        with gateway.db.snapshot() as session:
            written = checkpoints.take(session, checkpoint_log, signer)
    except checkpoints.Refused as refused:
        for problem in refused.problems:
            log.error("ledger checkpoint refused: %s", problem)
        return None
    log.info("ledger checkpoint of %s: %d chains in %s", written.created_at, written.size, written.path.name)
    return str(written.path)


@shared_task(name=TaskNames.RECONCILE_INBOUND)
def reconcile_inbound() -> int:
    """Apply inbound texts Twilio logged whose webhook never reached us."""
    return inbound_reconcile.reconcile(gateway).applied


@shared_task(name=TaskNames.HEARTBEAT, bind=True)
def heartbeat(self) -> None:
    """Record that this worker takes tasks: a frozen or dead worker stops moving its row."""
    operations.beat(gateway, self.request.hostname or "worker")
    metrics.HEARTBEATS.inc()
