"""Thin tasks: take ids, call the core, end in a terminal state. Names live in gateway.queue."""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy.exc import DBAPIError

from gateway import sending
from gateway.consent import expiry
from gateway.context import current
from gateway.queue import TaskNames

log = logging.getLogger(__name__)


@shared_task(name=TaskNames.EXPIRE_PENDING)
def expire_pending() -> int:
    """Expire double opt-in requests past their deadline."""
    with current().db.transaction() as session:
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
    outcome = sending.send(current(), message_id)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in.total_seconds())
    return outcome.status
