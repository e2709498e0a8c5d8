"""A queue the tests can read: what the web side or the sweeper enqueued, kept away from the real worker.

The session's worker process (started by the first end-to-end test) consumes the real broker; core
tests that assert on a queued row would race it. These tests swap in a Dispatcher over kombu's
in-memory transport for their duration and read back which tasks were sent with which ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from celery import Celery
from kombu import Message

from gateway.queue.app import ROUTES, QueueNames
from gateway.queue.dispatcher import Dispatcher
from gateway.store import programs


class CapturedQueue:
    def __init__(self, celery: Celery):
        self.celery = celery

    def messages(self) -> list[tuple[str, Message]]:
        """(queue name, message) of everything enqueued since the last read, oldest first per queue."""
        taken = []
        with self.celery.connection_for_read() as connection:
            for name in QueueNames.ALL:
                queue = connection.SimpleQueue(name)
                while True:
                    try:
                        message = queue.get(block=False)
                    except queue.Empty:
                        break
                    taken.append((name, message))
                    message.ack()
                queue.close()
        return taken

    def take(self) -> list[tuple[str, list]]:
        """(task name, args) of everything enqueued since the last read, oldest first."""
        return [(message.headers["task"], list(message.decode()[0])) for _, message in self.messages()]

    def ids(self, task: str = "messages.send") -> list[str]:
        return [args[0] for name, args in self.take() if name == task]


@pytest.fixture
def captured_queue(gateway) -> Iterator[CapturedQueue]:
    celery = Celery("captured", broker="memory://", set_as_current=False)
    celery.conf.update(task_routes=ROUTES, task_default_queue=QueueNames.SENDS, task_serializer="json")
    real = gateway.dispatcher
    gateway.dispatcher = Dispatcher(celery)
    captured = CapturedQueue(celery)
    captured.take()  # start empty
    try:
        yield captured
    finally:
        gateway.dispatcher = real


@pytest.fixture(autouse=True)
def fresh_limits(gateway):
    """Rate limits start empty (the session's worker shares the limiter). Autouse in every module that
    imports it. (A sender's rate comes from the programs cache, which `programs.store` refreshes.)"""
    gateway.limiter.reset()
    yield


@pytest.fixture
def weekly(db, example_programs):
    """A marketing program that promises "Up to 2 msgs/week" (its cap is what the tests count against)."""
    spec = replace(next(p for p in example_programs if p.slug == "deals"), slug="weekly", join_keywords=("WEEKLY",),
                   max_messages=2, per="week", frequency="Up to 2 msgs/week")
    with db.transaction() as session:
        programs.store(session, [spec])
    return spec
