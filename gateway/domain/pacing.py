"""Paced release: when a deferred message's turn comes, so that a sender's backlog at the window's
opening goes out at its rate, not all at once.

Pure: the release pass (gateway/services/release.py) reads the due messages and what each sender
has already scheduled, and writes the slots this module works out. Slots of one sender are at
least 1/MPS apart, so no second, wherever it starts, holds more than MPS of them; the worker's rate
limiter stays the hard limit on what actually goes out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# The reason a deferred message carries once it has its slot (its `not_before`): it waits for its
# sender's turn, no longer for quiet hours.
PACED = "paced"
# A sender starting afresh begins within this much of its opening, at random, so a fleet of senders
# opening at 08:00 does not fire at :00 together.
JITTER = timedelta(seconds=2)


@dataclass(frozen=True)
class Waiting:
    """A deferred message whose window opens at `not_before`."""

    id: str
    sender: str
    not_before: datetime


def spacing(mps: int) -> timedelta:
    """The gap between two of a sender's slots: 1/MPS, rounded UP to the microsecond (rounded down,
    MPS + 1 slots could fall within one second)."""
    if not isinstance(mps, int) or isinstance(mps, bool) or mps < 1:
        raise ValueError(f"a sender's rate must be a whole number of messages per second >= 1, not {mps!r}")
    return timedelta(microseconds=math.ceil(1_000_000 / mps))


def schedule(waiting: Sequence[Waiting], rates: Mapping[str, int], now: datetime,
             tails: Mapping[str, datetime] | None = None,
             jitter: Mapping[str, timedelta] | None = None) -> list[tuple[str, datetime]]:
    """(message id, slot) for every waiting message, in the order to enqueue them (by slot).

    Each sender's messages take their turns in the order of their openings, then as given (the
    caller gives them oldest first): each slot is the later of the message's opening (plus the
    sender's `jitter`) and one `spacing` after the sender's previous slot. `tails`: the last slot a
    sender already has scheduled (from an earlier pass); a sender with one still ahead carries on from
    it, without jitter; a sender without one starts at `now` plus its `jitter`.
    """
    tails, jitter = tails or {}, jitter or {}
    by_sender: dict[str, list[Waiting]] = {}
    for message in waiting:
        by_sender.setdefault(message.sender, []).append(message)
    slots: list[tuple[str, datetime]] = []
    for sender, messages in by_sender.items():
        if sender not in rates:
            raise ValueError(f"no rate for sender {sender!r}")
        step = spacing(rates[sender])
        offset = jitter.get(sender, timedelta(0))
        if not timedelta(0) <= offset <= JITTER:
            raise ValueError(f"jitter must be within 0 and {JITTER}, not {offset}")
        tail = tails.get(sender)
        running = tail is not None and tail + step > now
        if running:
            # A sender already under way carries on one spacing after its last slot. Its jitter was
            # drawn when it started; a second draw here would push the next slot past that spacing
            # whenever the opening plus the new draw fell after it (a gap in the sender's rate).
            offset = timedelta(0)
        free = tail + step if running else now + offset
        for message in sorted(messages, key=lambda m: m.not_before):  # stable: oldest first within an opening
            slot = max(free, message.not_before + offset)
            slots.append((message.id, slot))
            free = slot + step
    slots.sort(key=lambda pair: pair[1])
    return slots
