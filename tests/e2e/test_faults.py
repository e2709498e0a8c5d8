"""Faults with real processes, counted afterwards: every opt-out that was answered 200 is in the store,
nothing reaches the provider for a number after its STOP was answered, no message is sent twice, no
accepted (202) message is lost.

The processes are those of a deployment: gunicorn as the Procfile runs it (two workers), Celery
workers, and a Redis broker of the test's own on a free port (started and killed at will). They share
the session's store and its sandbox, which plays Twilio: its message log is what reached the provider.
None of these faults is the store's, so they run on SQLite too (one host's processes sharing the
file); the store refusing connections is tests/e2e/test_inbound_journal.py's, on PostgreSQL.
bench/chaos.py runs the same scenarios larger and prints the counts and recovery times.
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import WorkerProcess, wait_for
from tests.e2e.test_outbound import opted_in, own_program
from tests.e2e.test_recovery import SHORT
from tests.faults_support import (
    FINAL_OR_SENT,
    Broker,
    Delivery,
    WebProcess,
    children_of,
    claims,
    count_sends,
    kill_with_children,
    late_sends,
    opted_out,
    receipts,
    statuses,
    stop_flood,
    wait_settled,
)
from tests.sandbox_support import quick_sandbox  # noqa: F401  (a fixture)

pytestmark = pytest.mark.e2e
DEALS_SENDER = "+15005550006"  # deals and alerts
# bench/chaos.py runs these larger and kills more often; the suite runs them at 1 and 1.
SCALE = int(os.environ.get("CHAOS_SCALE", "1"))
KILLS = int(os.environ.get("CHAOS_KILLS", "1"))


@pytest.fixture
def broker(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: the test kills a broker of its own")
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

    def start(kind: str, *, beat: bool = False, **overrides: str) -> WebProcess | WorkerProcess:
        name = f"{kind}-{len(started)}"
        if kind == "web":
            process = WebProcess(environment | overrides, tmp_path / f"{name}.log")
        else:
            # The worker calls the sandbox where the session serves it, and its callbacks come back there.
            # With beat, it sweeps on the recovery tests' short thresholds (tests/e2e/test_recovery.py).
            process = WorkerProcess(environment | {"PUBLIC_BASE_URL": test_env["PUBLIC_BASE_URL"]}
                                    | (SHORT if beat else {}), tmp_path / f"{name}.log", *(["--beat"] if beat else []))
        process.start()
        process.children = children_of(process.process.pid)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()
        if isinstance(process, WorkerProcess):
            kill_with_children(process.process, process.children)


def test_the_web_process_killed_under_a_flood_of_stops_loses_no_answered_opt_out(
        processes, db, live_server):
    numbers = [f"+141555{n:05d}" for n in range(120 * SCALE)]
    opted_in(db, "deals", *numbers)
    web = processes("web")
    delivery = Delivery()
    give_up_at = time.monotonic() + 60 * SCALE
    started = time.monotonic()
    threads = stop_flood(web, numbers, DEALS_SENDER, delivery, give_up_at)
    for thread in threads:
        thread.start()
    restarts = []
    for kill in range(1, KILLS + 1):
        while len(delivery.answered) < kill * len(numbers) // (KILLS + 2):
            time.sleep(0.01)
        web.kill()  # SIGKILL, master and workers, with STOPs in flight
        restarts.append(web.start())
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    answered = set(delivery.answered)
    assert answered == set(numbers), f"not answered: {set(numbers) - answered}, {delivery}"
    # A STOP journaled but not yet replayed when the process died is replayed by the next one.
    last_answer = time.monotonic()
    try:
        wait_for(lambda: answered <= opted_out(db, numbers), timeout=15)
    finally:
        lost = answered - opted_out(db, numbers)
    print(f"\nweb SIGKILLed {KILLS}x under {len(numbers)} STOPs: answered 200 {len(answered)}, "
          f"refused while down {delivery.refused}, unanswered (posted again) {len(delivery.unanswered)}, "
          f"opt-outs {len(opted_out(db, numbers))}, lost {len(lost)}; back in {max(restarts):.1f} s at most, "
          f"all stored {time.monotonic() - last_answer:.1f} s after the last answer; flood {took:.1f} s")
    assert not lost


def test_a_worker_killed_mid_batch_sends_every_message_exactly_once(
        processes, db, make_key, example_programs, live_server, quick_sandbox):
    sender = "+18885550171"
    own_program(db, example_programs, "chaos-batch", sender, mps=10)
    numbers = [f"+141555{n:05d}" for n in range(50000, 50000 + 40 * SCALE)]
    opted_in(db, "chaos-batch", *numbers)
    web, key = processes("web"), make_key("send", "read")
    accepted = {}
    for n, number in enumerate(numbers):
        response = web.send(key, number, "chaos-batch", f"Parcel {n} is on its way")
        assert response.status_code == 202, response.text
        accepted[response.json()["id"]] = f"Parcel {n} is on its way"
    at_kills, held_at_kills = [], []
    worker = processes("worker", beat=True)
    for kill in range(1, KILLS + 1):
        reached = kill * len(numbers) // (KILLS + 4)
        wait_for(lambda reached=reached: len(receipts(db, sender)) >= reached, timeout=30 * SCALE)
        # SIGKILL, its beat too: its claims, the tasks it had taken and its unacknowledged work die with it.
        kill_with_children(worker.process, worker.children)
        killed_at = time.monotonic()
        at_kills.append(len(receipts(db, sender)))
        held_at_kills.append(len(claims(db, accepted)))
        worker = processes("worker", beat=True)  # its beat settles the dead claims once their lease is over
    wait_settled(db, accepted, timeout=60 * SCALE)
    took = time.monotonic() - killed_at
    counts = count_sends(db, sender, accepted)
    print(f"\nworker SIGKILLed {KILLS}x mid-batch (at {at_kills} at the provider, holding {held_at_kills} claims): "
          f"{counts.line()}; "
          f"all sent {took:.1f} s after the last kill")
    assert took < 60 * SCALE
    assert (counts.at_provider, counts.sent_twice, counts.lost) == (len(accepted), 0, 0)


def test_the_broker_killed_while_sends_are_accepted_loses_no_accepted_message(
        processes, broker, db, settings, make_key, example_programs, live_server, quick_sandbox):
    sender = "+18885550172"
    own_program(db, example_programs, "chaos-broker", sender, mps=20 * SCALE)
    numbers = [f"+141555{n:05d}" for n in range(60000, 60000 + 40 * SCALE)]
    opted_in(db, "chaos-broker", *numbers)
    web, key = processes("web"), make_key("send", "read")
    worker = processes("worker", beat=True)
    accepted, refused, while_down = {}, Counter(), []
    period = len(numbers) // KILLS
    for n, number in enumerate(numbers):
        if n % period == period // 4:
            broker.kill()  # every task it held is gone with it; the rows are not
        if n % period == period // 4 + 3:  # three sends into the outage: each waits out kombu's retries
            broker.start()  # the same port, empty
            back_at = time.monotonic()
        body = f"Parcel {n} is on its way"
        asked = time.monotonic()
        response = web.send(key, number, "chaos-broker", body)
        if period // 4 <= n % period < period // 4 + 3:
            while_down.append(time.monotonic() - asked)
        if response.status_code == 202:
            accepted[response.json()["id"]] = body
        else:
            refused[response.status_code] += 1
        time.sleep(0.05)
    # What the dead broker held, and what it refused, stays queued: the worker's beat enqueues it again.
    # A worker may exit on the broker's loss (kombu's "Unrecoverable error" when an ack meets the
    # closed connection); a Procfile host starts it again, and so does the test, counting it.
    restarts, deadline = 0, time.monotonic() + 60 * SCALE
    while sum(n for status, n in statuses(db, accepted).items() if status in FINAL_OR_SENT) < len(accepted):
        assert time.monotonic() < deadline, dict(statuses(db, accepted))
        if worker.process.poll() is not None:
            kill_with_children(worker.process, worker.children)
            worker, restarts = processes("worker", beat=True), restarts + 1
        time.sleep(0.25)
    took = time.monotonic() - back_at
    counts = count_sends(db, sender, accepted)
    print(f"\nbroker killed {KILLS}x (the worker exited and was started again {restarts}x), "
          f"down for {len(while_down)} of {len(numbers)} sends (answered in "
          f"{max(while_down):.2f} s at most): answered other than 202 {dict(refused)}; {counts.line()}; "
          f"all sent {took:.1f} s after it was back the last time")
    # Each send was stored before its task was handed over: it is accepted whether or not the broker
    # took the task (answered 500 before, and sent all the same: a client's retry would send it twice).
    assert not refused
    assert (counts.at_provider, counts.sent_twice, counts.lost) == (len(accepted), 0, 0)


def test_two_web_and_two_worker_processes_send_nothing_after_an_answered_stop(
        processes, db, make_key, example_programs, live_server, quick_sandbox):
    sender = "+18885550173"
    own_program(db, example_programs, "chaos-shared", sender, mps=50)
    numbers = [f"+141555{n:05d}" for n in range(70000, 70000 + 30 * SCALE)]
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
    wait_settled(db, accepted, timeout=60 * SCALE)
    took = time.monotonic() - started
    counts, late = count_sends(db, sender, accepted), late_sends(db, sender, answered, accepted)
    print(f"\n{len(numbers)} numbers, 5 sends and a STOP each through two web processes, two workers: "
          f"refused at the API {dict(refused)}; {counts.line()}; {late.line()}; "
          f"opt-outs {len(opted_out(db, numbers))}/{len(answered)}; {took:.1f} s")
    assert late.claimed_after_the_answer == 0
    assert opted_out(db, numbers) == set(answered)
    assert (counts.sent_twice, counts.lost) == (0, 0)


def test_connections_killed_mid_transaction_lose_no_answered_opt_out(processes, test_env, settings, db, live_server):
    """PostgreSQL ends the web process's connections again and again (pg_terminate_backend) while STOPs
    flood in: a text whose statement dies with its connection is journaled and replayed, one between
    statements finds its pooled connection ended and connects again. Every STOP answered 200 ends up
    an opt-out, and none is answered otherwise."""
    if settings.is_sqlite:
        pytest.skip("only a database server ends connections; the embedded SQLite store has none")
    url = make_url(test_env["DATABASE_URL"])
    # Named, so that only the web process's backends are ended, not the test's or the sandbox's.
    web_url = url.update_query_dict({"application_name": "faults-web"}).render_as_string(hide_password=False)
    numbers = [f"+141556{n:05d}" for n in range(300 * SCALE)]
    opted_in(db, "deals", *numbers)
    web = processes("web", DATABASE_URL=web_url)
    delivery = Delivery()
    give_up_at = time.monotonic() + 60 * SCALE
    ended, flooding = [], threading.Event()
    admin = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def end_connections() -> None:
        with admin.connect() as connection:
            while flooding.is_set():
                ended.append(connection.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'faults-web'")).scalar_one())
                time.sleep(random.uniform(0.005, 0.05))

    flooding.set()
    killer = threading.Thread(target=end_connections)
    killer.start()
    threads = stop_flood(web, numbers, DEALS_SENDER, delivery, give_up_at, first_sid=500_000)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        flooding.clear()
        killer.join()
        admin.dispose()
    answered = set(delivery.answered)
    try:
        wait_for(lambda: answered <= opted_out(db, numbers), timeout=15)
    finally:
        lost = answered - opted_out(db, numbers)
    journaled = sum(float(line.split()[-1]) for line in requests.get(f"{web.base}/metrics", timeout=5).text.splitlines()
                    if line.startswith("smsgate_inbound_journaled_total"))
    print(f"\nconnections ended {sum(ended)} times under {len(numbers)} STOPs: answered 200 {len(answered)}, "
          f"journaled {journaled:.0f}, other answers {dict(delivery.other)}, unanswered {len(delivery.unanswered)}, "
          f"lost {len(lost)}")
    assert sum(ended) > 0, "the test ended no connection: it showed nothing"
    assert not delivery.other, f"answered other than 200: {delivery.other}"
    assert answered == set(numbers) and not lost
