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

import random
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.bootstrap import build
from tests.conftest import WorkerProcess, wait_for
from tests.e2e.test_outbound import opted_in, own_program
from tests.faults_support import (
    Broker,
    Delivery,
    WebProcess,
    count_sends,
    late_sends,
    opted_out,
    post_stop,
    receipts,
    statuses,
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


def test_the_broker_killed_while_sends_are_accepted_loses_no_accepted_message(
        postgres_only, processes, broker, db, settings, make_key, example_programs, live_server, quick_sandbox):
    sender = "+18885550172"
    own_program(db, example_programs, "chaos-broker", sender, mps=20)
    numbers = [f"+1415558{n:04d}" for n in range(40)]
    opted_in(db, "chaos-broker", *numbers)
    web, key = processes("web"), make_key("send", "read")
    processes("worker")
    accepted, refused = {}, Counter()
    for n, number in enumerate(numbers):
        if n == 10:
            broker.kill()  # every task it held is gone with it; the rows are not
            killed_at = time.monotonic()
        if n == 25:
            broker.start()  # the same port, empty
        body = f"Parcel {n} is on its way"
        response = web.send(key, number, "chaos-broker", body)
        if response.status_code == 202:
            accepted[response.json()["id"]] = body
        else:
            refused[response.status_code] += 1
        time.sleep(0.05)
    # What the dead broker held stays queued: the sweep (beat's, on a clock past its thresholds) enqueues
    # it again once the worker has taken what the new broker has and holds no claim.
    wait_for(lambda: quiet(db, broker, accepted), timeout=30)
    sweep_as_if_late(build(replace(settings, celery_broker_url=broker.url)), db, accepted)
    wait_settled(db, accepted, timeout=60)
    took = time.monotonic() - killed_at
    counts = count_sends(db, sender, accepted)
    print(f"\nbroker down for 15 of 40 sends: answered other than 202 {dict(refused)}; {counts.line()}; "
          f"all sent {took:.1f} s after the kill")
    # Each send was stored before its task was handed over: it is accepted whether or not the broker
    # took the task (answered 500 before, and sent all the same: a client's retry would send it twice).
    assert not refused
    assert (counts.at_provider, counts.sent_twice, counts.lost) == (len(accepted), 0, 0)


def quiet(db, broker, ids) -> bool:
    """No claim among these messages and no task waiting in the broker: what is queued now, stays."""
    import redis

    return not statuses(db, ids).get("sending") and not redis.Redis.from_url(broker.url).llen("sends")


def test_two_web_and_two_worker_processes_send_nothing_after_an_answered_stop(
        postgres_only, processes, db, make_key, example_programs, live_server, quick_sandbox):
    sender = "+18885550173"
    own_program(db, example_programs, "chaos-shared", sender, mps=50)
    numbers = [f"+1415559{n:04d}" for n in range(30)]
    opted_in(db, "chaos-shared", *numbers)
    webs, key = [processes("web"), processes("web")], make_key("send", "read")
    processes("worker"), processes("worker")
    accepted, answered, refused, lock = {}, {}, Counter(), threading.Lock()

    def send(web, number, body):
        response = web.send(key, number, "chaos-shared", body)
        with lock:
            if response.status_code == 202:
                accepted[response.json()["id"]] = body
            else:
                refused[response.status_code] += 1

    def talk(n: int, number: str) -> None:
        """Sends through both web processes before and after the number's STOP through one of them."""
        chance = random.Random(n)
        for k in range(3):
            send(webs[(n + k) % 2], number, f"Note {n}-{k}")
            time.sleep(chance.uniform(0, 0.15))
        response = webs[n % 2].stop_text(number, f"SM{n:032x}", sender)
        assert response.status_code == 200, response.text
        with lock:
            answered[number] = datetime.now(UTC)
        for k in range(3, 5):
            send(webs[(n + k) % 2], number, f"Note {n}-{k}")
            time.sleep(chance.uniform(0, 0.1))

    threads = [threading.Thread(target=talk, args=(n, number)) for n, number in enumerate(numbers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_settled(db, accepted, timeout=60)
    took = time.monotonic() - started
    counts, late = count_sends(db, sender, accepted), late_sends(db, sender, answered, accepted)
    print(f"\n{len(numbers)} numbers, 5 sends and a STOP each through two web processes, two workers: "
          f"refused at the API {dict(refused)}; {counts.line()}; {late.line()}; "
          f"opt-outs {len(opted_out(db, numbers))}/{len(answered)}; {took:.1f} s")
    assert late.claimed_after_the_answer == 0
    assert opted_out(db, numbers) == set(answered)
    assert (counts.sent_twice, counts.lost) == (0, 0)
