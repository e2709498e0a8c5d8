"""Paced release of deferred messages: at the window's opening, each sender's backlog gets slots at
its rate (gateway/domain/pacing.py), and the sweeper hands each message to the queue for its slot.

The pass runs at the start of every sweep (`sending.sweep`), over the deferred messages whose window
opens within the sweep's look-ahead, in chunks of its own transactions. The database is the source
of truth: a message has its slot once its chunk committed (reason `paced`, `not_before` the slot),
and a sender's schedule carries on from the last slot it holds in the store. A pass that dies
leaves the chunks it did not commit unpaced, and the next sweep paces them after the ones that
were; a task lost with it is the sweeper's to hand over again, as any lost task is. See
docs/decisions/0019-paced-release.md.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.domain import pacing
from gateway.services import throughput, unit_of_work
from gateway.services.ports import Gateway
from gateway.store import outbox
from gateway.store.models import utcnow

log = logging.getLogger(__name__)

CHUNK = 5000


@dataclass(frozen=True)
class Released:
    paced: int  # messages that got their slot in this pass
    enqueued: int = 0  # of those, handed to the queue already: their slot comes within the look-ahead
    last_slot: datetime | None = None  # the latest slot given (None: nothing paced)


def release(gateway: Gateway, now: datetime, *, ahead: timedelta = timedelta(0), limit: int = 1_000_000,
            jitter: random.Random | None = None) -> Released:
    """Give a slot to every deferred message whose window opens by `now + ahead`, and hand to the
    queue, for their slots, those whose slot comes by then too.

    Chunk by chunk, each in its own transaction: a sender's schedule starts when its first chunk is
    worked out (`now`, or the clock if later: a pass over 100,000 messages takes seconds), and each
    chunk's first messages are enqueued as it commits, not after the whole pass. `jitter`: where a
    sender starting afresh draws its offset from (a seeded Random in tests).
    """
    draw = jitter or random.Random()
    paced = enqueued = 0
    last = None
    while paced < limit:
        with unit_of_work.transaction(gateway) as (session, outgoing):
            if not outbox.hold_release(session):
                log.info("release: another pass is releasing; this one leaves it the work")
                break
            due = outbox.due_for_release(session, now + ahead, limit=min(CHUNK, limit - paced))
            if not due:
                break
            at = max(now, utcnow())
            senders = {message.sender for message in due}
            rates = {sender: throughput.sender_mps(session, sender) for sender in senders}
            tails = outbox.release_tails(session, senders)
            offsets = {sender: pacing.JITTER * draw.random() for sender in senders}
            slots = pacing.schedule(due, rates, at, tails, offsets)
            done = outbox.pace(session, slots, at)
            soon = [(message_id, slot) for message_id, slot in slots if slot <= at + ahead and message_id in done]
            outbox.mark_enqueued(session, [message_id for message_id, _ in soon], at, outbox.REQUEUE_HOLD)
            outgoing.send_messages([message_id for message_id, slot in soon if slot <= at])
            outgoing.send_messages_at([(message_id, slot) for message_id, slot in soon if slot > at])
        paced, enqueued = paced + len(done), enqueued + len(soon)
        last = max(last or slots[-1][1], slots[-1][1])
        if len(due) < CHUNK:
            break
    if paced:
        log.info("release: %d deferred messages given their slots, the last at %s; %d enqueued for theirs",
                 paced, last.isoformat(), enqueued)
    return Released(paced, enqueued, last)
