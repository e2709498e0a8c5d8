"""Twilio's message statuses, and each as ours.

Twilio's queued, accepted and scheduled mean Twilio has the message: for us it is sent. The sandbox
speaks Twilio's words, so it names them from here too.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.domain.outbound import Status


class TwilioStatus(StrEnum):
    ACCEPTED = "accepted"  # a Messaging Service has it and has not yet picked the sender
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    PARTIALLY_DELIVERED = "partially_delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELED = "canceled"
    RECEIVING = "receiving"  # inbound
    RECEIVED = "received"  # inbound


STATUSES: dict[TwilioStatus, Status] = {
    TwilioStatus.ACCEPTED: Status.SENT, TwilioStatus.SCHEDULED: Status.SENT, TwilioStatus.QUEUED: Status.SENT,
    TwilioStatus.SENDING: Status.SENT, TwilioStatus.SENT: Status.SENT,
    TwilioStatus.DELIVERED: Status.DELIVERED, TwilioStatus.READ: Status.DELIVERED,
    TwilioStatus.PARTIALLY_DELIVERED: Status.DELIVERED,
    TwilioStatus.UNDELIVERED: Status.UNDELIVERED, TwilioStatus.FAILED: Status.FAILED,
    TwilioStatus.CANCELED: Status.FAILED,
}
# A message's last word: Twilio changes it no more.
FINAL = (TwilioStatus.DELIVERED, TwilioStatus.UNDELIVERED, TwilioStatus.FAILED)


def our_status(twilio_status: str | None) -> Status | None:
    """Our status for a Twilio status, or None for statuses we do not track (receiving…)."""
    return STATUSES.get((twilio_status or "").lower())
