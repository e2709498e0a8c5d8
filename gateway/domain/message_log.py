"""What the provider's message log says about one inbound text: the values reconciliation works on.

Pure: the provider (gateway.twilio) turns its own records into these, and the services never see a
Twilio object.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class LoggedText:
    """An inbound text as the provider keeps it in its log."""

    sid: str
    from_: str
    to: str
    body: str
    date_sent: datetime  # when the provider received it (aware UTC, whole seconds)
    messaging_service_sid: str | None = None
    account_sid: str | None = None
