"""The Celery app shared by web (which enqueues) and worker (which runs), and the task names.

Tasks carry ids only; the database is the source of truth, so enqueue only after the commit that
made the row, and a sweeper re-enqueues whatever a lost task left behind.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from celery import Celery, Task
from celery.utils.saferepr import saferepr
from flask import Flask
from kombu import Producer, Queue
from kombu.transport import redis as kombu_redis

from gateway.queue import filesystem_broker
from gateway.config import Settings


class TaskNames:
    SEND_MESSAGE = "messages.send"
    SEND_BATCH = "messages.send_batch"  # fans a batch out into SEND_MESSAGE tasks, off the request
    SWEEP_OUTBOX = "messages.sweep"
    RECONCILE_STATUSES = "messages.reconcile"
    EXPIRE_PENDING = "consent.expire_pending"
    CHECKPOINT_LEDGER = "consent.checkpoint_ledger"


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
            "sweep-outbox": {"task": TaskNames.SWEEP_OUTBOX, "schedule": 30.0},
            "reconcile-statuses": {"task": TaskNames.RECONCILE_STATUSES, "schedule": 300.0},
            "checkpoint-ledger": {"task": TaskNames.CHECKPOINT_LEDGER,
                                  "schedule": float(settings.ledger_checkpoint_seconds)},
        },
    )
    app.extensions["celery"] = celery
    return celery


class Dispatcher:
    """Enqueues tasks by name, so the web process never imports the worker's code.

    Celery's `send_task` costs ~0.3 ms a message (routing, building and repr-ing the message,
    acquiring a pooled producer, declaring the queue), as much as a send request's own SQL. The
    parts that never change for a task name (its queue, the protocol-2 headers Celery builds) are
    worked out once here, and each thread keeps one producer on its own broker connection, so a
    publish is the id, a JSON body and the broker write. What goes out is the message `send_task`
    would have sent (celery.app.amqp.as_task_v2), published to the queue by name as Celery does for
    direct routes, with Celery's publish retry policy.
    """

    def __init__(self, celery: Celery):
        self.celery = celery
        self._routes: dict[str, _Route] = {}
        self._local = threading.local()

    def send_messages(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        # One producer (one broker connection) for the lot: a batch can enqueue 100,000 ids.
        producer = self._producer()
        for message_id in message_ids:
            self._publish(producer, TaskNames.SEND_MESSAGE, [message_id])

    def send(self, task_name: str, *args) -> None:
        self._publish(self._producer(), task_name, list(args))

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)

    def _producer(self) -> Producer:
        """This thread's producer; a forked child opens its own connection, never its parent's."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            transport = _KeptClientRedis if self.celery.conf.broker_write_url.startswith("redis://") else None
            connection = self.celery.connection_for_write(transport=transport)
            local.producer, local.pid = Producer(connection, auto_declare=False), os.getpid()
            local.declared = set()
        return local.producer

    def _route(self, task_name: str) -> _Route:
        """Where the task goes and the headers Celery would give it, worked out once per task name."""
        route = self._routes.get(task_name)
        if route is None:
            conf = self.celery.conf
            queue = self.celery.amqp.router.route({}, task_name)["queue"]
            headers, _properties, _body, _event = self.celery.amqp.as_task_v2(
                "", task_name, args=(), ignore_result=conf.task_ignore_result)
            route = self._routes[task_name] = _Route(
                queue, headers, queue.exchange.delivery_mode or conf.task_default_delivery_mode,
                dict(conf.task_publish_retry_policy))
        return route

    def _publish(self, producer: Producer, task_name: str, args: list) -> None:
        route = self._route(task_name)
        task_id = str(uuid.uuid4())
        root_id = parent_id = None
        parent = self.celery.current_worker_task  # enqueued by a task: keep the trail, as send_task does
        if parent is not None:
            root_id, parent_id = parent.request.root_id or parent.request.id, parent.request.id
        argsrepr = repr(args)  # ids: short strings, for which saferepr (~20 µs) gives the same
        if len(argsrepr) > ARGSREPR_MAXSIZE:
            argsrepr = saferepr(args, ARGSREPR_MAXSIZE)
        declared = self._local.declared
        if route.queue.name not in declared:
            producer.maybe_declare(route.queue, retry=True, **route.retry_policy)
            declared.add(route.queue.name)
        producer.publish(
            json.dumps([args, {}, _EMBED]), exchange="", routing_key=route.queue.name,
            content_type="application/json", content_encoding="utf-8",
            headers={**route.headers, "id": task_id, "root_id": root_id or task_id, "parent_id": parent_id,
                     "argsrepr": argsrepr},
            correlation_id=task_id, reply_to=self.celery.thread_oid, delivery_mode=route.delivery_mode,
            retry=True, retry_policy=route.retry_policy,
        )


class _Route(NamedTuple):
    queue: Queue
    headers: dict  # Celery's protocol-2 headers for the task; id, root_id, parent_id, argsrepr per message
    delivery_mode: int
    retry_policy: dict


class _KeptClientChannel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one client for its commands instead of building one per publish.

    Building a redis-py client costs ~0.1 ms (it fills a table of response callbacks), as much as
    the rest of a publish. A client is only a handle on the channel's connection pool and is
    thread-safe; the channel keeps it for its lifetime (a new channel after a reconnect builds anew).
    """

    @cached_property
    def _commands_client(self):
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client=None):
        yield client or self._commands_client


class _KeptClientRedis(kombu_redis.Transport):
    """The transport of the Dispatcher's connection to a Redis broker (the worker consumes as usual)."""

    Channel = _KeptClientChannel


# Protocol 2's third body element: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
ARGSREPR_MAXSIZE = 1024  # Celery's default for the argsrepr header
