"""Provider throughput: how many messages per second each sender may hand to Twilio.

Twilio queues what a sender cannot send at once (a US long code takes about one message a second)
and fails what waits too long, so the workers pace themselves instead. The count is shared by all
workers through the rate limiter (Redis when REDIS_URL is set; without it, per worker process).

The rate is set per program in the programs file (`mps = 10`); programs sharing a sender share its
rate, and the slowest of them sets it. A sender without any setting gets DEFAULT_MPS.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import timedelta

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from gateway.domain.programs import spec_of
from gateway.services.ports import Limiter, Verdict
from gateway.store import programs

DEFAULT_MPS = 1
# A busy sender's messages wait for a free slot plus a random share of this spread, which doubles
# with each wait (up to MAX_SPREAD), so a backlog does not retry all at once every second.
MAX_SPREAD = timedelta(seconds=60)
# Programs change rarely (on a programs load); a worker re-reads a sender's rate this often.
_CACHE_SECONDS = 30.0
_cache: dict[str, tuple[int, float]] = {}
_cache_lock = threading.Lock()


def sender_mps(session: Session | Connection, sender: str) -> int:
    """Messages per second `sender` may send: the lowest `mps` of its programs, else DEFAULT_MPS."""
    now = time.monotonic()
    cached = _cache.get(sender)
    if cached and cached[1] > now:
        return cached[0]
    if isinstance(session, Connection):  # the worker's claim transaction: read the rows in it
        with Session(bind=session) as in_transaction:
            rates = [spec_of(p).mps for p in programs.on_sender(in_transaction, sender)]
    else:
        rates = [spec_of(p).mps for p in programs.on_sender(session, sender)]
    mps = min((r for r in rates if r), default=DEFAULT_MPS)
    with _cache_lock:
        _cache[sender] = (mps, now + _CACHE_SECONDS)
    return mps


def forget() -> None:
    """Drop cached rates (after programs are reloaded; tests)."""
    with _cache_lock:
        _cache.clear()


def take(limiter: Limiter, sender: str, mps: int) -> Verdict:
    """Take one of `sender`'s slots in the current second, if one is free."""
    return limiter.hit(f"{mps}/second", "sender", sender)


def wait_time(retry_after: float, mps: int, waited: int) -> timedelta:
    """How long a message should wait for its busy sender, having waited `waited` times already."""
    spread = min(MAX_SPREAD.total_seconds(), (2 ** min(waited, 16)) / mps)
    return timedelta(seconds=retry_after + random.uniform(0, spread))
