"""Provider throughput: how many messages per second each sender may hand to Twilio.

Twilio queues what a sender cannot send at once (a US long code takes about one message a second)
and fails what waits too long, so the workers pace themselves instead. The count is shared by all
workers through the rate limiter (Redis when REDIS_URL is set; without it, per worker process).

The rate is set per program in the programs file (`mps = 10`); programs sharing a sender share its
rate, and the slowest of them sets it. A sender without any setting gets DEFAULT_MPS.
"""

from __future__ import annotations

import random
from datetime import timedelta

from gateway.domain.programs import spec_of
from gateway.services.ports import Limiter, Verdict
from gateway.store import programs
from gateway.store.database import Store

DEFAULT_MPS = 1
# A busy sender's messages wait for a free slot plus a random share of this spread, which doubles
# with each wait (up to MAX_SPREAD), so a backlog does not retry all at once every second.
MAX_SPREAD = timedelta(seconds=60)


def sender_mps(store: Store, sender: str) -> int:
    """Messages per second `sender` may send: the lowest `mps` of its programs, else DEFAULT_MPS.

    From the programs cache (gateway/store/programs.py): a rate set by `smsgate programs load` reaches
    every worker within its few seconds."""
    rates = [spec_of(p).mps for p in programs.cached_on_senders(store, (sender,)).programs]
    return min((r for r in rates if r), default=DEFAULT_MPS)


def take(limiter: Limiter, sender: str, mps: int) -> Verdict:
    """Take one of `sender`'s slots in the current second, if one is free."""
    return limiter.hit(f"{mps}/second", "sender", sender)


def wait_time(retry_after: float, mps: int, waited: int) -> timedelta:
    """How long a message should wait for its busy sender, having waited `waited` times already."""
    spread = min(MAX_SPREAD.total_seconds(), (2 ** min(waited, 16)) / mps)
    return timedelta(seconds=retry_after + random.uniform(0, spread))
