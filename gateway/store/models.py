"""The consent store's tables (SQLAlchemy 2). Alembic migrations in gateway/store/migrations mirror them."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from gateway.domain.ledger import GENESIS_HASH
from gateway.domain.outbound import Reachability, Status
from gateway.domain.review import REVIEW_EVENT


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite forgets the zone, so we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Stable constraint names, so migrations read the same on PostgreSQL and SQLite.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BigInteger ids on PostgreSQL; SQLite only autoincrements a plain INTEGER primary key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


class PhoneNumber(Base):
    """A person's number. The e164 is cleared on erasure; the row stays so the ledger chain stays whole."""

    __tablename__ = "numbers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    e164: Mapped[str | None] = mapped_column(String(20), unique=True)
    kind: Mapped[str] = mapped_column(String(20), default="unknown")
    # ISO region phonenumbers places the number in ("US", "CA"), kept so the send gate need not re-parse it.
    region: Mapped[str | None] = mapped_column(String(3))
    # A domain.outbound.Reachability, learnt from the provider's answers (services.carrier); the send gate
    # refuses a number that is not ok.
    reachability: Mapped[str] = mapped_column(String(20), default=Reachability.OK)
    reachability_code: Mapped[int | None]
    # The senders (our numbers, Messaging Services) Twilio itself blocks this number on, as the texts we saw
    # say (a STOP word blocks, START/UNSTOP/YES unblocks): space-separated, sorted; domain/twilio_filter.py.
    twilio_blocks: Mapped[str] = mapped_column(Text, default="", server_default="")
    # When someone texting from this number last said it is a wrong number ("wrong number", "new number
    # who dis"): it may have been reassigned, and every consent it held then was ended (docs/decisions/0022).
    possibly_reassigned_at: Mapped[datetime | None]
    # What the last carrier look-up said (services/lookups.py; each answer is also a ledger event with
    # the provider's words): Lookup's line type, the carrier it placed the number on ("MCC-MNC", or
    # its name), when; and the last reassigned-number check: the consent date asked about, when.
    line_type: Mapped[str | None] = mapped_column(String(20))
    carrier: Mapped[str | None] = mapped_column(String(120))
    line_checked_at: Mapped[datetime | None]
    reassigned_since: Mapped[date | None]
    reassigned_checked_at: Mapped[datetime | None]
    ledger_seq: Mapped[int] = mapped_column(Integer, default=0)
    ledger_head: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    erased_at: Mapped[datetime | None]

    consents: Mapped[list[Consent]] = relationship(back_populates="number")


class Program(Base):
    """A messaging purpose a person can consent to, loaded from the programs file."""

    __tablename__ = "programs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    sender: Mapped[str | None] = mapped_column(String(20))
    messaging_service_sid: Mapped[str | None] = mapped_column(String(34))
    category: Mapped[str] = mapped_column(String(20))
    frequency: Mapped[str] = mapped_column(String(200))
    help_text: Mapped[str] = mapped_column(Text)
    terms_url: Mapped[str | None] = mapped_column(String(500))
    privacy_url: Mapped[str | None] = mapped_column(String(500))
    join_keywords: Mapped[list] = mapped_column(default=list)
    double_opt_in: Mapped[bool] = mapped_column(Boolean, default=True)
    # Everything else of the program's definition (templates, limits, countries), as loaded.
    settings: Mapped[dict] = mapped_column(default=dict)
    # SHA-256 of the definition: evidence names the version of the text a person saw.
    version: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def sender_key(self) -> str:
        """The sender Twilio knows: our number, or the Messaging Service."""
        return self.sender or self.messaging_service_sid or ""


# What the pending requests' index holds: the consents with a deadline, which only a pending request has
# (services/consents.py clears it on every other move).
PENDING_DEADLINE = text("expires_at IS NOT NULL")


class Consent(Base):
    """The current state of one (number, program): a projection of the ledger."""

    __tablename__ = "consents"
    # Its index also serves every look-up by number (number_id comes first): no index of its own.
    # The pending requests, few among many consents: counted on every /metrics scrape, expired each minute.
    # Only a pending request has a deadline, and the index says so by that column alone: a change of status
    # then updates the row in place (HOT), without an entry in every index (migration 0019).
    __table_args__ = (UniqueConstraint("number_id", "program_id"),
                      Index("ix_consents_pending_expires_at", "expires_at", postgresql_where=PENDING_DEADLINE,
                            sqlite_where=PENDING_DEADLINE))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    number_id: Mapped[int] = mapped_column(ForeignKey("numbers.id"))
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    status: Mapped[str] = mapped_column(String(20))
    # True when an opt-out ended a confirmed consent: START restores exactly those.
    restorable: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    number: Mapped[PhoneNumber] = relationship(back_populates="consents")
    program: Mapped[Program] = relationship()


_REVIEW_ONLY = f"type = '{REVIEW_EVENT}'"


class LedgerEvent(Base):
    """One consent event, append-only, hash-chained per number (see docs/decisions/0002)."""

    __tablename__ = "ledger_events"
    # Replies kept for review are few among many events; the review list reads them newest first
    # (store/review.py), and no other event writes an entry here.
    __table_args__ = (UniqueConstraint("number_id", "seq"),
                      Index("ix_ledger_events_review", "id", postgresql_where=text(_REVIEW_ONLY),
                            sqlite_where=text(_REVIEW_ONLY)))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    number_id: Mapped[int] = mapped_column(ForeignKey("numbers.id"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(30))
    input: Mapped[str] = mapped_column(String(30))
    program_id: Mapped[int | None] = mapped_column(ForeignKey("programs.id"))
    status_before: Mapped[str | None] = mapped_column(String(20))
    status_after: Mapped[str | None] = mapped_column(String(20))
    expires_at: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(10))
    actor: Mapped[str | None] = mapped_column(String(120))
    reference: Mapped[str | None] = mapped_column(String(64))
    evidence: Mapped[dict] = mapped_column(default=dict)
    # The chain covers this digest, not the evidence itself, so erasure can redact evidence
    # without breaking verification of everything around it.
    evidence_digest: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)  # no index: nothing looks events up by time
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    program: Mapped[Program | None] = relationship()


class InboundMessage(Base):
    """Every text Twilio delivered to us, once (MessageSid is unique)."""

    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(40), unique=True)
    account_sid: Mapped[str | None] = mapped_column(String(40))
    number_id: Mapped[int | None] = mapped_column(ForeignKey("numbers.id"), index=True)
    to_number: Mapped[str] = mapped_column(String(40))
    messaging_service_sid: Mapped[str | None] = mapped_column(String(40))
    body: Mapped[str | None] = mapped_column(Text)
    intent: Mapped[str] = mapped_column(String(20))
    opt_out_type: Mapped[str | None] = mapped_column(String(10))
    reply: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


class OutboundMessage(Base):
    """The outbox: a message is a row before it is a task (see docs/decisions/0003)."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("api_key_id", "idempotency_key"),
        Index("ix_messages_status_not_before", "status", "not_before"),
        Index("ix_messages_status_recheck_at", "status", "recheck_at"),
        # The send gate counts a number's texts of the last day on every send; it also serves every
        # look-up by number (number_id comes first): no index of its own.
        Index("ix_messages_number_id_created_at", "number_id", "created_at"),
        # Only a batch's messages have a batch_id: the others write no entry here.
        Index("ix_messages_batch_id", "batch_id", postgresql_where=text("batch_id IS NOT NULL"),
              sqlite_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_message_id)
    number_id: Mapped[int] = mapped_column(ForeignKey("numbers.id"))
    program_id: Mapped[int] = mapped_column(ForeignKey("programs.id"))
    # marketing | informational | transactional | confirmation | reply
    kind: Mapped[str] = mapped_column(String(20))
    sender: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer, default=1)
    encoding: Mapped[str] = mapped_column(String(8), default="GSM-7")
    status: Mapped[str] = mapped_column(String(20), default=Status.QUEUED)  # a domain.outbound.Status
    reason: Mapped[str | None] = mapped_column(String(40))
    error_code: Mapped[int | None]
    error_message: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime | None]
    provider_sid: Mapped[str | None] = mapped_column(String(40), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None]
    # When the sweeper should look again if nothing moved the message: a lost task, a deferral now
    # due, a status callback that never came (see gateway/store/outbox.py).
    recheck_at: Mapped[datetime | None]

    number: Mapped[PhoneNumber] = relationship()
    program: Mapped[Program] = relationship()
    events: Mapped[list[MessageEvent]] = relationship(order_by="MessageEvent.id")


class MessageEvent(Base):
    """A step in an outbound message's history."""

    __tablename__ = "message_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id"), index=True)
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(40))
    error_code: Mapped[int | None]
    # The rule behind a deferral or refusal, as JSON text: {rule, law, version, citation, source}. A copy,
    # not a reference: the history keeps citing the version in force then after the rule packs change.
    rule: Mapped[str | None] = mapped_column(Text)
    # The gate's whole decision when this step is one (acceptance, the worker's re-check, a release), as
    # JSON text: every fact and rule it weighed (domain/decisions.py). A copy, for the same reason.
    decision: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API client. Only a SHA-256 of the key is kept; the key is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyRecord(Base):
    """The first answer to a request made with an idempotency key, replayed for repeats."""

    __tablename__ = "idempotency_records"

    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(Base):
    """HMAC-SHA256 of a number that must never be messaged, kept after the number itself is erased."""

    __tablename__ = "suppressions"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class InboundWatermark(Base):
    """How far inbound reconciliation has read the provider's message log, per sender (our number, or
    a Messaging Service): every text sent before `listed_through` was looked at (services/inbound_reconcile.py)."""

    __tablename__ = "inbound_watermarks"

    sender: Mapped[str] = mapped_column(String(40), primary_key=True)
    listed_through: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeactivationDay(Base):
    """A day of the carriers' Deactivations list read through to the end (services/deactivations.py):
    a day here is never read again, so a re-run changes nothing."""

    __tablename__ = "deactivation_days"

    day: Mapped[date] = mapped_column(primary_key=True)
    listed: Mapped[int] = mapped_column(Integer)  # numbers on the list
    held: Mapped[int] = mapped_column(Integer)  # of them, numbers we hold a live consent for
    ended: Mapped[int] = mapped_column(Integer)  # numbers whose consents ended
    ported: Mapped[int] = mapped_column(Integer)  # numbers kept as ported
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeactivationCheck(Base):
    """One number of one day's list, handled: a run that stopped half-way resumes after it."""

    __tablename__ = "deactivation_checks"

    day: Mapped[date] = mapped_column(primary_key=True)
    number_id: Mapped[int] = mapped_column(ForeignKey("numbers.id"), primary_key=True)
    verdict: Mapped[str] = mapped_column(String(20))
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerHeartbeat(Base):
    """When each worker last ran the heartbeat task beat schedules (services/operations.py): a worker
    that stops taking tasks, frozen or gone, stops moving its row."""

    __tablename__ = "worker_heartbeats"

    worker: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery's node name, celery@host
    beat_at: Mapped[datetime]


class ConsoleUser(Base):
    """A member of staff who signs in to /console (`smsgate users create`). Only an Argon2 hash of the
    password is kept; failed sign-ins are counted here so a lockout outlives a restart."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # viewer | compliance | admin (services/console.py)
    password_hash: Mapped[str] = mapped_column(String(200))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
    # Set by `smsgate users disable`: the account cannot sign in and its sessions stop working.
    disabled_at: Mapped[datetime | None]


class ConsoleSession(Base):
    """A browser's session on /console. The cookie holds a random token; only its SHA-256 is kept, so
    whoever reads this table cannot take over a session. `user_id` is None until someone signs in
    (the sign-in form's CSRF token lives in `data` meanwhile)."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("console_users.id", ondelete="CASCADE"))
    data: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ConsoleAccess(Base):
    """One look at (or action on) a person's data through the console: who, what, which number, when.
    The number is named by its row id, which outlives an erasure; the user's name is copied so the
    entry reads the same if the account goes."""

    __tablename__ = "console_access_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("console_users.id", ondelete="SET NULL"))
    user_name: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(30))
    number_id: Mapped[int | None] = mapped_column(ForeignKey("numbers.id"), index=True)
    detail: Mapped[str | None] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Import(Base):
    """One bulk import of consent rows (services/imports.py): where it stands, so an interrupted one
    continues where it stopped. Identified by the SHA-256 of the file, so running the same file again
    finds it; the rows themselves are read from the file (or, uploaded over HTTP, from ImportPart)."""

    __tablename__ = "imports"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(200))  # the file's name, as given: for people reading the list
    actor: Mapped[str] = mapped_column(String(120))
    # receiving (an upload still arriving) | queued | running | done | failed
    status: Mapped[str] = mapped_column(String(20))
    total_lines: Mapped[int | None] = mapped_column(Integer)  # the file's lines: what progress counts to
    # The last CSV line (as numbered in the results, the header being line 1) whose row was applied or
    # refused, committed with those writes: an import that stops continues after it.
    line_done: Mapped[int] = mapped_column(Integer, default=1)
    applied: Mapped[int] = mapped_column(Integer, default=0)
    refused: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class ImportRefusal(Base):
    """A row an import refused, and why (its other rows were applied): the results file is made from these."""

    __tablename__ = "import_refusals"

    import_id: Mapped[str] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)


class ImportPart(Base):
    """A piece of a file uploaded to POST /v1/consents/import, in order: the worker that runs the import
    reads it from here, so any worker machine can, and again after a restart. Bytes as uploaded (a NUL
    in a row is that row's refusal, and PostgreSQL text cannot hold one)."""

    __tablename__ = "import_parts"

    import_id: Mapped[str] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"), primary_key=True)
    part: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
