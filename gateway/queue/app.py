"""The Celery app shared by web (which enqueues, gateway/queue/dispatcher.py) and worker (which runs),
and the task names.

Tasks carry ids only; the database is the source of truth, so enqueue only after the commit that
made the row, and a sweeper re-enqueues whatever a lost task left behind.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from gateway.config import Settings
from gateway.queue import filesystem_broker


class TaskNames:
    SEND_MESSAGE = "messages.send"
    SEND_BATCH = "messages.send_batch"  # fans a batch out into SEND_MESSAGE tasks, off the request
    SWEEP_OUTBOX = "messages.sweep"
    RECONCILE_STATUSES = "messages.reconcile"
    EXPIRE_PENDING = "consent.expire_pending"
    CHECKPOINT_LEDGER = "consent.checkpoint_ledger"
    RECONCILE_INBOUND = "inbound.reconcile"
    HEARTBEAT = "worker.heartbeat"
    RUN_IMPORT = "consent.run_import"  # a bulk import uploaded over the API
    READ_DEACTIVATIONS = "consent.read_deactivations"


class QueueNames:
    SENDS = "sends"  # outbound messages, confirmations included
    STATUS = "status"  # delivery-status follow-ups
    PERIODIC = "periodic"  # beat: expiry, sweeping, reconciling, ledger checkpoints

    ALL = (SENDS, STATUS, PERIODIC)


ROUTES = {
    TaskNames.SEND_MESSAGE: {"queue": QueueNames.SENDS},
    TaskNames.SEND_BATCH: {"queue": QueueNames.SENDS},
    TaskNames.SWEEP_OUTBOX: {"queue": QueueNames.PERIODIC},
    TaskNames.RECONCILE_STATUSES: {"queue": QueueNames.PERIODIC},
    TaskNames.EXPIRE_PENDING: {"queue": QueueNames.PERIODIC},
    TaskNames.CHECKPOINT_LEDGER: {"queue": QueueNames.PERIODIC},
    TaskNames.RUN_IMPORT: {"queue": QueueNames.PERIODIC},
    TaskNames.RECONCILE_INBOUND: {"queue": QueueNames.PERIODIC},
    TaskNames.HEARTBEAT: {"queue": QueueNames.PERIODIC},
    TaskNames.READ_DEACTIVATIONS: {"queue": QueueNames.PERIODIC},
}


def broker_options(url: str) -> tuple[str, dict]:
    """Celery broker URL and transport options; `filesystem://PATH` is the embedded broker."""
    if url.startswith("filesystem://"):
        folder = Path(url.removeprefix("filesystem://") or "var/broker")
        queue_dir, processed, control = folder / "queue", folder / "processed", folder / "control"
        for path in (queue_dir, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        # Our subclass of kombu's transport: it writes each message whole before a worker can see it.
        return f"{filesystem_broker.SCHEME}://", {
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


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app from the gateway's settings (tasks find the Gateway through bootstrap)."""
    broker, transport = broker_options(settings.celery_broker_url)
    celery = Celery("gateway")
    celery.conf.update(
        broker_url=broker,
        # Celery lets the environment variable CELERY_BROKER_URL (our setting's name too) win over
        # broker_url, which would hand a filesystem:// URL to kombu's own transport instead of ours.
        # The read and write URLs come before it: set them, so what `broker_options` chose is used.
        broker_read_url=broker,
        broker_write_url=broker,
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
            "sweep-outbox": {"task": TaskNames.SWEEP_OUTBOX, "schedule": float(settings.outbox_sweep_seconds)},
            "reconcile-statuses": {"task": TaskNames.RECONCILE_STATUSES, "schedule": 300.0},
            "checkpoint-ledger": {"task": TaskNames.CHECKPOINT_LEDGER,
                                  "schedule": float(settings.ledger_checkpoint_seconds)},
            # A heartbeat that waited longer than its interval says nothing about now: dropped, not run.
            "heartbeat": {"task": TaskNames.HEARTBEAT, "schedule": float(settings.worker_heartbeat_seconds),
                          "options": {"expires": float(settings.worker_heartbeat_seconds)}},
        } | ({"reconcile-inbound": {"task": TaskNames.RECONCILE_INBOUND,
                                    "schedule": float(settings.inbound_reconcile_seconds)}}
             if settings.inbound_reconcile_seconds else {})
          | ({"read-deactivations": {"task": TaskNames.READ_DEACTIVATIONS,
                                     "schedule": float(settings.deactivations_check_seconds)}}
             if settings.deactivations_check_seconds else {}),
    )
    return celery
