"""Twilio's message statuses as ours.

Twilio's queued, accepted and scheduled mean Twilio has the message: for us it is sent.
"""

from __future__ import annotations

from gateway.domain.outbound import Status

STATUSES: dict[str, Status] = {
    "accepted": Status.SENT, "scheduled": Status.SENT, "queued": Status.SENT, "sending": Status.SENT,
    "sent": Status.SENT,
    "delivered": Status.DELIVERED, "read": Status.DELIVERED, "partially_delivered": Status.DELIVERED,
    "undelivered": Status.UNDELIVERED, "failed": Status.FAILED, "canceled": Status.FAILED,
}


def our_status(twilio_status: str | None) -> Status | None:
    """Our status for a Twilio status, or None for statuses we do not track (receiving…)."""
    return STATUSES.get((twilio_status or "").lower())
