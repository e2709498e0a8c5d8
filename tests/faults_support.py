"""Real processes for the fault tests and bench/chaos.py: gunicorn as the Procfile runs it, Celery
workers, a Redis broker of their own on a free port, and the counts each fault is judged by.

Every process shares the session's store and its sandbox (the test process's live server, which is
Twilio here: what it records in its message log is what reached the provider). The broker is the
scenario's own, so the session's worker never takes a task of theirs and killing it harms no one else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import redis
import requests
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from gateway.config import ROOT, SANDBOX_AUTH_TOKEN
from gateway.store.models import Consent, MessageEvent, OutboundMessage, PhoneNumber
from gateway.twilio.sandbox.models import SandboxMessage
from tests.conftest import _free_port, wait_for
from tests.e2e.test_deploy import VENV_BIN, procfile

SMS = "/webhooks/twilio/sms"
FINAL_OR_SENT = ("sent", "delivered", "undelivered", "failed", "blocked")


class Broker:
    """`redis-server` on a port of its own, nothing persisted: a kill loses every task it held."""

    def __init__(self, log_path: Path):
        self.port, self.log_path, self.process = _free_port(), log_path, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)

        def answers() -> bool:
            with contextlib.suppress(redis.ConnectionError):
                return client.ping()
            return False

        wait_for(answers, 10, what="the broker answers")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def children_of(pid: int) -> set[int]:
    """The processes `pid` started (a worker's embedded beat), from /proc."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.update(int(child) for child in (task / "children").read_text().split())
    return found


def kill_with_children(process: subprocess.Popen, children: set[int]) -> None:
    """SIGKILL a process and the ones it started, as a host or container dying does: a worker's
    embedded beat, left alive, would go on scheduling beside the next worker's."""
    for pid in children | children_of(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait()


class WebProcess:
    """gunicorn as the Procfile runs it, in a session of its own so that a kill takes master and workers."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path, self.process = log_path, None
        self.env = {**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PORT": str(self.port), "PUBLIC_BASE_URL": self.base, "WEB_CONCURRENCY": str(workers)}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def start(self) -> float:
        """Start and wait until it answers; returns how long that took."""
        started = time.monotonic()
        self.process = subprocess.Popen(procfile()["web"], cwd=ROOT, env=self.env, stdout=self.log_path.open("ab"),
                                        stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{self.base}/healthz", timeout=2).status_code == 200
            return False

        wait_for(healthy, 60, what="the web process answers")
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL to the master and its workers at once, as a host or container dying does."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def stop_text(self, number: str, sid: str, sender: str) -> requests.Response:
        params = {"MessageSid": sid, "AccountSid": "AC" + "1" * 32, "From": number, "To": sender, "Body": "STOP",
                  "NumMedia": "0"}
        signature = RequestValidator(SANDBOX_AUTH_TOKEN).compute_signature(self.base + SMS, params)
        return requests.post(self.base + SMS, data=urlencode(params), timeout=15,
                             headers={"X-Twilio-Signature": signature,
                                      "Content-Type": "application/x-www-form-urlencoded"})

    def send(self, key: str, number: str, program: str, body: str) -> requests.Response:
        return requests.post(f"{self.base}/v1/messages", timeout=15, headers={"Authorization": f"Bearer {key}"},
                             json={"to": number, "program": program, "body": body})


@dataclass
class Delivery:
    """What became of texts posted at a web process that may die under them."""

    answered: dict[str, datetime] = field(default_factory=dict)  # number → when its 200 came back
    refused: int = 0  # never reached the web process (nothing listening): posted again once it is back
    unanswered: set[str] = field(default_factory=set)  # reached it, no answer (killed): posted again
    other: Counter = field(default_factory=Counter)  # answered with another status


def post_stop(web: WebProcess, number: str, sid: str, sender: str, delivery: Delivery, lock: threading.Lock,
              give_up_at: float) -> None:
    """Post one STOP until it is answered. Twilio tries a refused connect once and never posts again
    after no answer; the test does, and counts both apart from the answered ones."""
    while time.monotonic() < give_up_at:
        try:
            response = web.stop_text(number, sid, sender)
        except requests.RequestException as error:  # refused, reset, cut off mid-answer, timed out
            with lock:
                if isinstance(error, requests.ConnectionError) and "refused" in str(error).lower():
                    delivery.refused += 1
                else:
                    delivery.unanswered.add(number)
            time.sleep(0.05)
            continue
        with lock:
            if response.status_code == 200:
                delivery.answered[number] = datetime.now(UTC)
            else:
                delivery.other[response.status_code] += 1
        return


def stop_flood(web: WebProcess, numbers: list[str], sender: str, delivery: Delivery, give_up_at: float, *,
               first_sid: int = 0, threads: int = 8) -> list[threading.Thread]:
    """Threads, not started, that share out a STOP from each of `numbers` (MessageSids from
    `first_sid`), each posted until it is answered (`post_stop`)."""
    lock, pending = threading.Lock(), list(enumerate(numbers))

    def flood() -> None:
        while True:
            with lock:
                if not pending:
                    return
                n, number = pending.pop()
            post_stop(web, number, f"SM{n + first_sid:032x}", sender, delivery, lock, give_up_at)

    return [threading.Thread(target=flood) for _ in range(threads)]


def opted_out(db, numbers) -> set[str]:
    with db.sessions() as session:
        return set(session.scalars(
            select(PhoneNumber.e164).join(Consent, Consent.number_id == PhoneNumber.id)
            .where(Consent.status == "opted_out", PhoneNumber.e164.in_(list(numbers)))))


def receipts(db, sender: str) -> list[SandboxMessage]:
    """The sandbox's log of messages sent from `sender`: what reached the provider."""
    with db.sessions() as session:
        return list(session.scalars(select(SandboxMessage).where(SandboxMessage.direction == "outbound-api",
                                                                 SandboxMessage.from_number == sender)))


def outbox(db, ids) -> dict[str, OutboundMessage]:
    with db.sessions() as session:
        return {m.id: m for m in session.scalars(select(OutboundMessage).where(OutboundMessage.id.in_(list(ids))))}


def statuses(db, ids) -> Counter:
    with db.sessions() as session:
        return Counter(dict(session.execute(select(OutboundMessage.status, func.count())
                                            .where(OutboundMessage.id.in_(list(ids)))
                                            .group_by(OutboundMessage.status)).all()))


@dataclass
class SendCounts:
    """The outbound counts: every accepted message once at the provider or in a final state."""

    accepted: int
    settled: int  # sent, delivered or a final status
    at_provider: int  # receipts of accepted messages
    sent_twice: int  # accepted messages with more than one receipt
    lost: int  # accepted messages neither at the provider nor settled
    statuses: dict[str, int]

    def line(self) -> str:
        return (f"accepted {self.accepted}, at the provider {self.at_provider}, sent twice {self.sent_twice}, "
                f"lost {self.lost}, statuses {dict(sorted(self.statuses.items()))}")


def count_sends(db, sender: str, accepted: dict[str, str]) -> SendCounts:
    """`accepted`: message id → its body, unique per message, which is how a receipt names it."""
    by_body = Counter(m.body for m in receipts(db, sender))
    rows = outbox(db, accepted)
    settled = [i for i, m in rows.items() if m.status in FINAL_OR_SENT]
    return SendCounts(
        accepted=len(accepted), settled=len(settled),
        at_provider=sum(1 for body in accepted.values() if by_body[body]),
        sent_twice=sum(1 for body in accepted.values() if by_body[body] > 1),
        lost=sum(1 for i, body in accepted.items() if i not in settled and not by_body[body]),
        statuses=dict(Counter(m.status for m in rows.values())))


def claims(db, ids) -> list[str]:
    """Those of these messages that a worker holds (`sending`)."""
    with db.sessions() as session:
        return list(session.scalars(select(OutboundMessage.id).where(OutboundMessage.id.in_(list(ids)),
                                                                     OutboundMessage.status == "sending")))


def wait_settled(db, ids, timeout: float) -> float:
    """Wait until every message is sent or final; returns how long that took."""
    started = time.monotonic()
    wait_for(lambda: sum(n for s, n in statuses(db, ids).items() if s in FINAL_OR_SENT) == len(ids), timeout,
             interval=0.25, what=f"{len(ids)} messages sent or final: {dict(statuses(db, ids))}")
    return time.monotonic() - started


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class LateSends:
    """Receipts at the provider for a number after its STOP was answered."""

    after_the_answer: int  # every such receipt
    claimed_after_the_answer: int  # of those, the ones whose claim began after the answer: a broken promise
    latest: float  # seconds after the answer, at most

    def line(self) -> str:
        return (f"at the provider after the STOP was answered {self.after_the_answer} "
                f"(claimed after it {self.claimed_after_the_answer}; {self.latest * 1000:.0f} ms after it at most)")


def late_sends(db, sender: str, answered: dict[str, datetime], accepted: dict[str, str]) -> LateSends:
    """A claim asks the gate in its own transaction, so a send claimed before the opt-out committed may
    reach the provider a moment after the STOP was answered; one claimed after the answer must not."""
    message_of = {body: message_id for message_id, body in accepted.items()}
    with db.sessions() as session:
        claimed = dict(session.execute(select(MessageEvent.message_id, func.max(MessageEvent.occurred_at))
                                       .where(MessageEvent.status == "sending",
                                              MessageEvent.message_id.in_(list(accepted)))
                                       .group_by(MessageEvent.message_id)).all())
    after = claimed_after = 0
    latest = 0.0
    for receipt in receipts(db, sender):
        stopped = answered.get(receipt.to_number)
        if stopped is None or _aware(receipt.date_created) <= stopped:
            continue
        after += 1
        latest = max(latest, (_aware(receipt.date_created) - stopped).total_seconds())
        claim = claimed.get(message_of.get(receipt.body))
        claimed_after += claim is None or _aware(claim) > stopped
    return LateSends(after, claimed_after, latest)
