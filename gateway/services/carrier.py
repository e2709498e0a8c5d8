"""Opt-outs Twilio tells us about (error 21610), from a failed send or a status callback."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from gateway import metrics
from gateway.store import programs
from gateway.services import consents
from gateway.domain.consent import Input
from gateway.store.models import PhoneNumber


def record_opt_out(
    session: Session, number: PhoneNumber, sender: str, evidence: consents.Evidence, now: datetime | None = None
) -> list[consents.Change]:
    """Opt `number` out of every program on `sender`.

    Twilio blocks per sender (number or Messaging Service), so the opt-out is scoped to that sender's
    programs, not to every program we run: other senders may still hold the person's consent.
    """
    changes = consents.opt_out(session, number, programs.on_sender(session, sender), Input.CARRIER_OPT_OUT,
                              evidence, now=now)
    metrics.CARRIER_OPT_OUTS.inc()
    return changes
