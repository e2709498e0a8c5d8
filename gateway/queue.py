"""The Celery app shared by web (which enqueues) and worker (which runs), and the task names.

Tasks carry ids only; the database is the source of truth, so enqueue only after the commit that
made the row, and a sweeper re-enqueues whatever a lost task left behind.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery, Task
from flask import Flask

from gateway.config import Settings


class TaskNames:
    SEND_MESSAGE = "messages.send"
    SEND_BATCH = "messages.send_batch"  # fans a batch out into SEND_MESSAGE tasks, off the request
    SWEEP_OUTBOX = "messages.sweep"
    RECONCILE_STATUSES = "messages.reconcile"
    EXPIRE_PENDING = "consent.expire_pending"
    ANCHOR_LEDGER = "consent.anchor_ledger"


class QueueNames:
    SENDS = "sends"  # outbound messages, confirmations included
    STATUS = "status"  # delivery-status follow-ups
    PERIODIC = "periodic"  # beat: expiry, sweeping, reconciling

    ALL = (SENDS, STATUS, PERIODIC)


ROUTES = {
    TaskNames.SEND_MESSAGE: {"queue": QueueNames.SENDS},
    TaskNames.SEND_BATCH: {"queue": QueueNames.SENDS},
    TaskNames.SWEEP_OUTBOX: {"queue": QueueNames.PERIODIC},
    TaskNames.RECONCILE_STATUSES: {"queue": QueueNames.PERIODIC},
    TaskNames.EXPIRE_PENDING: {"queue": QueueNames.PERIODIC},
}


def broker_options(url: str) -> tuple[str, dict]:
    """Celery broker URL and transport options; `filesystem://PATH` is the embedded broker."""
    if url.startswith("filesystem://"):
        folder = Path(url.removeprefix("filesystem://") or "var/broker")
        queue_dir, processed, control = folder / "queue", folder / "processed", folder / "control"
        for path in (queue_dir, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "control_folder": str(control),
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    if url.startswith(("redis://", "rediss://")):
        # A task not acknowledged within this many seconds is delivered again (a crashed worker).
        return url, {"visibility_timeout": 300}
    return url, {}


def make_celery(app: Flask, settings: Settings) -> Celery:
    """Build the Celery app from the gateway's settings; tasks run inside the Flask app context."""

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    broker, transport = broker_options(settings.celery_broker_url)
    celery = Celery(app.import_name, task_cls=FlaskTask)
    celery.conf.update(
        broker_url=broker,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        result_backend=None,
        task_routes=ROUTES,
        task_default_queue=QueueNames.SENDS,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        beat_schedule={
            "expire-pending": {"task": TaskNames.EXPIRE_PENDING, "schedule": 60.0},
            "sweep-outbox": {"task": TaskNames.SWEEP_OUTBOX, "schedule": 30.0},
            "reconcile-statuses": {"task": TaskNames.RECONCILE_STATUSES, "schedule": 300.0},
        },
    )
    app.extensions["celery"] = celery
    return celery


class Dispatcher:
    """Enqueues tasks by name, so the web process never imports the worker's code."""

    def __init__(self, celery: Celery):
        self.celery = celery

    def send_messages(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        # One producer (one broker connection) for the lot: a batch can enqueue 100,000 ids.
        with self.celery.producer_or_acquire() as producer:
            for message_id in message_ids:
                self.celery.send_task(TaskNames.SEND_MESSAGE, args=[message_id], producer=producer)

    def send(self, task_name: str, *args) -> None:
        self.celery.send_task(task_name, args=list(args))

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
