"""Thin tasks: take ids, call the core, end in a terminal state. Names live in gateway.queue."""

from __future__ import annotations

import logging

from celery import shared_task

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
