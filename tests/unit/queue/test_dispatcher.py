"""The Dispatcher publishes what Celery's send_task does, to the queue the task is routed to."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Celery

from gateway.queue.app import ROUTES, QueueNames, TaskNames
from gateway.queue.dispatcher import Dispatcher
from tests.outbound_support import CapturedQueue

# Per message (or per thread) in both; everything else must match send_task's message.
_PER_MESSAGE = {"id", "root_id", "ignore_result"}


def _celery() -> Celery:
    celery = Celery("dispatch-test", broker="memory://", set_as_current=False)
    celery.conf.update(task_routes=ROUTES, task_default_queue=QueueNames.SENDS, task_serializer="json",
                       task_ignore_result=True)
    return celery


def _drain(celery: Celery) -> list:
    return [(name, message.headers, message.properties, message.decode())
            for name, message in CapturedQueue(celery).messages()]


def test_messages_match_send_task():
    celery = _celery()
    _drain(celery)
    Dispatcher(celery).send_messages(["msg_" + "1" * 32])
    celery.send_task(TaskNames.SEND_MESSAGE, args=["msg_" + "1" * 32])
    (queue, ours, our_properties, our_body), (theirs_queue, theirs, their_properties, their_body) = _drain(celery)
    assert queue == theirs_queue == QueueNames.SENDS
    assert our_body == their_body
    assert {k: v for k, v in ours.items() if k not in _PER_MESSAGE} == {
        k: v for k, v in theirs.items() if k not in _PER_MESSAGE}
    assert ours["root_id"] == ours["id"] == our_properties["correlation_id"]
    assert our_properties["delivery_mode"] == their_properties["delivery_mode"]


def test_each_task_goes_to_its_queue_with_its_arguments():
    celery = _celery()
    _drain(celery)
    dispatcher = Dispatcher(celery)
    dispatcher.send_messages(["msg_a", "msg_b"])
    dispatcher.send(TaskNames.EXPIRE_PENDING)
    dispatcher.send(TaskNames.SEND_BATCH, "batch_1")
    drained = _drain(celery)
    sent = [(queue, headers["task"], body[0]) for queue, headers, _, body in drained]
    assert sorted(sent) == sorted([
        (QueueNames.SENDS, TaskNames.SEND_MESSAGE, ["msg_a"]),
        (QueueNames.SENDS, TaskNames.SEND_MESSAGE, ["msg_b"]),
        (QueueNames.SENDS, TaskNames.SEND_BATCH, ["batch_1"]),
        (QueueNames.PERIODIC, TaskNames.EXPIRE_PENDING, []),
    ])
    assert len({headers["id"] for _, headers, _, _ in drained}) == len(drained)


def test_a_message_for_later_matches_send_task_with_its_eta():
    celery = _celery()
    _drain(celery)
    eta = datetime(2026, 12, 7, 13, 0, 0, 333_334, tzinfo=UTC)
    Dispatcher(celery).send_messages_at([("msg_" + "2" * 32, eta)])
    celery.send_task(TaskNames.SEND_MESSAGE, args=["msg_" + "2" * 32], eta=eta)
    (_, ours, _, our_body), (_, theirs, _, their_body) = _drain(celery)
    assert our_body == their_body
    assert {k: v for k, v in ours.items() if k not in _PER_MESSAGE} == {
        k: v for k, v in theirs.items() if k not in _PER_MESSAGE}
    assert datetime.fromisoformat(ours["eta"]) == eta
