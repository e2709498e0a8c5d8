"""The sandbox's own tables: what the simulated Twilio remembers, kept apart from the consent store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.store.models import Base, BigId, utcnow


class SandboxMessage(Base):
    """A message Twilio would hold: sent by us (outbound-api), by our TwiML or Twilio itself
    (outbound-reply), or texted by a handset on the phone page (inbound)."""

    __tablename__ = "sandbox_messages"
    __table_args__ = (Index("ix_sandbox_messages_handset_created", "handset", "date_created"),)

    sid: Mapped[str] = mapped_column(String(34), primary_key=True)
    account_sid: Mapped[str] = mapped_column(String(34))
    direction: Mapped[str] = mapped_column(String(16))  # inbound | outbound-api | outbound-reply
    # api | twiml | twilio (an auto-reply to STOP/START) | phone (typed on the phone page)
    origin: Mapped[str] = mapped_column(String(10))
    handset: Mapped[str] = mapped_column(String(20))  # the person's number, whichever way it went
    to_number: Mapped[str] = mapped_column(String(20))
    # None while a Messaging Service has not yet picked the number (status "accepted").
    from_number: Mapped[str | None] = mapped_column(String(20))
    messaging_service_sid: Mapped[str | None] = mapped_column(String(34))
    body: Mapped[str] = mapped_column(Text, default="")
    num_segments: Mapped[int] = mapped_column(Integer, default=1)
    num_media: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[int | None]
    error_message: Mapped[str | None] = mapped_column(String(300))
    status_callback: Mapped[str | None] = mapped_column(String(1000))
    date_created: Mapped[datetime] = mapped_column(default=utcnow)
    date_updated: Mapped[datetime] = mapped_column(default=utcnow)
    date_sent: Mapped[datetime | None]
    # Inbound only: how our webhook answered (HTTP status, Twilio's error code for it, a note).
    webhook_status: Mapped[int | None]
    webhook_error_code: Mapped[int | None]
    webhook_note: Mapped[str | None] = mapped_column(Text)


class SandboxRefusal(Base):
    """A create Twilio refused (21610, 21211…): no message exists, but the phone page shows the attempt."""

    __tablename__ = "sandbox_refusals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    handset: Mapped[str] = mapped_column(String(40), index=True)
    sender: Mapped[str | None] = mapped_column(String(40))
    origin: Mapped[str] = mapped_column(String(10))
    body: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[int] = mapped_column(Integer)
    error_message: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SandboxOptOut(Base):
    """Twilio's own block list: the handset texted a STOP word to this sender (a number or MG…)."""

    __tablename__ = "sandbox_opt_outs"

    handset: Mapped[str] = mapped_column(String(20), primary_key=True)
    sender: Mapped[str] = mapped_column(String(34), primary_key=True)
    keyword: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SandboxEvent(Base):
    """Something the sandbox does later, once: move a message to its next status (posting the status
    callback) or post an inbound text to our webhook. Persisted so it survives restarts and any web
    process may deliver it; `state` moves pending -> claimed -> done by conditional UPDATEs."""

    __tablename__ = "sandbox_events"
    __table_args__ = (Index("ix_sandbox_events_state_due", "state", "due_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(34), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # status | inbound
    message_status: Mapped[str | None] = mapped_column(String(20))  # the status a "status" event applies
    error_code: Mapped[int | None]
    due_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending | claimed | done
    claimed_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(80))  # host:pid of the process that ran it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    url: Mapped[str | None] = mapped_column(String(1000))  # where it was posted, if anywhere
    response_status: Mapped[int | None]
    outcome: Mapped[str | None] = mapped_column(Text)
    done_at: Mapped[datetime | None]
