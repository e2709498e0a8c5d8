"""Inbound texts: one Twilio delivery is deduplicated, classified, applied and stored, once.

`handle` is the whole path behind the SMS webhook, without Flask. STOP, START, HELP and plain text
Every text, STOP or YES or chat, reads what the number holds in one statement, works out the change
in Python (gateway/services/consents.py, with gateway/domain/subscriptions.py for join keywords and
YES), then writes the consent change, its ledger events, a confirmation text for the outbox and the
InboundMessage (with the reply chosen) together, as one statement on PostgreSQL: the write happens
only if the number's ledger head is still where it was read, otherwise the text is read again
(docs/decisions/0006). A confirmation text is enqueued after the commit. The opt-out is committed
before we answer. The MessageSid is a unique key: a repeat writes nothing and gets the stored first
reply.

Decisions (see also bench/README.md for what the speed work changed):
* START/UNSTOP with nothing to restore is stored as an opt-in that did nothing, with no reply
  (Twilio lifts its own block anyway); YES with nothing pending is likewise plain text.
* With several programs on one sender, one reply names them all (the first program's template).
* HELP answers with the program the number is most involved with on that sender (opted in, then
  pending), else the sender's first program.
* A reply to a text recognised in a language (STOP, HELP, a revocation, a wrong number) goes out in
  that language when the program has the text in it ([programs.X.templates.<language>]), else in the
  program's language.
* A wrong-number reply ("wrong number", "new number who dis", in any pack's language) ends every
  consent of the number on every sender, as STOPALL does, with its own ledger input (wrong_number);
  nothing it ends can be restored by START (it was someone else's consent). The number is marked
  possibly reassigned (numbers.possibly_reassigned_at) in the same write, and one short confirmation
  answers it (docs/decisions/0022).
* A text from a number marked unreachable (30003/30005) marks it reachable again.
* Twilio's own filtering (gateway/domain/twilio_filter.py): the number's row keeps the senders Twilio
  blocks it on, read and written with the rest. No reply goes out while Twilio blocks the pair (it
  would be refused with 21610): not our STOP confirmation, not HELP. A START, UNSTOP or YES that
  lifts Twilio's block restores what was confirmed before and confirms the requests made since, as
  Twilio has just told the person "re-subscribed". A join keyword while blocked records the request
  without a confirmation text; the YES/START that lifts the block confirms it.
* An ambiguous reply ("no thanks", "not interested": Intent.AMBIGUOUS) does what each program on the
  sender says (ambiguous_replies): opt out as STOP does (the default), or keep the consent and record the
  reply in the ledger (a "review" event) for staff to resolve (gateway/services/review.py).
* An E.164 sender that phonenumbers calls invalid (but whose country it knows) is kept: see _number.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import phonenumbers
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway import logs, metrics
from gateway.domain import storable, twilio_filter
from gateway.domain.consent import IllegalTransition, Input, Source, Status
from gateway.domain.decisions import Stage
from gateway.domain.gate import Facts, Kind
from gateway.domain.keywords import Intent
from gateway.domain.numbers import E164_PATTERN, InvalidNumber, Number, is_e164, mask
from gateway.domain.numbers import parse as parse_number
from gateway.domain.outbound import Reachability, reachability_after
from gateway.domain.programs import spec_of
from gateway.domain.review import REVIEW_EVENT
from gateway.domain.subscriptions import plan_confirm, plan_start
from gateway.domain.twilio_filter import Reaction
from gateway.services import carrier, consents, policy, unit_of_work
from gateway.services.ports import Gateway
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.database import Writes
from gateway.store.models import Program, utcnow

log = logging.getLogger(__name__)

# Twilio's ids are two letters and 32 hex digits; accept any short token so a new prefix still works.
_SID = re.compile(r"^[A-Za-z0-9]{2,40}$")
_SENDER = re.compile(rf"{E164_PATTERN}|MG[0-9a-fA-F]{{32}}")  # our number or Messaging Service; fullmatch
# Advanced Opt-Out's keyword class -> what it did at Twilio (blocked, unblocked, answered HELP).
_OPT_OUT_TYPES = {"STOP": Intent.OPT_OUT, "START": Intent.OPT_IN, "HELP": Intent.HELP}


class Contended(RuntimeError):
    """The number's ledger kept moving under every attempt: a store that cannot take the text now."""


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
    # What Twilio sent as Body, when it held characters the store cannot hold (NUL, a lone surrogate):
    # `body` then has U+FFFD in their place. None: `body` is exactly what was sent.
    body_as_sent: str | None = None
    # Where the text came from when not straight from Twilio's webhook ("journal": replayed from the
    # inbound journal, its webhook answered long ago). Recorded in the evidence; no reply is stored.
    origin: str | None = None

    @property
    def answered_elsewhere(self) -> bool:
        """No reply of ours goes out: Twilio's Advanced Opt-Out replied, or the webhook was answered
        (empty) when the text was journaled."""
        return self.opt_out_type is not None or self.origin is not None

    @property
    def text_for_keywords(self) -> str:
        """The body keywords are matched in: what was sent, without the characters that cannot be
        stored (as if they were not there, so "STOP" with a stray NUL still stops)."""
        return self.body if self.body_as_sent is None else storable.without_unstorable(self.body_as_sent)

    @classmethod
    def from_form(cls, form: Mapping[str, str]) -> InboundText:
        """Read Twilio's form fields; raise BadInbound when a required one is missing or malformed."""
        sid, sender, to = (form.get(name, "").strip() for name in ("MessageSid", "From", "To"))
        for name, value in (("MessageSid", sid), ("From", sender), ("To", to)):
            if not value:
                raise BadInbound("missing_field", f"{name} is required")
        if not _SID.match(sid):
            raise BadInbound("bad_message_sid", "MessageSid is not a Twilio id")
        if not _SENDER.fullmatch(to):
            raise BadInbound("unknown_sender", "To is not one of our numbers")
        service_sid = form.get("MessagingServiceSid", "").strip() or None
        if service_sid is not None and not _SENDER.fullmatch(service_sid):
            service_sid = None  # not an MG id: no Messaging Service to look up
        opt_out_type = storable.storable_text(form.get("OptOutType", "").strip().upper()[:10]) or None
        account_sid = storable.storable_text(form.get("AccountSid", "").strip()[:40]) or None
        # A text is never refused for what it contains: what the store cannot hold is replaced in the
        # stored body, kept escaped in the evidence, and ignored when reading keywords.
        sent = form.get("Body", "")
        body = storable.storable_text(sent)
        return cls(sid, sender, to, body, service_sid, account_sid, opt_out_type,
                   body_as_sent=None if body is sent else sent)


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
    writes: Writes | None = None  # the consent change, guarded by the ledger head as read


def handle(gateway: Gateway, text: InboundText, *, now: datetime | None = None) -> Handled:
    """Process one inbound text exactly once and return the reply to give (or None)."""
    now = now or utcnow()
    # Twilio sends SMS senders in E.164; anything else ("whatsapp:+1…", a short code) is not a person's
    # number we hold consent for.
    if not is_e164(text.from_):
        raise BadInbound("invalid_number", "From is not an E.164 phone number")
    try:
        # _handle_once commits its own transaction; a confirmation it queued goes out after that.
        with unit_of_work.after_commit(gateway) as outgoing:
            handled, effect = _handle_once(gateway, text, now)
            outgoing.send_messages(handled.queued)
    except IntegrityError:
        # The MessageSid was processed before (or just now, by a concurrent delivery): its unique key
        # refused our insert, nothing this attempt wrote was kept, and the first answer stands.
        with gateway.db.statements() as connection:
            first = store_consents.first_answer(connection, text.message_sid)
        if first is None:
            raise
        return Handled(*first, duplicate=True)
    metrics.INBOUND.labels(intent=handled.intent).inc()
    for event_type, source in effect.events:
        metrics.CONSENT_EVENTS.labels(type=event_type, source=source).inc()
    # Consent changes are worth a line each (an opt-out an event line of its own); chit-chat is not.
    if any(event_type == "opt_out" for event_type, _ in effect.events):
        logs.event(log, "opt_out", message_sid=text.message_sid, number=text.from_, source="sms", to=text.to,
                   ended=len(effect.events))
    else:
        log.log(logging.INFO if effect.events else logging.DEBUG, "inbound %s from %s: %s",
                text.message_sid, mask(text.from_), handled.intent)
    return handled


# No look-up of the MessageSid first: a repeat is rare (Twilio's retry), and the unique key on
# inbound_messages refuses it (see `handle`). One query less on every text.
def _handle_once(gateway: Gateway, text: InboundText, now: datetime) -> tuple[Handled, _Effect]:
    senders = [text.to] + ([text.messaging_service_sid] if text.messaging_service_sid else [])
    with gateway.db.statements() as connection:
        on_sender = programs.cached_on_senders(connection, tuple(senders))
        if not on_sender.programs:
            raise BadInbound("unknown_sender", "To is not one of our senders")
        classification = gateway.keywords.classify(text.text_for_keywords, on_sender.join_keywords)
        intent = classification.intent
        # Twilio's Advanced Opt-Out has already acted and replied: mirror what it did, answer nothing.
        # (A join keyword configured there as an opt-in word stays a join: the block it lifts is handled below.)
        if text.opt_out_type in _OPT_OUT_TYPES \
                and not (text.opt_out_type == "STOP" and intent in (Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER)) \
                and not (text.opt_out_type == "START" and intent is Intent.JOIN):
            intent = _OPT_OUT_TYPES[text.opt_out_type]
        twilio = _TwilioSide.of(on_sender, text)
        # A word Twilio blocks on is an opt-out here too, whatever our packs call it (an Advanced Opt-Out
        # keyword we do not know, in a text replayed without its OptOutType).
        if twilio.filtering.reaction(text.text_for_keywords, False, text.opt_out_type) is Reaction.BLOCK \
                and not classification.is_opt_out and intent not in (Intent.OPT_OUT, Intent.OPT_OUT_ALL):
            intent = Intent.OPT_OUT
        return _record(connection, gateway, text, on_sender.programs, classification, intent, now, twilio)


@dataclass(frozen=True)
class _TwilioSide:
    """Twilio's filtering where this text arrived, and the senders a block there covers."""

    filtering: twilio_filter.Filtering
    scope: tuple[str, ...]  # the number texted, and its Messaging Service (Twilio blocks the whole service)

    @classmethod
    def of(cls, on_sender: programs.OnSenders, text: InboundText) -> _TwilioSide:
        scope = (text.to, text.messaging_service_sid) if text.messaging_service_sid else (text.to,)
        declared = [on_sender.filtering[s] for s in reversed(scope) if s in on_sender.filtering]
        return cls(declared[0] if declared else twilio_filter.Filtering(), scope)


def _evidence(text: InboundText, classification) -> consents.Evidence:
    return consents.Evidence(Source.SMS, reference=text.message_sid, details={
        key: value for key, value in {
            "body": text.body, "to": text.to, "messaging_service_sid": text.messaging_service_sid,
            # what our packs read the text as ("ambiguous", "opt_out"…), whatever Twilio did with it
            "class": classification.intent.value,
            "keyword": classification.keyword, "language": classification.language,
            "opt_out_type": text.opt_out_type, "origin": text.origin,
            "body_as_sent_escaped": None if text.body_as_sent is None else storable.escaped(text.body_as_sent),
        }.items() if value is not None
    })


def _inbound_row(text: InboundText, number_id: int, intent: Intent, reply: str | None, now: datetime) -> dict:
    return {
        "message_sid": text.message_sid, "account_sid": text.account_sid, "number_id": number_id,
        "to_number": text.to, "messaging_service_sid": text.messaging_service_sid, "body": text.body,
        "intent": intent.value, "opt_out_type": text.opt_out_type, "reply": reply, "received_at": now,
    }


# How often a text is re-read when the number's ledger moved between our read and our write (another
# text or an API call for the same number at the same moment); then the text goes to the inbound journal.
_ATTEMPTS = 5


def _record(connection: Connection, gateway: Gateway, text: InboundText, on_sender: list[Program],
            classification, intent: Intent, now: datetime, twilio: _TwilioSide) -> tuple[Handled, _Effect]:
    """Read the number and its consents in one statement, then write the change, its ledger events,
    a confirmation text and the inbound text in one statement (one transaction on SQLite).

    No lock is held in between: the write happens only if the number's ledger head is still where we
    read it, and otherwise we read again. So two round trips on PostgreSQL, whatever the text.
    """
    everything = intent in (Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER)
    ended = programs.cached_on_senders(connection, programs.EVERY_PROGRAM).programs if everything else on_sender
    act = _PLANS.get(intent)
    evidence = _evidence(text, classification)
    joining = next((p for p in on_sender if p.slug == classification.program), None) if intent is Intent.JOIN else None
    # A join keyword may text the number (the confirmation): the same read tells the gate whether it is suppressed.
    digest = consents.suppression_digest(gateway.settings.suppression_key, text.from_) if joining else None
    body = text.text_for_keywords
    # A word that would lift Twilio's block needs the sender's consents read, whatever our packs call it.
    may_unblock = twilio.filtering.reaction(body, True, text.opt_out_type) is Reaction.UNBLOCK
    for _ in range(_ATTEMPTS):
        state = store_consents.held(connection, text.from_, [p.id for p in ended] if act or may_unblock else [],
                                    digest=digest, waiting=intent in _MAY_END)
        if state is None:
            store_consents.create_number(connection, _number(text.from_, gateway.settings.default_region))
            continue
        blocked = twilio_filter.is_blocked(state.twilio_blocks, twilio.scope)
        at_twilio = twilio_filter.handle(twilio.filtering, body, blocked, text.opt_out_type)
        read = _Read(state, on_sender, ended, evidence, now, text.from_, text.to, joining, gateway, at_twilio,
                     classification.language)
        if at_twilio.reaction is Reaction.UNBLOCK:
            # Twilio has just told the person "re-subscribed": make it true here (and a join keyword
            # configured at Twilio as an opt-in word also asks to join).
            effect = _resubscribe(read)
        else:
            effect = act(read) if act else _Effect()
        if text.answered_elsewhere or not at_twilio.replies_carried:
            effect.reply = None  # Twilio answered already, or would refuse our reply (21610)
        writes = effect.writes or Writes()
        blocks = twilio_filter.with_block(state.twilio_blocks, twilio.scope, at_twilio.blocked_after) \
            if at_twilio.blocked_after != blocked else state.twilio_blocks
        if blocks != state.twilio_blocks:
            store_consents.set_twilio_blocks(writes, state, blocks)
        reachable = carrier.reachability_columns(state.reachability, Reachability.OK)
        if reachable is not None:
            store_consents.update_number(writes, state.number_id, reachable)
        store_consents.store_inbound(writes, _inbound_row(text, state.number_id, intent, effect.reply, now))
        if writes.execute(connection):
            return Handled(intent.value, effect.reply, queued=effect.queued), effect
    raise Contended(f"inbound {text.message_sid}: the number's ledger kept moving")



def _number(e164: str, region: str) -> Number:
    """A new sender's number. A known number was validated when its row was made: only a new one is parsed."""
    try:
        return parse_number(e164, region)
    except InvalidNumber as error:
        # phonenumbers' metadata can lag behind new number ranges, and Twilio (whose request is signed)
        # saw a handset text from this number: an opt-out must not be lost to our metadata. A number
        # kept this way has no known region, so the send gate never texts it (country_not_allowed).
        try:
            phonenumbers.parse(e164)
        except phonenumbers.NumberParseException:
            raise BadInbound("invalid_number", f"From is not a phone number ({error.reason})") from None
        return Number(e164=e164, kind="unknown", region=None)


@dataclass(frozen=True)
class _Read:
    """What a text's effect is worked out from."""

    state: store_consents.Held  # the number's ledger head and its consents, read in one statement
    on_sender: list[Program]
    ended: list[Program]  # what an opt-out ends: the sender's programs, or all of them (STOPALL)
    evidence: consents.Evidence
    now: datetime
    e164: str  # the number that texted
    to: str  # the number texted (a Messaging Service may hold programs of other senders)
    joining: Program | None  # the program whose join keyword this is
    gateway: Gateway
    twilio: twilio_filter.Outcome  # what Twilio did with this text: whether a text from this sender gets through
    language: str | None = None  # the language the text was recognised in: replies go out in it where they can


def _events(changes) -> tuple[tuple[str, str], ...]:
    return tuple((change.event.type, change.event.source) for change in changes)


def _opt_out(read: _Read) -> _Effect:
    """STOP family: every program on this sender (STOPALL: every program we run) ends."""
    planned = consents.plan(read.state, read.ended, Input.KEYWORD_STOP, read.evidence, now=read.now)
    # One confirmation, naming what ended, and nothing else in it.
    return _Effect(reply_text(read.ended, "opt_out", read.language), events=_events(planned.changes),
                   writes=planned.writes)


def _wrong_number(read: _Read) -> _Effect:
    """A wrong-number reply: every program of the number ends (read.ended is all of them), none can be
    restored by START, and the number is marked possibly reassigned, all in one write. One short
    confirmation answers it, from this sender's programs."""
    planned = consents.plan(read.state, read.ended, Input.WRONG_NUMBER, read.evidence, now=read.now)
    store_consents.update_number(planned.writes, read.state.number_id, {"possibly_reassigned_at": read.now})
    return _Effect(reply_text(read.on_sender, "wrong_number", read.language), events=_events(planned.changes),
                   writes=planned.writes)


def _ambiguous(read: _Read) -> _Effect:
    """A whole reply that may or may not revoke ("no thanks", "not interested"). Each program on this
    sender decides (ambiguous_replies): "opt_out" ends its consent as STOP does (and can be restored by
    START), "review" keeps it and records the reply in the ledger for staff to resolve (a `review`
    event: it changes no state, its input being no consent input; gateway/services/review.py lists it).
    The opt-out confirmation names what ended; a reply that ended nothing gets no answer (anything said
    would read as a sales reply to a "no")."""
    ending = [p for p in read.on_sender if spec_of(p).ambiguous_replies == "opt_out"]
    kept = [p for p in read.on_sender if p not in ending]
    planned = consents.plan_steps(read.state, [(p, Input.AMBIGUOUS_REPLY) for p in ending], read.evidence,
                                  now=read.now, records=[(REVIEW_EVENT, p) for p in kept])
    return _Effect(reply_text(ending, "opt_out", read.language) if ending else None,
                   events=_events(planned.changes) + tuple((REVIEW_EVENT, Source.SMS.value) for _ in kept),
                   writes=planned.writes)


def _opt_in(read: _Read) -> _Effect:
    """START / UNSTOP: restore exactly the programs this number had confirmed before opting out here."""
    restorable = _restorable(read)
    if not restorable:
        # Nothing to restore: Twilio lifts its own block anyway; we record nothing and say nothing.
        return _Effect()
    planned = consents.plan(read.state, restorable, Input.KEYWORD_START, read.evidence, now=read.now)
    return _Effect(reply_text(restorable, "opt_in", read.language), events=_events(planned.changes),
                   writes=planned.writes)


def _help(read: _Read) -> _Effect:
    """HELP / INFO: the program's HELP text, subscribed or not, recorded in the ledger."""
    rank = {Status.OPTED_IN.value: 0, Status.PENDING.value: 1}
    held = read.state.consents
    # The program this number is most involved with on this sender; else the sender's first.
    program = min(read.on_sender, key=lambda p: (rank.get(getattr(held.get(p.id), "status", None), 2), p.id))
    planned = consents.plan_record(read.state, "help", read.evidence, now=read.now, program=program)
    return _Effect(spec_of(program).text("help", read.language), events=(("help", Source.SMS.value),),
                   writes=planned.writes)


def _pending(read: _Read) -> list[Program]:
    """The programs on this sender with a live pending request: those on the number texted first, then
    on its Messaging Service; each in the order asked."""
    by_id = {p.id: p for p in read.on_sender}
    held = sorted((row for row in read.state.consents.values() if row.program_id in by_id),
                  key=lambda row: (read.to not in (by_id[row.program_id].sender,
                                                   by_id[row.program_id].messaging_service_sid), row.id))
    return [by_id[program_id] for program_id in plan_confirm(held, read.now)]


def _confirm(read: _Read) -> _Effect:
    """YES: confirm this number's live pending requests on this sender; otherwise it is plain text."""
    confirmed = _pending(read)
    if not confirmed:
        return _Effect()
    planned = consents.plan(read.state, confirmed, Input.CONFIRM_YES, read.evidence, now=read.now)
    return _Effect(reply_text(confirmed, "welcome"), events=_events(planned.changes), writes=planned.writes)


def _restorable(read: _Read) -> list[Program]:
    return [p for p in read.on_sender
            if consents.allowed(consents.state_of(read.state.consents.get(p.id)), Input.KEYWORD_START)]


def _resubscribe(read: _Read) -> _Effect:
    """START, UNSTOP or YES (or an opt-in word of Advanced Opt-Out) that lifted Twilio's block: Twilio
    has told the person they are re-subscribed, so every program they had confirmed on this sender
    before the opt-out is restored and every request made since is confirmed, this text the evidence
    of both. A join keyword among those words also asks to join its program."""
    restored, confirmed = _restorable(read), _pending(read)
    steps = [(p, Input.KEYWORD_START) for p in restored] + [(p, Input.CONFIRM_YES) for p in confirmed]
    joining = read.joining
    if joining is not None and joining not in restored and joining not in confirmed:
        return _join(read, also=steps)
    if not steps:
        # Nothing was ever confirmed here: Twilio lifted its block, and that is all there is to it.
        return _Effect()
    evidence = read.evidence.with_details(twilio="unblocked: the person was told they are re-subscribed")
    planned = consents.plan_steps(read.state, steps, evidence, now=read.now)
    programs_ = restored + confirmed
    reply = reply_text(programs_, "welcome" if confirmed else "opt_in")
    return _Effect(reply, events=_events(planned.changes), writes=planned.writes)


def _join(read: _Read, also: list[tuple[Program, Input]] | None = None) -> _Effect:
    """A program's join keyword: double opt-in asks for YES (a confirmation text through the outbox,
    written with the request); single opt-in joins now.

    While Twilio blocks the number here, the request is recorded but nothing is texted (Twilio would
    refuse it): the YES or START that lifts the block confirms it. `also`: steps planned with it (what
    a join keyword that lifted Twilio's block restores and confirms).
    """
    program, state, also = read.joining, read.state, also or []
    carried = read.twilio.replies_carried
    try:
        step = plan_start(consents.state_of(state.consents.get(program.id)), Input.KEYWORD_JOIN,
                          double_opt_in=program.double_opt_in or not carried)
    except IllegalTransition:
        step = False
    if step is None or step is False:
        if also:
            return _resubscribe_only(read, also)
        # Already subscribed: say so, change nothing (said only if Twilio carries it).
        return _Effect(reply_text([program], "welcome") if step is None else None)
    if step is Input.KEYWORD_JOIN_DIRECT:
        planned = consents.plan_steps(state, [*also, (program, step)], read.evidence, now=read.now)
        joined = [p for p, _ in also] + [program]
        return _Effect(reply_text(joined, "welcome"), events=_events(planned.changes), writes=planned.writes)
    expires_at = read.now + timedelta(hours=read.gateway.settings.pending_ttl_hours)
    # Ask the one gate about the state this request would create, before creating it, and about the
    # number as this text leaves it (a text from an unreachable handset proves it reachable: the write
    # records that too).
    reachability = reachability_after(state.reachability, Reachability.OK)
    facts = Facts(read.e164, reachability, Status.PENDING.value, expires_at, state.suppressed,
                  region=state.region, kind=state.kind)
    gate = policy.gate_of(read.gateway)
    decision = gate.decide(facts, program, Kind.CONFIRMATION, read.now)
    if not decision.allowed:
        # suppressed, landline, country: nothing recorded for the join, nothing said
        return _resubscribe_only(read, also) if also else _Effect()
    if not carried:
        evidence = read.evidence.with_details(
            program_version=program.version,
            confirmation_not_sent="Twilio blocks this number on this sender since its opt-out; the YES, START "
                                  "or UNSTOP that lifts the block confirms this request")
        planned = consents.plan(state, [program], step, evidence, now=read.now, expires_at=expires_at)
        return _Effect(events=_events(planned.changes), writes=planned.writes)
    body = spec_of(program).text("confirmation")
    evidence = read.evidence.with_details(confirmation_text=body, program_version=program.version)
    planned = consents.plan_steps(state, [*also, (program, step)], evidence, now=read.now, expires_at=expires_at)
    # Recorded only now: the decision's record is kept with the confirmation text, and none is sent
    # while Twilio blocks the number (above).
    decision = gate.recorded(decision, facts, program, Kind.CONFIRMATION, read.now, Stage.CONFIRMATION)
    message_id = outbox.accept_into(planned.writes, number_id=state.number_id, program=program,
                                    kind=Kind.CONFIRMATION, body=body, decision=decision, now=read.now)
    reply = reply_text([p for p, _ in also], "opt_in") if also else None
    return _Effect(reply, queued=(message_id,), events=_events(planned.changes), writes=planned.writes)


def _resubscribe_only(read: _Read, steps: list[tuple[Program, Input]]) -> _Effect:
    planned = consents.plan_steps(read.state, steps, read.evidence, now=read.now)
    return _Effect(reply_text([p for p, _ in steps], "opt_in"), events=_events(planned.changes),
                   writes=planned.writes)


# The intents whose plan may end a consent, and so block the number's waiting messages in its write.
_MAY_END = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER, Intent.AMBIGUOUS})

_PLANS = {
    Intent.OPT_OUT: _opt_out,
    Intent.OPT_OUT_ALL: _opt_out,
    Intent.WRONG_NUMBER: _wrong_number,
    Intent.AMBIGUOUS: _ambiguous,
    Intent.OPT_IN: _opt_in,
    Intent.HELP: _help,
    Intent.CONFIRM: _confirm,
    Intent.JOIN: _join,
}


def reply_text(for_programs: list[Program], template: str, language: str | None = None) -> str:
    """One reply for one or several programs: the first one's template (in `language` if it has the
    text in it, else in its own language), naming them all."""
    specs = [spec_of(p) for p in for_programs]
    first = specs[0]
    if len(specs) == 1:
        return first.text(template, language)
    return first.text(template, language, name=" & ".join(spec.name for spec in specs),
                      frequency="; ".join(dict.fromkeys(spec.frequency for spec in specs)))


__all__ = ["BadInbound", "Contended", "Handled", "InboundText", "handle", "reply_text"]
