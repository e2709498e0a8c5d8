"""What the provider's answers teach about a number: opt-outs made at Twilio (21610) and reachability.

Three paths learn something: a refused send, a status callback, and an inbound text (a handset that
texts us is reachable). They all learn it here, so a landline found at send time and one found in a
callback are the same fact, kept the same way.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from gateway import logs, metrics
from gateway.domain import twilio_filter
from gateway.domain.consent import Input
from gateway.domain.outbound import Reachability, reachability_after
from gateway.services import consents
from gateway.store import programs
from gateway.store.models import PhoneNumber

log = logging.getLogger(__name__)


def record_opt_out(
    session: Session, number: PhoneNumber, sender: str, evidence: consents.Evidence, now: datetime | None = None,
    *, message_id: str | None = None,
) -> list[consents.Change]:
    """Opt `number` out of every program on `sender` (Twilio refused `message_id` with 21610).

    Twilio blocks per sender (number or Messaging Service), so the opt-out is scoped to that sender's
    programs, not to every program we run: other senders may still hold the person's consent.
    """
    changes = consents.opt_out(session, number, programs.on_sender(session, sender), Input.CARRIER_OPT_OUT,
                              evidence, now=now)
    metrics.CARRIER_OPT_OUTS.inc()
    logs.event(log, "carrier_opt_out", message_id=message_id, number=number.e164, sender=sender,
               stage=evidence.details.get("stage"), programs=_slugs(changes))
    return changes


def _slugs(changes: list[consents.Change]) -> str:
    return ",".join(change.program.slug for change in changes if change.program is not None)


# The reason a message refused with 21610 is stored with when the gateway knew Twilio blocks the pair:
# an expected refusal, not news about the person.
TWILIO_BLOCKED = "twilio_blocked"


def learn_refusal_21610(
    session: Session, number: PhoneNumber, sender: str, evidence: consents.Evidence, now: datetime | None = None,
    *, message_id: str | None = None,
) -> bool:
    """Twilio refused a message to `number` from `sender` because the person opted out there (21610).

    When the gateway already knows Twilio blocks the pair (it saw the STOP), that is the block it knew
    of: nothing new is learnt, and the caller records the refusal on the message only. Otherwise it is
    an opt-out made at Twilio that we never saw: every program on the sender ends (record_opt_out) and
    the block is kept, so the next refusal is an expected one. True: a new carrier opt-out was recorded.
    `number` is locked by the caller.
    """
    if twilio_filter.is_blocked(number.twilio_blocks, (sender,)):
        return False
    record_opt_out(session, number, sender, evidence, now=now, message_id=message_id)
    number.twilio_blocks = twilio_filter.with_block(number.twilio_blocks, (sender,), True)
    return True


def reachability_columns(current: str, heard: Reachability, code: int | None = None) -> dict | None:
    """The number's new reachability and reachability_code once we hear `heard` (with the provider's
    `code`), or None when that changes nothing."""
    learned = reachability_after(current, heard)
    if learned is Reachability.OK:
        return None if current == Reachability.OK else {"reachability": learned, "reachability_code": None}
    # A failure reported again keeps its latest code; one the number's stronger fact outranks changes nothing.
    return {"reachability": learned, "reachability_code": code} if learned is heard else None


def learn_reachability(number: PhoneNumber, heard: Reachability, code: int | None = None) -> None:
    """Apply to a loaded (and locked) number what a send, a status callback or a text from it says."""
    columns = reachability_columns(number.reachability, heard, code)
    if columns is not None:
        number.reachability, number.reachability_code = columns["reachability"], columns["reachability_code"]
