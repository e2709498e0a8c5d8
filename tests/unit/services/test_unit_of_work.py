"""The unit of work publishes what it queued only once its transaction has committed."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from gateway.services import unit_of_work
from gateway.services.ports import DispatchFailed


class RecordingDispatcher:
    def __init__(self, events: list):
        self.events = events

    def send_messages(self, message_ids):
        self.events.append(("published", list(message_ids)))

    def send(self, task_name, *args):
        self.events.append(("published", task_name, *args))

    def ping(self, timeout=2.0):
        pass


class Store:
    """A store whose transactions record their commit, or fail it when told to."""

    def __init__(self, events: list, *, commit_fails: bool = False):
        self.events, self.commit_fails = events, commit_fails

    @contextmanager
    def transaction(self):
        yield "session"
        if self.commit_fails:
            raise RuntimeError("commit failed")
        self.events.append(("committed",))

    @contextmanager
    def statements(self, *, atomic=False):
        yield "connection"
        self.events.append(("committed",))


def _gateway(**store_options):
    events: list = []
    return SimpleNamespace(db=Store(events, **store_options), dispatcher=RecordingDispatcher(events)), events


def test_ids_are_published_after_the_commit():
    gateway, events = _gateway()
    with unit_of_work.transaction(gateway) as (session, outgoing):
        assert session == "session"
        outgoing.send_messages(["msg_1", "msg_2"])
        outgoing.send("messages.send_batch", "batch_1")
        assert events == []
    assert events == [("committed",), ("published", ["msg_1", "msg_2"]),
                      ("published", "messages.send_batch", "batch_1")]


def test_nothing_is_published_when_the_work_fails():
    gateway, events = _gateway()
    with pytest.raises(ValueError), unit_of_work.statements(gateway) as (_, outgoing):
        outgoing.send_messages(["msg_1"])
        raise ValueError("refused")
    assert events == []


def test_nothing_is_published_when_the_commit_fails():
    gateway, events = _gateway(commit_fails=True)
    with pytest.raises(RuntimeError, match="commit failed"), unit_of_work.transaction(gateway) as (_, outgoing):
        outgoing.send_messages(["msg_1"])
    assert events == []


def test_a_block_that_queues_nothing_publishes_nothing():
    gateway, events = _gateway()
    with unit_of_work.after_commit(gateway) as outgoing:
        outgoing.send_messages([])
    assert events == []


def test_a_broker_that_does_not_take_the_ids_leaves_them_to_the_sweeper(caplog):
    """The rows are committed and will be sent: the caller must not answer as if they had failed."""
    gateway, events = _gateway()

    def refuse(*_):
        raise DispatchFailed("Connection refused")

    gateway.dispatcher.send_messages = gateway.dispatcher.send = refuse
    with unit_of_work.transaction(gateway) as (_, outgoing):
        outgoing.send_messages(["msg_1"])
        outgoing.send("messages.send_batch", "batch_1")
    assert events == [("committed",)]
    assert "the sweeper will enqueue them" in caplog.text
