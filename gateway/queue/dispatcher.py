"""Enqueueing by task name, so the web process never imports the worker's code.

Celery's public `send_task` costs several times the CPU of what is below (bench/README.md,
"Enqueue cost": it routes, builds and repr-s the message, acquires a pooled producer and checks the
queue was declared, on every call), and the send API and the join keyword's confirmation enqueue on
every request. So the parts that never change for a task name (its queue, the protocol-2 headers
Celery builds) are worked out once, through Celery's own `router.route` and `amqp.as_task_v2`, and
each thread keeps one producer on its own broker connection: a publish is then the id, a JSON body
and the broker write, published to the queue by name on the default exchange as Celery does for a
direct route, with Celery's publish retry policy.

Written against Celery 5.7.0 and kombu 5.7.0 (task protocol 2). tests/unit/queue/test_dispatcher.py
keeps it honest: the message published here equals, header by header, the one `send_task` builds
with the installed Celery, so an upgrade that changes the format fails that test, not production.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from typing import NamedTuple

from celery import Celery
from celery.utils.saferepr import saferepr
from kombu import Producer, Queue
from kombu.exceptions import OperationalError

from gateway.queue.app import TaskNames
from gateway.services.ports import DispatchFailed

ARGSREPR_MAXSIZE = 1024  # Celery's default for the argsrepr header
# Protocol 2's third body element: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class _Route(NamedTuple):
    queue: Queue
    headers: dict  # Celery's protocol-2 headers for the task; id, root_id, parent_id, argsrepr per message
    delivery_mode: int
    retry_policy: dict


class Dispatcher:
    """The Dispatcher port over a Celery app: tasks go to the queues its routes name."""

    def __init__(self, celery: Celery):
        self.celery = celery
        self._routes: dict[str, _Route] = {}
        self._local = threading.local()

    def send_messages(self, message_ids: list[str]) -> None:
        if not message_ids:
            return
        # One producer (one broker connection) for the lot: a batch can enqueue 100,000 ids.
        producer = self._producer()
        with self._broker_faults_as_dispatch_failed():
            for message_id in message_ids:
                self._publish(producer, TaskNames.SEND_MESSAGE, [message_id])

    def send_messages_at(self, timed: Sequence[tuple[str, datetime]]) -> None:
        if not timed:
            return
        producer = self._producer()
        with self._broker_faults_as_dispatch_failed():
            for message_id, eta in timed:
                self._publish(producer, TaskNames.SEND_MESSAGE, [message_id], eta=eta)

    def send(self, task_name: str, *args: str) -> None:
        with self._broker_faults_as_dispatch_failed():
            self._publish(self._producer(), task_name, list(args))

    def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the broker accepts a connection."""
        with self.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)

    @contextmanager
    def _broker_faults_as_dispatch_failed(self) -> Iterator[None]:
        """A broker that refused or lost the connection, after the publish retries: the thread's producer
        is dropped, so the next publish opens a new connection. Once its connection was lost, kombu's
        Redis channel keeps a connection of None and fails every publish after with AttributeError,
        the broker back or not: kept, it answered every later send 500 until the process restarted
        (tests/e2e/test_faults.py)."""
        try:
            yield
        except (OperationalError, OSError, AttributeError) as error:
            producer, self._local.pid = getattr(self._local, "producer", None), None
            if producer is not None:
                with suppress(Exception):  # a connection already gone has nothing to close
                    producer.connection.close()
            raise DispatchFailed(f"{type(error).__name__}: {error}") from error

    def _producer(self) -> Producer:
        """This thread's producer; a forked child opens its own connection, never its parent's."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.producer = Producer(self.celery.connection_for_write(), auto_declare=False)
            local.pid, local.declared = os.getpid(), set()
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

    def _publish(self, producer: Producer, task_name: str, args: list, eta: datetime | None = None) -> None:
        route = self._route(task_name)
        task_id = str(uuid.uuid4())
        root_id = parent_id = None
        parent = self.celery.current_worker_task  # enqueued by a task: keep the trail, as send_task does
        if parent is not None:
            root_id, parent_id = parent.request.root_id or parent.request.id, parent.request.id
        argsrepr = repr(args)  # ids: short strings, for which saferepr gives the same at more cost
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
                     "argsrepr": argsrepr, **({"eta": eta.isoformat()} if eta is not None else {})},
            correlation_id=task_id, reply_to=self.celery.thread_oid, delivery_mode=route.delivery_mode,
            retry=True, retry_policy=route.retry_policy,
        )
