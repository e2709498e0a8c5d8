"""Thin tasks: take ids, call the core, end in a terminal state. Names live in gateway.queue.app.

The Gateway is the worker's own, built by bootstrap when the `worker` package is imported.
"""

from __future__ import annotations

import logging
import os

from celery import shared_task
from sqlalchemy.exc import DBAPIError

from gateway import metrics
from gateway.queue.app import TaskNames
from gateway.services import batches, deactivations, expiry, imports, inbound_reconcile, operations, sending
from gateway.store import checkpoints
from worker import gateway

log = logging.getLogger(__name__)
# Processes that screen an uploaded import's rows beside the worker's own (its threads keep sending).
IMPORT_JOBS = max(1, (os.cpu_count() or 1) - 1)


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


# A task lost with its worker is delivered again (acks_late) and the import goes on after its last
# committed chunk; a store that blinks mid-way is retried the same way.
@shared_task(name=TaskNames.RUN_IMPORT, acks_late=True, autoretry_for=(DBAPIError,), retry_backoff=5,
             retry_backoff_max=300, max_retries=8)
def run_import(import_id: str) -> int:
    """Run a bulk import uploaded over the API; returns the last line done."""
    try:
        outcome = imports.run_uploaded(gateway.db, import_id, region=gateway.settings.default_region,
                                       suppression_key=gateway.settings.suppression_key, rules=gateway.quiet_hours,
                                       jobs=IMPORT_JOBS)
    except (ValueError, imports.ImportMoved) as error:  # the file refused whole, or another run has it
        log.warning("import %s not run: %s", import_id, error)
        return 0
    log.info("import %s done: %d imported, %d refused", import_id, outcome.applied, outcome.refused)
    return outcome.line_done


@shared_task(name=TaskNames.RECONCILE_INBOUND)
def reconcile_inbound() -> int:
    """Apply inbound texts Twilio logged whose webhook never reached us."""
    return inbound_reconcile.reconcile(gateway).applied


@shared_task(name=TaskNames.HEARTBEAT, bind=True)
def heartbeat(self) -> None:
    """Record that this worker takes tasks: a frozen or dead worker stops moving its row."""
    operations.beat(gateway, self.request.hostname or "worker")
    metrics.HEARTBEATS.inc()


@shared_task(name=TaskNames.READ_DEACTIVATIONS)
def read_deactivations() -> int:
    """Read the carriers' Deactivations list for every recent day not read through yet; end the
    consents of numbers given up. Returns how many numbers' consents ended."""
    return sum(run.ended for run in deactivations.run_due(gateway))
