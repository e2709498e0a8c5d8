"""Recovery of outbound messages whose task died, with real processes: a worker running beat with
short thresholds (seconds instead of the defaults' tens of seconds) finds them and sends each once.

A task lost before any claim: the message is queued and nothing in the broker will take it. A worker
SIGKILLed while its provider call is under way: the sandbox holds the call (after recording the
message, or before, and then refuses it) until the worker is dead, and the sweeper, once the claim's
lease is over, asks the provider before it sends again.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.twilio.sandbox import api as sandbox_api
from gateway.twilio.sandbox.messages import TwilioError
from tests.conftest import WorkerProcess, _free_port, wait_for
from tests.e2e.test_outbound import at_provider, opted_in, restart
from tests.sandbox_support import message_row, quick_sandbox  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e

# What the recovering worker runs with: a lost task after 3 s, a claim's lease of 20 s (the least
# allowed), a sweep every second.
SHORT = {"OUTBOX_SWEEP_SECONDS": "1", "OUTBOX_LOST_TASK_SECONDS": "3", "OUTBOX_CLAIM_LEASE_SECONDS": "20"}


@pytest.fixture
def recovering_worker(app, live_server, test_env, tmp_path):
    # Its own metrics port: the session's worker may hold the session's.
    worker = WorkerProcess({**test_env, **SHORT, "WORKER_METRICS_PORT": str(_free_port())},
                           tmp_path / "recovering-worker.log", "--beat")
    yield worker
    worker.stop()


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send', 'read')}"}


def recovered(worker: WorkerProcess, how: str) -> float:
    """The worker's own /metrics: the count of recoveries `how`."""
    exposition = requests.get(f"http://127.0.0.1:{worker.env['WORKER_METRICS_PORT']}/metrics", timeout=5).text
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "smsgate_messages_recovered_total" and sample.labels == {"how": how}:
                return sample.value
    return 0.0


def test_a_message_whose_task_was_lost_is_sent_within_a_minute(client, headers, db, captured_queue,
                                                                recovering_worker, quick_sandbox):
    phone = "+14155550181"
    opted_in(db, "orders", phone)
    accepted_at = time.monotonic()
    response = client.post("/v1/messages", headers=headers,
                           json={"to": phone, "program": "orders", "body": "Your order shipped"})
    assert response.status_code == 202
    # Its task went to a queue no worker reads (the test's), as if the broker had lost it.
    assert captured_queue.ids() == [response.json["id"]]
    recovering_worker.start()
    wait_for(lambda: message_row(db, response.json["id"]).status in ("sent", "delivered"), timeout=60)
    took = time.monotonic() - accepted_at
    assert took < 60
    print(f"sent {took:.1f} s after acceptance")
    assert [m.body for m in at_provider(db, to=phone)] == ["Your order shipped"]
    # The sweep logs once its whole pass is done, which on a loaded machine can be after the send it
    # enqueued has gone out: wait for the line rather than expect it already.
    wait_for(lambda: b"1 lost tasks" in recovering_worker.log_path.read_bytes(), timeout=20,
             what="the sweep's log line")
    # The worker's count, on the worker's own /metrics.
    assert recovered(recovering_worker, "lost_task") == 1


class HeldCall:
    """Holds the sandbox's answer to one send until released, so a worker can be killed mid-call."""

    def __init__(self):
        self.arrived, self.released = threading.Event(), threading.Event()

    def hold(self) -> None:
        self.arrived.set()
        self.released.wait(60)


@pytest.mark.parametrize("provider_had_it", [True, False], ids=["provider-had-it", "provider-never-had-it"])
def test_a_worker_killed_mid_send_leaves_a_message_sent_exactly_once(
        provider_had_it, app, worker_process, recovering_worker, client, headers, db, monkeypatch, quick_sandbox):
    stack = contextlib.ExitStack()
    phone = "+14155550182" if provider_had_it else "+14155550183"
    opted_in(db, "orders", phone)
    held = HeldCall()
    # No status callback before the sweep: one would find the message by the id on its URL and record
    # it as sent itself (which is right, but not what this test watches).
    if provider_had_it:
        stack.enter_context(app.extensions["sandbox"].courier.paused())
        # The sandbox has recorded the message and committed it; the answer never reaches the worker.
        courier = app.extensions["sandbox"].courier
        wake = courier.wake
        monkeypatch.setattr(courier, "wake", lambda: (held.hold(), wake()))
    else:
        # The request arrived but the sandbox has not taken it when the worker dies: it never will.
        authenticate = sandbox_api._authenticate

        def hold_then_refuse(account_sid):
            authenticate(account_sid)
            if sandbox_api.request.method == "POST" and not held.arrived.is_set():
                held.hold()
                raise TwilioError(20500)

        monkeypatch.setattr(sandbox_api, "_authenticate", hold_then_refuse)
    try:
        response = client.post("/v1/messages", headers=headers,
                               json={"to": phone, "program": "orders", "body": "Your order shipped"})
        assert response.status_code == 202
        message_id = response.json["id"]
        assert held.arrived.wait(30), "no worker called the provider"
        assert message_row(db, message_id).status == "sending"
        worker_process.kill()  # SIGKILL while its provider call is under way
        killed_at = time.monotonic()
        held.released.set()
        recovering_worker.start()
        wait_for(lambda: message_row(db, message_id).status in ("sent", "delivered"), timeout=60)
        took = time.monotonic() - killed_at
        assert took < 60
    finally:
        held.released.set()
        stack.close()
        restart(worker_process)
    found = message_row(db, message_id)
    assert len(at_provider(db, to=phone)) == 1  # one receipt at the provider
    [receipt] = at_provider(db, to=phone)
    assert found.provider_sid == receipt.sid
    steps = [(e.status, e.reason) for e in found.events]
    print(f"recovered {took:.1f} s after the kill")
    if provider_had_it:
        assert ("sent", "recovered") in steps and steps.count(("sending", None)) == 1
    else:
        assert ("queued", "claim_expired") in steps and steps.count(("sending", None)) == 2
