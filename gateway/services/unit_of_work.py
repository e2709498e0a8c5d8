"""The unit of work: the only place that hands queued message ids (and other tasks) to the worker.

A message is a row before it is a task. Work that queues messages opens its transaction here and
names what it queued on the `Outgoing` it is given; the ids are published only once the block has
ended without raising, that is after its transaction committed:
- if the work or the commit fails, nothing is published (a task never runs ahead of its row, and a
  row that was never written is never sent);
- if publishing fails after the commit (the broker is down), the rows stay `queued` and the sweeper
  (`sending.sweep`) enqueues them on its next pass: late, never lost. The block's caller carries on
  as if it had been published: a send answered with an error after its row was committed would be
  sent anyway, and the client that retried it would send it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway.services.ports import DispatchFailed

if TYPE_CHECKING:
    from gateway.services.ports import Dispatcher, Gateway

log = logging.getLogger(__name__)


class Outgoing:
    """What a unit of work will enqueue once it has committed, in the Dispatcher's own terms."""

    def __init__(self) -> None:
        self._message_ids: list[str] = []
        self._timed: list[tuple[str, datetime]] = []
        self._tasks: list[tuple[str, tuple[str, ...]]] = []

    def send_messages(self, message_ids: Iterable[str]) -> None:
        self._message_ids.extend(message_ids)

    def send_messages_at(self, timed: Iterable[tuple[str, datetime]]) -> None:
        """Send tasks to run at their times (a paced release's slots)."""
        self._timed.extend(timed)

    def send(self, task_name: str, *args: str) -> None:
        self._tasks.append((task_name, args))

    def publish(self, dispatcher: Dispatcher) -> None:
        """Hand over what was queued; what the broker did not take is left to the sweeper, whose
        rows say when to look (a queued message's `recheck_at`, a batch's queued rows)."""
        try:
            if self._message_ids:
                dispatcher.send_messages(self._message_ids)
            if self._timed:
                dispatcher.send_messages_at(self._timed)
            for task_name, args in self._tasks:
                dispatcher.send(task_name, *args)
        except DispatchFailed as error:
            log.warning("broker did not take %d messages and %d tasks, the sweeper will enqueue them: %s",
                        len(self._message_ids) + len(self._timed), len(self._tasks), error)


@contextmanager
def after_commit(gateway: Gateway) -> Iterator[Outgoing]:
    """A block whose transactions commit inside it (one of the store's own, or several); what it
    queued is published when it ends without raising."""
    outgoing = Outgoing()
    yield outgoing
    # Read now, not when the block began: tests swap the dispatcher for one they can read.
    outgoing.publish(gateway.dispatcher)


@contextmanager
def transaction(gateway: Gateway) -> Iterator[tuple[Session, Outgoing]]:
    """An ORM session committed when the block ends, then what it queued published."""
    with after_commit(gateway) as outgoing, gateway.db.transaction() as session:
        yield session, outgoing


@contextmanager
def statements(gateway: Gateway, *, atomic: bool = False) -> Iterator[tuple[Connection, Outgoing]]:
    """A Core connection (`Database.statements`), then what it queued published."""
    with after_commit(gateway) as outgoing, gateway.db.statements(atomic=atomic) as connection:
        yield connection, outgoing
