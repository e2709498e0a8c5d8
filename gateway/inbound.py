"""Inbound texts: one Twilio delivery is deduplicated, classified, applied and stored, once.

`handle` is the whole path behind the SMS webhook, without Flask. In ONE transaction it classifies
the text, locks the sender's number when consent may change, applies the change through
`consent.service` / `subscriptions` (the only writers) and stores the InboundMessage with the reply
it chose. The MessageSid is a unique key: a repeat is rolled back whole and gets the stored first
reply. Confirmation texts for keyword joins go through the outbox and are enqueued after the commit.

Decisions (see also bench/README.md for what the speed work changed):
* START/UNSTOP with nothing to restore is stored as an opt-in that did nothing, with no reply
  (Twilio lifts its own block anyway); YES with nothing pending is likewise plain text.
* With several programs on one sender, one reply names them all (the first program's template).
* HELP answers with the program the number is most involved with on that sender (opted in, then
  pending), else the sender's first program.
* A text from a number marked unreachable (30003/30005) marks it reachable again.
* An E.164 sender that phonenumbers calls invalid (but whose country it knows) is kept: see _new_number.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import phonenumbers
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from gateway import metrics, programs, subscriptions
from gateway.consent import service
from gateway.consent.machine import IllegalTransition, Input, Source, Status
from gateway.context import Gateway
from gateway.keywords import Intent
from gateway.models import Consent, InboundMessage, PhoneNumber, Program, utcnow
from gateway.numbers import InvalidNumber, Number, is_e164, mask
from gateway.numbers import parse as parse_number

log = logging.getLogger(__name__)

# Twilio's ids are two letters and 32 hex digits; accept any short token so a new prefix still works.
_SID = re.compile(r"^[A-Za-z0-9]{2,40}$")
_SENDER = re.compile(r"^(\+[1-9]\d{1,14}|MG[0-9a-fA-F]{32})$")
# Advanced Opt-Out's keyword class -> what it did at Twilio (blocked, unblocked, answered HELP).
_OPT_OUT_TYPES = {"STOP": Intent.OPT_OUT, "START": Intent.OPT_IN, "HELP": Intent.HELP}


class BadInbound(ValueError):
    """A webhook request that is not a usable inbound text; `code` is stable, nothing was stored."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class InboundText:
    """The fields of Twilio's inbound-message webhook that we act on."""

    message_sid: str
    from_: str
    to: str
    body: str
    messaging_service_sid: str | None = None
    account_sid: str | None = None
    opt_out_type: str | None = None

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> InboundText:
        """Read Twilio's form fields; raise BadInbound when a required one is missing or malformed."""
        sid, sender, to = (form.get(name, "").strip() for name in ("MessageSid", "From", "To"))
        for name, value in (("MessageSid", sid), ("From", sender), ("To", to)):
            if not value:
                raise BadInbound("missing_field", f"{name} is required")
        if not _SID.match(sid):
            raise BadInbound("bad_message_sid", "MessageSid is not a Twilio id")
        if not _SENDER.match(to):
            raise BadInbound("unknown_sender", "To is not one of our numbers")
        service_sid = form.get("MessagingServiceSid", "").strip() or None
        if service_sid is not None and not _SENDER.match(service_sid):
            service_sid = None  # not an MG id: no Messaging Service to look up
        opt_out_type = form.get("OptOutType", "").strip().upper()[:10] or None
        account_sid = form.get("AccountSid", "").strip()[:40] or None
        # PostgreSQL text cannot hold NUL; nothing Twilio relays from a handset contains one.
        body = form.get("Body", "").replace("\x00", "")
        return cls(sid, sender, to, body, service_sid, account_sid, opt_out_type)


@dataclass(frozen=True)
class Handled:
    """What became of one inbound text: the reply (None: none), and what to enqueue after commit."""

    intent: str
    reply: str | None = None
    duplicate: bool = False
    queued: tuple[str, ...] = ()


@dataclass
class _Effect:
    reply: str | None = None
    queued: tuple[str, ...] = ()
    events: tuple[tuple[str, str], ...] = ()  # (type, source) of each ledger event, for metrics


def handle(gateway: Gateway, text: InboundText, *, now: datetime | None = None) -> Handled:
    """Process one inbound text exactly once and return the reply to give (or None)."""
    now = now or utcnow()
    # Twilio sends SMS senders in E.164; anything else ("whatsapp:+1…", a short code) is not a person's
    # number we hold consent for.
    if not is_e164(text.from_):
        raise BadInbound("invalid_number", "From is not an E.164 phone number")
    try:
        with gateway.db.transaction() as session:
            handled, effect = _process(session, gateway, text, now)
    except IntegrityError:
        # The MessageSid was processed before (or just now, by a concurrent delivery): its unique key
        # refused our insert, everything this attempt did was rolled back, and the first answer stands.
        with gateway.db.sessions() as session:
            first = _first_answer(session, text.message_sid)
        if first is None:
            raise
        return first
    if handled.queued:
        gateway.dispatcher.send_messages(list(handled.queued))
    metrics.INBOUND.labels(intent=handled.intent).inc()
    for event_type, source in effect.events:
        metrics.CONSENT_EVENTS.labels(type=event_type, source=source).inc()
    # Consent changes are worth a line each; chit-chat is not.
    log.log(logging.INFO if effect.events else logging.DEBUG, "inbound %s from %s: %s",
            text.message_sid, mask(text.from_), handled.intent)
    return handled


def _first_answer(session: Session, message_sid: str) -> Handled | None:
    row = session.execute(
        select(InboundMessage.intent, InboundMessage.reply).where(InboundMessage.message_sid == message_sid)
    ).first()
    return None if row is None else Handled(row.intent, row.reply, duplicate=True)


def _process(session: Session, gateway: Gateway, text: InboundText, now: datetime) -> tuple[Handled, _Effect]:
    # No look-up of the MessageSid first: a repeat is rare (Twilio's retry), and the unique key on
    # inbound_messages rolls the whole repeat back (see `handle`). One query less on every text.
    senders = [text.to] + ([text.messaging_service_sid] if text.messaging_service_sid else [])
    cached = _programs_on(session, senders)
    if not cached.programs:
        raise BadInbound("unknown_sender", "To is not one of our senders")
    classification = gateway.keywords.classify(text.body, cached.join_keywords)
    intent = classification.intent
    # Twilio's Advanced Opt-Out has already acted and replied: mirror what it did, answer nothing.
    if text.opt_out_type in _OPT_OUT_TYPES and not (text.opt_out_type == "STOP" and intent is Intent.OPT_OUT_ALL):
        intent = _OPT_OUT_TYPES[text.opt_out_type]
    region = gateway.settings.default_region
    act = _EFFECTS.get(intent)
    if act is None:
        # Plain text changes no consent: no lock, no ledger, just who sent it.
        number_id, effect = _sender_id(session, text.from_, region), _Effect()
    else:
        # merge(load=False) attaches the cached rows to this session without a query.
        on_sender = [session.merge(program, load=False) for program in cached.programs]
        number, consents = _locked_sender(session, text.from_, region, on_sender)
        evidence = service.Evidence(Source.SMS, reference=text.message_sid, details={
            key: value for key, value in {
                "body": text.body, "to": text.to, "messaging_service_sid": text.messaging_service_sid,
                "keyword": classification.keyword, "language": classification.language,
                "opt_out_type": text.opt_out_type,
            }.items() if value is not None
        })
        effect = act(_Context(session, gateway, number, consents, on_sender, senders, evidence, now), classification)
        number_id = number.id
    if text.opt_out_type is not None:
        effect.reply = None
    # Core, not the unit of work: the row is never read back in this transaction.
    session.connection().execute(_INSERT_INBOUND, {
        "message_sid": text.message_sid, "account_sid": text.account_sid, "number_id": number_id,
        "to_number": text.to, "messaging_service_sid": text.messaging_service_sid, "body": text.body,
        "intent": intent.value, "opt_out_type": text.opt_out_type, "reply": effect.reply, "received_at": now,
    })
    return Handled(intent.value, effect.reply, queued=effect.queued), effect


# The statements of every request, built once: SQLAlchemy then only binds parameters (measurably
# cheaper than building and cache-keying a new statement per request; see bench/README.md).
_NUMBERS = PhoneNumber.__table__
_INSERT_INBOUND = InboundMessage.__table__.insert()
_SENDER_BY_E164 = select(_NUMBERS.c.id, _NUMBERS.c.reachability).where(_NUMBERS.c.e164 == bindparam("e164"))
_MARK_REACHABLE = (update(_NUMBERS).where(_NUMBERS.c.id == bindparam("number_id"))
                   .values(reachability="ok", reachability_code=None))
_LOCK_NUMBER = (select(PhoneNumber).where(PhoneNumber.e164 == bindparam("e164")).with_for_update()
                .execution_options(populate_existing=True))
_CONSENTS_TO = select(Consent).where(Consent.number_id == bindparam("number_id"),
                                     Consent.program_id.in_(bindparam("program_ids", expanding=True)))


def _sender_id(session: Session, e164: str, region: str) -> int:
    """The sender's number id, without a lock (nothing in its ledger changes); created if new."""
    row = session.connection().execute(_SENDER_BY_E164, {"e164": e164}).first()
    if row is None:
        return _new_number(session, e164, region).id
    if row.reachability == "unreachable":
        # A text from the handset proves it is reachable again (30003 is often transient).
        session.connection().execute(_MARK_REACHABLE, {"number_id": row.id})
    return row.id


def _locked_sender(session: Session, e164: str, region: str, on_sender: list[Program]) -> tuple[PhoneNumber, dict]:
    """The sender's row, locked for this transaction, and its consents to `on_sender`.

    The consents are read after the lock is held (a second statement, so it sees what the previous
    holder committed). A known number was validated when its row was made: only a new one is parsed.
    """
    number = session.scalars(_LOCK_NUMBER, {"e164": e164}).one_or_none()
    if number is None:
        return _new_number(session, e164, region), {}
    if number.reachability == "unreachable":
        number.reachability, number.reachability_code = "ok", None  # as in _sender_id
    rows = session.scalars(_CONSENTS_TO, {"number_id": number.id, "program_ids": [p.id for p in on_sender]})
    return number, {consent.program_id: consent for consent in rows}


def _new_number(session: Session, e164: str, region: str) -> PhoneNumber:
    try:
        number = parse_number(e164, region)
    except InvalidNumber as error:
        # phonenumbers' metadata can lag behind new number ranges, and Twilio (whose request is signed)
        # saw a handset text from this number: an opt-out must not be lost to our metadata. A number
        # kept this way has no known region, so the send gate never texts it (country_not_allowed).
        try:
            phonenumbers.parse(e164)
        except phonenumbers.NumberParseException:
            raise BadInbound("invalid_number", f"From is not a phone number ({error.reason})") from None
        number = Number(e164=e164, kind="unknown", region=None)
    return service.number_row(session, number)


# Programs change when someone runs `smsgate programs load`, not between two texts: each process keeps
# the rows per sender for a few seconds instead of loading them (and their JSON) on every request.
PROGRAM_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class _SenderPrograms:
    programs: list[Program]  # detached copies: merge them into a session before use
    join_keywords: dict[str, str]  # keyword -> program slug
    expires: float
    generation: int


_program_cache: dict[tuple[str, ...], _SenderPrograms] = {}


def _programs_on(session: Session, senders: list[str]) -> _SenderPrograms:
    """Programs on our number or Messaging Service (programs.on_sender for several), briefly cached."""
    key, clock = tuple(senders), time.monotonic()
    cached = _program_cache.get(key)
    if cached is not None and cached.expires > clock and cached.generation == programs.generation:
        return cached
    generation = programs.generation
    rows = session.scalars(
        select(Program)
        .where(or_(Program.sender.in_(senders), Program.messaging_service_sid.in_(senders)))
        .order_by(Program.id)
    )
    copies = [_detached_copy(row) for row in rows]
    cached = _SenderPrograms(copies, {keyword: p.slug for p in copies for keyword in p.join_keywords},
                             clock + PROGRAM_CACHE_SECONDS, generation)
    if len(_program_cache) > 1000:  # senders come from signed requests, but bound it all the same
        _program_cache.clear()
    _program_cache[key] = cached
    return cached


def _detached_copy(program: Program) -> Program:
    """A clean copy of a loaded row, not in any session: what merge(load=False) accepts."""
    copy = Program(**{column.key: getattr(program, column.key) for column in Program.__table__.columns})
    make_transient_to_detached(copy)
    return copy


@dataclass(frozen=True)
class _Context:
    session: Session
    gateway: Gateway
    number: PhoneNumber
    consents: dict[int, Consent]  # by program id, for the programs on this sender, as locked
    on_sender: list[Program]
    senders: list[str]
    evidence: service.Evidence
    now: datetime


def _events(changes) -> tuple[tuple[str, str], ...]:
    return tuple((change.event.type, change.event.source) for change in changes)


def _opt_out(ctx: _Context, classification) -> _Effect:
    """STOP family: every program on this sender (STOPALL: every program we run) ends."""
    everything = classification.intent is Intent.OPT_OUT_ALL
    ended = programs.all_programs(ctx.session) if everything else ctx.on_sender
    # Each apply reads only its own program's consent, so nothing pending needs flushing before it:
    # the whole change goes to the database in one flush at commit.
    known = {p.id: ctx.consents.get(p.id) for p in ctx.on_sender}
    with ctx.session.no_autoflush:
        changes = service.opt_out(ctx.session, ctx.number, ended, Input.KEYWORD_STOP, ctx.evidence, now=ctx.now,
                                  consents=known)
    # One confirmation, naming what ended, and nothing else in it.
    return _Effect(reply_text(ended, "opt_out"), events=_events(changes))


def _opt_in(ctx: _Context, classification) -> _Effect:
    """START / UNSTOP: restore exactly the programs this number had confirmed before opting out here."""
    restorable = [
        p for p in ctx.on_sender
        if service.allowed(service.state_of(ctx.consents.get(p.id)), Input.KEYWORD_START)
    ]
    with ctx.session.no_autoflush:  # as in _opt_out: one flush at commit
        changes = [service.apply(ctx.session, ctx.number, p, Input.KEYWORD_START, ctx.evidence, now=ctx.now,
                                 consent=ctx.consents.get(p.id)) for p in restorable]
    # Nothing to restore: Twilio lifts its own block anyway; we record nothing and say nothing.
    return _Effect(reply_text(restorable, "opt_in") if restorable else None, events=_events(changes))


def _confirm(ctx: _Context, classification) -> _Effect:
    """YES: confirm this number's live pending requests on this sender; otherwise it is plain text."""
    changes = []
    for sender in ctx.senders:
        changes += subscriptions.confirm(ctx.session, number=ctx.number, sender=sender, evidence=ctx.evidence,
                                         now=ctx.now)
    confirmed = [change.program for change in changes]
    return _Effect(reply_text(confirmed, "welcome") if confirmed else None, events=_events(changes))


def _join(ctx: _Context, classification) -> _Effect:
    """A program's join keyword: double opt-in asks for YES (through the outbox); single opts in now."""
    program = next(p for p in ctx.on_sender if p.slug == classification.program)
    settings = ctx.gateway.settings
    before = service.state_of(ctx.consents.get(program.id)).status
    try:
        started = subscriptions.start(
            ctx.session, number=ctx.number, program=program, input=Input.KEYWORD_JOIN, evidence=ctx.evidence,
            now=ctx.now, ttl=timedelta(hours=settings.pending_ttl_hours),
            suppression_key=settings.suppression_key, rules=ctx.gateway.quiet_hours,
        )
    except IllegalTransition:
        return _Effect()
    if started.refused is not None:
        # The gate would refuse the confirmation text (suppressed, landline, country): nothing recorded.
        return _Effect()
    if started.status is Status.OPTED_IN:
        # Joined at once (single opt-in), or already subscribed: either way, say so.
        events = () if before is Status.OPTED_IN else (("opt_in", Source.SMS.value),)
        return _Effect(reply_text([program], "welcome"), events=events)
    # Pending: the confirmation text goes out through the outbox, enqueued after the commit.
    queued = (started.confirmation.id,) if started.confirmation is not None else ()
    return _Effect(queued=queued, events=(("request", Source.SMS.value),))


def _help(ctx: _Context, classification) -> _Effect:
    """HELP / INFO: the program's HELP text, subscribed or not, recorded in the ledger."""
    rank = {Status.OPTED_IN.value: 0, Status.PENDING.value: 1}
    # The program this number is most involved with on this sender; else the sender's first.
    program = min(ctx.on_sender, key=lambda p: (rank.get(getattr(ctx.consents.get(p.id), "status", None), 2), p.id))
    service.record(ctx.session, ctx.number, "help", ctx.evidence, program=program, now=ctx.now)
    return _Effect(programs.spec_of(program).help, events=(("help", Source.SMS.value),))


_EFFECTS = {
    Intent.OPT_OUT: _opt_out,
    Intent.OPT_OUT_ALL: _opt_out,
    Intent.OPT_IN: _opt_in,
    Intent.CONFIRM: _confirm,
    Intent.JOIN: _join,
    Intent.HELP: _help,
}


def reply_text(for_programs: list[Program], template: str) -> str:
    """One reply for one or several programs: the first one's template, naming them all."""
    specs = [programs.spec_of(p) for p in for_programs]
    first = specs[0]
    if len(specs) == 1:
        return first.text(template)
    frequencies = list(dict.fromkeys(spec.frequency for spec in specs))
    combined = replace(first, name=" & ".join(spec.name for spec in specs), frequency="; ".join(frequencies))
    return combined.text(template)


__all__ = ["BadInbound", "Handled", "InboundText", "handle", "reply_text"]
