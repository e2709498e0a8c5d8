"""Enqueueing by task name through Celery's own `send_task`, so the web process never imports the
worker's code and a Celery upgrade changes the message format in one place: Celery's.

A batch of ids goes out on one producer (one broker connection) taken from Celery's pool, rather
than one acquisition per id; what that costs against a hand-built message is in bench/README.md.
"""

from __future__ import annotations

from celery import Celery

from gateway.queue.app import TaskNames


class Dispatcher:
    """The Dispatcher port over a Celery app: tasks go to the queues its routes name."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def send_messages(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        with self.celery.producer_or_acquire() as producer:
            for message_id in message_ids:
                self.celery.send_task(TaskNames.SEND_MESSAGE, args=[message_id], producer=producer)

    def send(self, task_name: str, *args: str) -> None:
        self.celery.send_task(task_name, args=list(args))

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
