"""Two web processes and two workers on one store and one broker, as on several machines
(docs/scaling.md): what must be shared holds across them.

Each web process is the Procfile's gunicorn on its own port with its own VAR_DIR (another machine);
the workers are the session's Celery worker and a second one started here. All share the session's
store and broker. Twilio is the built-in sandbox of the session's server at PUBLIC_BASE_URL.

What is tested depends on the backend, by design:
- exactly-once sending, the programs' frequency caps and an opt-out seen by every process live in
  the store: tested on PostgreSQL and on SQLite alike;
- the rate limits (anti-pumping per key, per number and per program; each sender's Twilio rate) are
  shared only through Redis (REDIS_URL). Without it each process counts on its own, which is the
  embedded one-machine setup (docs/scaling.md): those tests are skipped there with that reason, and
  CI's PostgreSQL run, which sets REDIS_URL and forbids skips, runs them.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from gateway.config import ROOT
from gateway.store import programs
from gateway.store.models import OutboundMessage
from gateway.twilio.sandbox.models import SandboxMessage
from tests.conftest import ACCOUNT_SID, WorkerProcess, _free_port, wait_for
from tests.outbound_support import fresh_limits  # noqa: F401  (autouse fixture)
from tests.sandbox_support import opt_in

pytestmark = pytest.mark.e2e
VENV_BIN = Path(sys.executable).parent
SHARED_LIMITS = bool(os.environ.get("REDIS_URL"))
needs_redis = pytest.mark.skipif(
    not SHARED_LIMITS,
    reason="without REDIS_URL every process keeps its own rate-limit counters: the embedded setup is one "
           "machine (docs/scaling.md); CI's PostgreSQL run sets REDIS_URL and runs this")
# Limits the web processes start with: small, so a test reaches them in a few requests. The per-client
# limit is set out of the way (every request here comes from 127.0.0.1).
LIMITS = {"CONFIRMATION_LIMIT_PER_KEY": "5 per minute", "CONFIRMATION_LIMIT_PER_PROGRAM": "6 per hour",
          "CONFIRMATION_LIMIT_PER_CLIENT": "1000 per hour", "CONFIRMATION_LIMIT_PER_NUMBER": "3 per 24 hours"}
FINAL = ("sent", "delivered", "undelivered", "failed", "blocked")


def _procfile_web() -> list[str]:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web":
            return shlex.split(command)
    raise AssertionError("the Procfile has no web line")


@dataclass
class Web:
    """One web process: the Procfile's gunicorn on its own port and VAR_DIR."""

    url: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _start_web(test_env: dict[str, str], directory: Path) -> Web:
    port = _free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PROMETHEUS_")}
    environment.update(test_env)
    environment.update(LIMITS, PORT=str(port), VAR_DIR=str(directory / "var"), WEB_CONCURRENCY="2",
                       PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    log = directory / "web.log"
    process = subprocess.Popen(_procfile_web(), cwd=ROOT, env=environment, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT)
    web = Web(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{web.url}/healthz", timeout=5).status_code == 200:
                return web
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    web.stop()
    raise RuntimeError(f"web process did not start:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="module")
def webs(app, live_server, test_env, tmp_path_factory) -> Iterator[tuple[Web, Web]]:
    first = _start_web(test_env, tmp_path_factory.mktemp("web-1"))
    try:
        second = _start_web(test_env, tmp_path_factory.mktemp("web-2"))
    except Exception:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def workers(worker_process, test_env, tmp_path_factory) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """The session's worker and a second one, both consuming the one broker (no beat: the Procfile's
    one beat is the first worker's job, and no test here needs it)."""
    second = WorkerProcess(test_env, tmp_path_factory.mktemp("worker-2") / "worker.log", "-n", "second@%h")
    second.start()
    yield worker_process, second
    second.stop()


def _post(url: str, path: str, key: str, body: dict) -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _spread(webs: tuple[Web, Web], calls: list[tuple[str, dict]], key: str,
            threads: int = 4) -> list[requests.Response]:
    """POST each (path, body) in turn to the first and the second web process, `threads` at a time."""
    targets = itertools.cycle(webs)
    jobs = [(next(targets).url, path, body) for path, body in calls]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: _post(job[0], job[1], key, job[2]), jobs))


def _settled(db, ids: list[str]) -> dict[str, OutboundMessage]:
    def all_final():
        with db.sessions() as session:
            rows = session.scalars(select(OutboundMessage).where(OutboundMessage.id.in_(ids))).all()
            return {row.id: row for row in rows} if len(rows) == len(ids) and all(
                row.status in FINAL for row in rows) else None

    all_final.__name__ = f"{len(ids)} messages settle"
    return wait_for(all_final, timeout=180, interval=0.2)


def _at_twilio(db, handsets: list[str]) -> list[SandboxMessage]:
    with db.sessions() as session:
        return list(session.scalars(select(SandboxMessage).where(SandboxMessage.handset.in_(handsets))
                                    .order_by(SandboxMessage.date_created)))


def _worked(worker: WorkerProcess) -> bool:
    return "messages.send" in worker.log_path.read_text(errors="replace")


def test_each_message_goes_out_once_across_two_webs_and_two_workers(webs, workers, gateway, db, make_key):
    handsets = [f"+1415555{3000 + i:04d}" for i in range(12)]
    for handset in handsets:
        opt_in(db, handset, "orders")
    key = make_key("send")

    answers = _spread(webs, [("/v1/messages", {"to": h, "program": "orders", "body": f"Order for {h[-4:]}"})
                             for h in handsets], key)
    assert [a.status_code for a in answers] == [202] * len(handsets), [a.text for a in answers]
    ids = [a.json()["id"] for a in answers]
    # Every task a second time: both workers race for each id, as after a redelivery.
    gateway.dispatcher.send_messages(ids)

    rows = _settled(db, ids)
    assert {row.status for row in rows.values()} <= {"sent", "delivered"}, {r.id: r.status for r in rows.values()}
    assert all(row.attempts == 1 for row in rows.values())
    at_twilio = _at_twilio(db, handsets)
    assert sorted(m.handset for m in at_twilio) == sorted(handsets)  # each number once: no message twice
    assert all(_worked(worker) for worker in workers), "both workers should have taken sends"


@needs_redis
def test_the_senders_twilio_rate_holds_across_two_workers(webs, workers, db, make_key):
    """orders' sender takes 1 message per second (the default): twelve messages handed to two workers at
    once reach Twilio at that pace. The window allows for the time between a worker taking its slot and
    its call arriving (on a loaded machine, up to 3 s): at 1/s, at most 4 + 3 calls arrive in any 4
    seconds, where two workers counting on their own send 2 a second: 8 to 10 in the first four."""
    handsets = [f"+1415555{3100 + i:04d}" for i in range(12)]
    for handset in handsets:
        opt_in(db, handset, "orders")
    key = make_key("send")
    answers = _spread(webs, [("/v1/messages", {"to": h, "program": "orders", "body": "Shipped."}) for h in handsets],
                      key)
    _settled(db, [a.json()["id"] for a in answers])

    arrivals = [m.date_created.timestamp() for m in _at_twilio(db, handsets)]
    assert len(arrivals) == len(handsets)
    busiest = max(sum(1 for t in arrivals if start <= t < start + 4.0) for start in arrivals)
    assert busiest <= 7, f"{busiest} sends in 4 s at 1/s: {[round(t - arrivals[0], 2) for t in arrivals]}"
    assert arrivals[-1] - arrivals[0] >= len(handsets) - 1 - 3.0


@needs_redis
def test_the_confirmation_limits_hold_across_two_webs(webs, workers, db, make_key, example_programs):
    # Per API key, 5 a minute: ten sign-ups for ten people, alternating between the web processes.
    key = make_key("subscribe")
    answers = _spread(webs, [("/v1/subscriptions", {"phone": f"+1415555{3200 + i:04d}", "program": "alerts",
                                                    "evidence": {"ip": f"198.51.100.{i + 1}"}}) for i in range(10)],
                      key, threads=2)
    assert sorted(a.status_code for a in answers) == [202] * 5 + [429] * 5, [a.text for a in answers]
    assert {a.json()["error"]["scope"] for a in answers if a.status_code == 429} == {"key"}

    # Per number, 3 a day: one number asked for again and again, through either process.
    key = make_key("subscribe")
    answers = _spread(webs, [("/v1/subscriptions", {"phone": "+14155553300", "program": "deals",
                                                    "evidence": {"ip": f"198.51.100.{i + 1}"}}) for i in range(5)],
                      key, threads=1)
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429], [a.text for a in answers]
    assert {a.json()["error"]["scope"] for a in answers[3:]} == {"number"}

    # Per program, 6 an hour, on a program no one has asked for yet.
    alerts = next(p for p in example_programs if p.slug == "alerts")
    with db.transaction() as session:
        programs.store(session, [replace(alerts, slug="bulletin", join_keywords=("BULLETIN",))])
    answers = []
    for first in (0, 4):  # two keys, so the key's own limit (5 a minute) is not the one reached
        key = make_key("subscribe")
        answers += _spread(webs, [("/v1/subscriptions", {"phone": f"+1415555{3400 + i:04d}", "program": "bulletin",
                                                         "evidence": {"ip": f"203.0.113.{i + 1}"}})
                                  for i in range(first, first + 4)], key, threads=1)
    assert [a.status_code for a in answers] == [202] * 6 + [429] * 2, [a.text for a in answers]
    assert {a.json()["error"]["scope"] for a in answers[6:]} == {"program"}


def test_a_programs_cap_holds_when_sends_race_across_webs_and_workers(webs, workers, db, make_key,
                                                                       example_programs):
    """A program promising "Up to 2 msgs/day": six sends to one number at once, through both web
    processes, two at a time, and both workers: two reach Twilio, the others are refused (409) or,
    accepted in the same instant, blocked by the worker's second look."""
    alerts = next(p for p in example_programs if p.slug == "alerts")
    capped = replace(alerts, slug="twice", join_keywords=("TWICE",), max_messages=2, per="day",
                     frequency="Up to 2 msgs/day")
    with db.transaction() as session:
        programs.store(session, [capped])
    handset = "+14155553500"
    opt_in(db, handset, "twice")
    key = make_key("send")

    answers = _spread(webs, [("/v1/messages", {"to": handset, "program": "twice", "body": f"Notice {i}"})
                             for i in range(6)], key, threads=4)
    assert {a.status_code for a in answers} <= {202, 409}, [a.text for a in answers]
    assert all(a.json()["error"]["code"] == "frequency_cap" for a in answers if a.status_code == 409)
    rows = _settled(db, [a.json()["id"] for a in answers if a.status_code == 202])

    went = [row for row in rows.values() if row.status in ("sent", "delivered")]
    assert len(went) == 2, {row.id: (row.status, row.reason) for row in rows.values()}
    assert all(row.reason == "frequency_cap" for row in rows.values() if row.status == "blocked")
    assert len(_at_twilio(db, [handset])) == 2


def test_an_opt_out_taken_by_one_web_binds_the_other_at_once(webs, workers, db, make_key, sign):
    """No process keeps consents: a STOP through the second web process refuses the very next send
    through the first."""
    handset = "+14155553600"
    opt_in(db, handset, "orders")
    key = make_key("send")
    params = {"MessageSid": "SM" + "6" * 32, "AccountSid": ACCOUNT_SID, "From": handset, "To": "+18885550199",
              "Body": "STOP", "NumMedia": "0"}
    stop = requests.post(f"{webs[1].url}/webhooks/twilio/sms", data=params,
                         headers={"X-Twilio-Signature": sign("/webhooks/twilio/sms", params)}, timeout=30)
    assert stop.status_code == 200, stop.text

    refused = _post(webs[0].url, "/v1/messages", key, {"to": handset, "program": "orders", "body": "Shipped."})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "opted_out", refused.text
