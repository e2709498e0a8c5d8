"""Faults with real processes, counted afterwards: every opt-out that was answered 200 is in the store,
nothing reaches the provider for a number after its STOP was answered, no message is sent twice, no
accepted (202) message is lost.

The processes are those of a deployment: gunicorn as the Procfile runs it (two workers), Celery
workers, and a Redis broker of the test's own on a free port (started and killed at will). They share
the session's store and its sandbox, which plays Twilio: its message log is what reached the provider.
PostgreSQL only: SQLite is a file one host's processes share, with no server to lose or to share
between hosts, and the journal and the outbox are covered on it by the integration tests.
bench/chaos.py runs the same scenarios larger and prints the counts and recovery times.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from gateway.bootstrap import build
from tests.conftest import WorkerProcess, wait_for
from tests.e2e.test_outbound import opted_in, own_program
from tests.faults_support import (
    Broker,
    Delivery,
    WebProcess,
    count_sends,
    opted_out,
    post_stop,
    receipts,
    sweep_as_if_late,
    wait_settled,
)
from tests.sandbox_support import quick_sandbox  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
DEALS_SENDER = "+15005550006"  # deals and alerts


@pytest.fixture
def postgres_only(settings):
    if settings.is_sqlite:
        pytest.skip("SQLite has no server to share or lose: one host's processes share a file "
                    "(the integration tests cover the journal and the outbox on it)")


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path / "redis.log")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def processes(test_env, broker, tmp_path):
    """Start web and worker processes on the test's broker; all stopped at the end, whatever happened."""
    started: list[WebProcess | WorkerProcess] = []
    environment = {**test_env, "CELERY_BROKER_URL": broker.url, "VAR_DIR": str(tmp_path / "var"),
                   "INBOUND_JOURNAL_REPLAY_SECONDS": "1"}

    def start(kind: str) -> WebProcess | WorkerProcess:
        name = f"{kind}-{len(started)}"
        if kind == "web":
            process = WebProcess(environment, tmp_path / f"{name}.log")
        else:
            # The worker calls the sandbox where the session serves it, and its callbacks come back there.
            process = WorkerProcess(environment | {"PUBLIC_BASE_URL": test_env["PUBLIC_BASE_URL"]},
                                    tmp_path / f"{name}.log")
        process.start()
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


def test_the_web_process_killed_under_a_flood_of_stops_loses_no_answered_opt_out(
        postgres_only, processes, db, live_server):
    numbers = [f"+1415556{n:04d}" for n in range(120)]
    opted_in(db, "deals", *numbers)
    web = processes("web")
    delivery, lock, pending = Delivery(), threading.Lock(), list(enumerate(numbers))
    give_up_at = time.monotonic() + 60

    def flood() -> None:
        while True:
            with lock:
                if not pending:
                    return
                n, number = pending.pop()
            post_stop(web, number, f"SM{n:032x}", DEALS_SENDER, delivery, lock, give_up_at)

    started = time.monotonic()
    threads = [threading.Thread(target=flood) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(delivery.answered) < 30:
        time.sleep(0.01)
    web.kill()  # SIGKILL, master and workers, with STOPs in flight
    killed_with = len(delivery.answered)
    restarted_in = web.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    answered = set(delivery.answered)
    assert answered == set(numbers), f"not answered: {set(numbers) - answered}, {delivery}"

    def every_answered_one_stored():
        return answered <= opted_out(db, numbers)

    # A STOP journaled but not replayed before the kill is replayed by the restarted process.
    try:
        wait_for_store = time.monotonic()
        wait_for(every_answered_one_stored, timeout=15)
    finally:
        lost = answered - opted_out(db, numbers)
    print(f"\n{len(numbers)} STOPs: {killed_with} answered before the kill, answered 200 {len(answered)}, "
          f"refused while down {delivery.refused}, unanswered (posted again) {len(delivery.unanswered)}, "
          f"lost {len(lost)}; restarted in {restarted_in:.1f} s, all stored "
          f"{time.monotonic() - wait_for_store:.1f} s after the last answer; flood {took:.1f} s")
    assert not lost


def test_a_worker_killed_mid_batch_sends_every_message_exactly_once(
        postgres_only, processes, broker, db, settings, make_key, example_programs, live_server, quick_sandbox):
    sender = "+18885550171"
    own_program(db, example_programs, "chaos-batch", sender, mps=10)
    numbers = [f"+1415557{n:04d}" for n in range(40)]
    opted_in(db, "chaos-batch", *numbers)
    web, key = processes("web"), make_key("send", "read")
    worker = processes("worker")
    accepted = {}
    for n, number in enumerate(numbers):
        response = web.send(key, number, "chaos-batch", f"Parcel {n} is on its way")
        assert response.status_code == 202, response.text
        accepted[response.json()["id"]] = f"Parcel {n} is on its way"
    wait_for(lambda: len(receipts(db, sender)) >= 8, timeout=30)
    worker.kill()  # SIGKILL: its claims, the tasks it had taken and its unacknowledged work die with it
    killed_at, at_kill = time.monotonic(), len(receipts(db, sender))
    sweep_as_if_late(build(replace(settings, celery_broker_url=broker.url)), db, accepted)
    processes("worker")
    wait_settled(db, accepted, timeout=60)
    took = time.monotonic() - killed_at
    counts = count_sends(db, sender, accepted)
    print(f"\nworker killed with {at_kill}/{len(accepted)} at the provider; {counts.line()}; "
          f"all sent {took:.1f} s after the kill")
    assert (counts.at_provider, counts.sent_twice, counts.lost) == (len(accepted), 0, 0)
