"""Enqueueing by task name through Celery's own `send_task`, so the web process never imports the
worker's code and a Celery upgrade changes the message format in one place: Celery's.

Each task is published straight to the queue its route names (the default exchange, the queue's name
as routing key: what Celery itself does for a direct route) with nothing to declare: the worker
declares its queues when it starts, and kombu's check that an entity was declared costs more than the
rest of a publish. A batch of ids goes out on one producer (one broker connection) from Celery's pool.
What this costs against the hand-built message it replaced is in bench/README.md.
"""

from __future__ import annotations

from celery import Celery

from gateway.queue.app import ROUTES, QueueNames, TaskNames


class Dispatcher:
    """The Dispatcher port over a Celery app: tasks go to the queues its routes name."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def send_messages(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        with self.celery.producer_or_acquire() as producer:
            for message_id in message_ids:
                self._publish(TaskNames.SEND_MESSAGE, [message_id], producer)

    def send(self, task_name: str, *args: str) -> None:
        with self.celery.producer_or_acquire() as producer:
            self._publish(task_name, list(args), producer)

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)

    def _publish(self, task_name: str, args: list, producer) -> None:
        queue = ROUTES.get(task_name, {}).get("queue", QueueNames.SENDS)
        # argsrepr given: ids are short strings, for which Celery's saferepr gives the same at more cost.
        self.celery.send_task(task_name, args=args, producer=producer, exchange="", routing_key=queue,
                              declare=[], argsrepr=repr(args), kwargsrepr="{}")
