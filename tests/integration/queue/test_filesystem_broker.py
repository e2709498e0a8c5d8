"""The embedded broker writes each message whole before a worker can see it."""

import queue as stdlib_queue
import uuid
from dataclasses import replace

import pytest
from kombu import Connection

from gateway import bootstrap
from gateway.queue import filesystem_broker
from gateway.queue.app import broker_options


def fresh_queue(connection):
    # A new name per test: kombu keeps what was declared in class-level state, across connections.
    name = f"sends-{uuid.uuid4().hex[:8]}"
    return name, connection.SimpleQueue(name)


@pytest.fixture
def broker(tmp_path):
    url, options = broker_options(f"filesystem://{tmp_path}")
    with Connection(url, transport_options=options) as connection:
        yield connection, tmp_path / "queue"


def test_the_embedded_broker_is_the_atomic_one(broker):
    connection, _ = broker
    assert isinstance(connection.transport, filesystem_broker.Transport)


def test_a_message_is_renamed_into_place_whole(broker):
    connection, folder = broker
    name, messages = fresh_queue(connection)
    messages.put({"id": "msg_1", "body": "x" * 10_000})
    [written] = list(folder.iterdir())
    assert written.name.endswith(f".{name}.msg")
    assert messages.get(timeout=1).payload == {"id": "msg_1", "body": "x" * 10_000}


def test_a_message_still_being_written_is_not_picked_up(broker):
    connection, folder = broker
    _, messages = fresh_queue(connection)
    # What a reader finds mid-write: the partial file, empty so far. kombu's own transport would hand
    # such a file (named as a message) to the worker, which fails to decode it and stops.
    (folder / "writing-0.partial").write_bytes(b"")
    with pytest.raises(stdlib_queue.Empty):
        messages.get(timeout=0.3)
    messages.put({"id": "msg_2"})
    assert messages.get(timeout=1).payload == {"id": "msg_2"}


def test_the_app_uses_it_even_when_the_environment_names_the_broker(monkeypatch, tmp_path, settings):
    # Celery reads CELERY_BROKER_URL from the environment ahead of its configuration; the web app
    # and the worker must still publish and consume through the atomic transport.
    url = f"filesystem://{tmp_path}"
    monkeypatch.setenv("CELERY_BROKER_URL", url)
    celery = bootstrap.build(replace(settings, celery_broker_url=url)).dispatcher.celery
    for connection in (celery.connection_for_write(), celery.connection_for_read()):
        with connection:
            assert isinstance(connection.transport, filesystem_broker.Transport)
