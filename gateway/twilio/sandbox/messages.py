"""The simulated Twilio: creates messages the way Twilio's API does (refusals and codes included),
receives texts from handsets, keeps Twilio's own opt-out list, and plans each message's status steps.

Knows nothing of Flask; `api.py` and `phone.py` call it inside a transaction, and the courier in
`callbacks.py` carries out the steps it plans.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime

import phonenumbers
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.orm import Session

from gateway.domain import twilio_filter
from gateway.domain.numbers import InvalidNumber, parse
from gateway.domain.programs import spec_of
from gateway.domain.segments import MAX_BODY_CHARS
from gateway.domain.segments import count as count_segments
from gateway.domain.twilio_filter import TWILIO_REPLIES, Filtering, OptOutHandling, Reaction
from gateway.store import programs
from gateway.twilio.sandbox.config import SandboxConfig
from gateway.twilio.sandbox.models import SandboxEvent, SandboxMessage, SandboxOptOut, SandboxRefusal
from gateway.twilio.statuses import TwilioStatus

API_VERSION = "2010-04-01"
SID_RE = re.compile(r"^(SM|MM)[0-9a-f]{32}$")
MESSAGING_SERVICE_RE = re.compile(r"^MG[0-9a-fA-F]{32}$")
ALPHANUMERIC_SENDER_RE = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")

# Twilio's own opt-out filtering, per sender, in the mode the sender's programs declare
# (`opt_out_handling`): the same model the gateway keeps (gateway/domain/twilio_filter.py), so the
# sandbox behaves as an account configured the way the programs file says.

# code -> (HTTP status, message template), worded as Twilio words them.
ERRORS: dict[int, tuple[int, str]] = {
    20001: (400, "{message}"),
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {uri} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21212: (400, "The 'From' number {sender} is not a valid phone number, shortcode, or alphanumeric sender ID."),
    21408: (400, "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}."),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21612: (400, "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number: "
                 "{sender} via SMS."),
    21614: (400, "'To' number is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21701: (400, "The Messaging Service Sid {sender} is invalid."),
}
# Delivery failures, as the Message resource's error_message shows them.
DELIVERY_ERRORS = {
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}


class TwilioError(Exception):
    """An error answer as Twilio gives it: HTTP status plus {code, message, more_info, status}."""

    def __init__(self, code: int, status: int | None = None, **fields: str):
        default_status, template = ERRORS.get(code, (400, "Error {code}"))
        self.code, self.status = code, status or default_status
        self.message = template.format(code=code, **fields)
        super().__init__(f"{self.code}: {self.message}")

    def body(self) -> dict:
        return {"code": self.code, "message": self.message,
                "more_info": f"https://www.twilio.com/docs/errors/{self.code}", "status": self.status}


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


def rfc2822(moment: datetime | None) -> str | None:
    """Twilio's date format: 'Thu, 24 Aug 2023 05:01:45 +0000' (the client reads nothing else)."""
    return format_datetime(moment.replace(microsecond=0)) if moment else None


@dataclass(frozen=True)
class Outbound:
    """The fields of a CreateMessage request we emulate."""

    to: str = ""
    sender: str = ""  # From
    messaging_service_sid: str = ""
    body: str = ""
    status_callback: str = ""
    media_count: int = 0


def _e164(raw: str) -> str | None:
    try:
        return parse(raw, "US").e164
    except InvalidNumber:
        return None


def create(session: Session, config: SandboxConfig, account_sid: str, request: Outbound, *, now: datetime,
           origin: str = "api") -> SandboxMessage:
    """Accept a message as Twilio would, or raise TwilioError. A refusal naming a usable recipient is
    recorded (the phone page shows it), so callers must commit even when this raises."""
    to, sender, service = request.to.strip(), request.sender.strip(), request.messaging_service_sid.strip()
    if not to:
        raise TwilioError(21604)
    if not sender and not service:
        raise TwilioError(21603)
    if not request.body and not request.media_count:
        raise TwilioError(21602)
    if len(request.body) > MAX_BODY_CHARS:
        raise TwilioError(21617)
    if service and not MESSAGING_SERVICE_RE.match(service):
        raise TwilioError(21701, sender=service)
    if sender and not (_e164(sender) or ALPHANUMERIC_SENDER_RE.match(sender)):
        raise TwilioError(21212, sender=sender)
    sender = (_e164(sender) or sender) if sender else ""
    handset = _e164(to)
    if handset is None:
        raise _refuse(session, TwilioError(21211, to=to), to, sender or service, request.body, origin, now)
    from_number = sender or _service_number(session, config, service, handset)

    test = config.test_numbers.get(handset)
    if test and test.create_error and _still_failing(session, test, handset):
        error = TwilioError(test.create_error, test.http_status, to=handset, sender=from_number)
        raise _refuse(session, error, handset, sender or service, request.body, origin, now)
    if is_opted_out(session, config, handset, from_number, service or None):
        raise _refuse(session, TwilioError(21610), handset, sender or service, request.body, origin, now)

    segments = count_segments(request.body)
    message = SandboxMessage(
        sid=new_sid("MM" if request.media_count else "SM"), account_sid=account_sid,
        direction="outbound-api" if origin == "api" else "outbound-reply", origin=origin, handset=handset,
        to_number=handset, from_number=from_number, messaging_service_sid=service or None, body=request.body,
        num_segments=segments.segments, num_media=request.media_count,
        # Twilio answers "accepted" when a Messaging Service still has to pick the sender.
        status=TwilioStatus.ACCEPTED if service and not sender else TwilioStatus.QUEUED,
        status_callback=request.status_callback.split("#", 1)[0] or None,
        date_created=now, date_updated=now,
    )
    session.add(message)
    final_status, error_code = (test.final_status, test.error_code) if test else (TwilioStatus.DELIVERED, None)
    steps = [(TwilioStatus.QUEUED, None, 0.0), (TwilioStatus.SENT, None, config.sent_delay),
             (final_status, error_code, config.final_delay)]
    if final_status == TwilioStatus.FAILED:  # failed means it never left Twilio
        steps.pop(1)
    for status, code, delay in steps:
        session.add(SandboxEvent(message_sid=message.sid, kind="status", message_status=status, error_code=code,
                                 due_at=now + timedelta(seconds=delay)))
    session.flush()
    return message


def _refuse(session: Session, error: TwilioError, handset: str, sender: str, body: str, origin: str,
            now: datetime) -> TwilioError:
    session.add(SandboxRefusal(handset=handset[:40], sender=sender[:40] or None, origin=origin, body=body,
                               error_code=error.code, error_message=error.message[:300], created_at=now))
    return error


def _still_failing(session: Session, test, handset: str) -> bool:
    """A test number with `times` fails only its first `times` creates: a transient error."""
    if test.times is None:
        return True
    earlier = session.scalars(
        select(SandboxRefusal.id).where(SandboxRefusal.handset == handset,
                                        SandboxRefusal.error_code == test.create_error)
    ).all()
    return len(earlier) < test.times


def _service_number(session: Session, config: SandboxConfig, service_sid: str, handset: str) -> str:
    """The number a Messaging Service sends from: the one it used for this handset before (sticky
    sender), else the first of its pool."""
    pool = config.service_numbers(service_sid)
    previous = session.scalar(
        select(SandboxMessage.from_number)
        .where(SandboxMessage.handset == handset, SandboxMessage.messaging_service_sid == service_sid,
               SandboxMessage.direction != "inbound")
        .order_by(SandboxMessage.date_created.desc()).limit(1)
    )
    return previous if previous in pool else pool[0]


def service_of(session: Session, config: SandboxConfig, number: str, handset: str) -> str | None:
    """The Messaging Service our `number` belongs to, as far as this handset can tell."""
    configured = config.service_of(number)
    if configured:
        return configured
    return session.scalar(
        select(SandboxMessage.messaging_service_sid)
        .where(SandboxMessage.handset == handset, SandboxMessage.from_number == number,
               SandboxMessage.messaging_service_sid.is_not(None))
        .order_by(SandboxMessage.date_created.desc()).limit(1)
    )


def is_opted_out(session: Session, config: SandboxConfig, handset: str, from_number: str,
                 service_sid: str | None) -> bool:
    """Twilio blocks per sender: the number, and the whole Messaging Service it belongs to."""
    senders = {from_number, service_sid, service_of(session, config, from_number, handset)} - {None, ""}
    return session.scalar(
        select(SandboxOptOut.handset).where(SandboxOptOut.handset == handset, SandboxOptOut.sender.in_(senders))
        .limit(1)
    ) is not None


def receive(session: Session, config: SandboxConfig, account_sid: str, *, handset: str, to: str, body: str,
            now: datetime, webhook: bool = True) -> SandboxMessage:
    """A handset texts one of our numbers: store it, apply Twilio's STOP/START handling, and plan
    the post to our inbound webhook. Raises ValueError when the text could not be sent.

    `webhook=False` keeps the text in the log without posting it: a webhook lost on the way (our web
    process down, a deploy, a network fault), which only the message log still knows of.
    """
    handset_e164, to_e164 = _e164(handset), _e164(to)
    if handset_e164 is None:
        raise ValueError("the phone's number is not a valid phone number")
    if to_e164 is None:
        raise ValueError("the number texted is not a valid phone number")
    if not body.strip():
        raise ValueError("type a message")
    if len(body) > MAX_BODY_CHARS:
        raise ValueError(f"a text holds at most {MAX_BODY_CHARS} characters")
    service = service_of(session, config, to_e164, handset_e164)
    message = SandboxMessage(
        sid=new_sid(), account_sid=account_sid, direction="inbound", origin="phone", handset=handset_e164,
        to_number=to_e164, from_number=handset_e164, messaging_service_sid=service, body=body,
        num_segments=count_segments(body).segments, status=TwilioStatus.RECEIVED, date_created=now, date_updated=now,
        date_sent=now,
    )
    session.add(message)
    if webhook:
        session.add(SandboxEvent(message_sid=message.sid, kind="inbound", due_at=now))
    else:
        message.webhook_note = "webhook lost (simulated): only the message log has this text"
    senders = [s for s in (to_e164, service) if s]
    filtering = filtering_of(session, senders)
    blocked = is_opted_out(session, config, handset_e164, to_e164, service)
    reaction = twilio_filter.handle(filtering, body, blocked).reaction
    if reaction is Reaction.BLOCK:
        for sender in senders:
            if session.get(SandboxOptOut, (handset_e164, sender)) is None:
                session.add(SandboxOptOut(handset=handset_e164, sender=sender, keyword=twilio_filter.keyword_of(body),
                                          created_at=now))
    elif reaction is Reaction.UNBLOCK:
        session.execute(delete(SandboxOptOut).where(SandboxOptOut.handset == handset_e164,
                                                    SandboxOptOut.sender.in_(senders)))
    if reaction is not Reaction.NONE and config.auto_replies:
        _auto_reply(session, config, message, TWILIO_REPLIES[reaction], now + timedelta(milliseconds=1))
    session.flush()
    return message


def filtering_of(session: Session, senders: list[str]) -> Filtering:
    """How the sender handles opt-outs, as its programs declare (a Messaging Service's setting covers
    its numbers); Twilio's default where no program says."""
    for sender in reversed(senders):
        declared = programs.on_sender(session, sender)
        if declared:
            return spec_of(declared[0]).filtering
    return Filtering()


def _auto_reply(session: Session, config: SandboxConfig, inbound: SandboxMessage, text: str, now: datetime) -> None:
    """Twilio's own answer to a STOP, START or HELP word; it goes out whatever the block list says."""
    message = SandboxMessage(
        sid=new_sid(), account_sid=inbound.account_sid, direction="outbound-reply", origin="twilio",
        handset=inbound.handset, to_number=inbound.handset, from_number=inbound.to_number,
        messaging_service_sid=inbound.messaging_service_sid, body=text,
        num_segments=count_segments(text).segments, status=TwilioStatus.QUEUED, date_created=now, date_updated=now,
    )
    session.add(message)
    for status, delay in ((TwilioStatus.QUEUED, 0.0), (TwilioStatus.SENT, config.sent_delay),
                          (TwilioStatus.DELIVERED, config.final_delay)):
        session.add(SandboxEvent(message_sid=message.sid, kind="status", message_status=status,
                                 due_at=now + timedelta(seconds=delay)))


def apply_status(message: SandboxMessage, status: str, error_code: int | None, now: datetime) -> None:
    """Move a message to the status a planned step names."""
    message.status, message.date_updated = status, now
    if status == TwilioStatus.SENT:
        message.date_sent = now
    if error_code:
        message.error_code, message.error_message = error_code, DELIVERY_ERRORS.get(error_code, "Delivery failed")


def status_callback_params(message: SandboxMessage, now: datetime) -> dict[str, str]:
    """The form Twilio posts to a StatusCallback."""
    params = {
        "AccountSid": message.account_sid, "ApiVersion": API_VERSION, "From": message.from_number or "",
        "MessageSid": message.sid, "MessageStatus": message.status, "SmsSid": message.sid,
        "SmsStatus": message.status, "To": message.to_number,
    }
    if message.messaging_service_sid:
        params["MessagingServiceSid"] = message.messaging_service_sid
    if message.error_code:
        params["ErrorCode"] = str(message.error_code)
    if message.status in (TwilioStatus.DELIVERED, TwilioStatus.UNDELIVERED):
        params["RawDlrDoneDate"] = now.strftime("%y%m%d%H%M")
    return params


def _country(e164: str) -> str:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164)) or ""
    except phonenumbers.NumberParseException:
        return ""


def inbound_params(message: SandboxMessage, filtering: Filtering | None = None) -> dict[str, str]:
    """The form Twilio posts to a number's incoming-message webhook. With Advanced Opt-Out
    (`filtering`), a text that is one of its keywords carries the keyword's class as OptOutType."""
    params = {
        "ToCountry": _country(message.to_number), "ToState": "", "ToCity": "", "ToZip": "",
        "FromCountry": _country(message.from_number or ""), "FromState": "", "FromCity": "", "FromZip": "",
        "SmsMessageSid": message.sid, "SmsSid": message.sid, "MessageSid": message.sid,
        "AccountSid": message.account_sid, "From": message.from_number or "", "To": message.to_number,
        "Body": message.body, "NumMedia": "0", "NumSegments": str(message.num_segments),
        "SmsStatus": TwilioStatus.RECEIVED, "ApiVersion": API_VERSION,
    }
    if message.messaging_service_sid:
        params["MessagingServiceSid"] = message.messaging_service_sid
    if filtering is not None and filtering.handling is OptOutHandling.TWILIO_ADVANCED:
        word = twilio_filter.keyword_of(message.body)
        for opt_out_type, words in (("STOP", filtering.opt_out), ("START", filtering.opt_in), ("HELP", filtering.help)):
            if word in words:
                params["OptOutType"] = opt_out_type
                break
    return params


def resource(message: SandboxMessage) -> dict:
    """The Message resource as Twilio's REST API renders it (snake_case, RFC 2822 dates)."""
    base = f"/{API_VERSION}/Accounts/{message.account_sid}/Messages/{message.sid}"
    return {
        "account_sid": message.account_sid,
        "api_version": API_VERSION,
        "body": message.body,
        "date_created": rfc2822(message.date_created),
        "date_sent": rfc2822(message.date_sent),
        "date_updated": rfc2822(message.date_updated),
        "direction": message.direction,
        "error_code": message.error_code,
        "error_message": message.error_message,
        # A Messaging Service has not picked the sender yet while the message is "accepted".
        "from": None if message.status == TwilioStatus.ACCEPTED else message.from_number,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": str(message.num_media),
        "num_segments": str(message.num_segments),
        "price": None,
        "price_unit": "USD",
        "sid": message.sid,
        "status": message.status,
        "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
        "to": message.to_number,
        "uri": f"{base}.json",
    }


def get(session: Session, account_sid: str, sid: str) -> SandboxMessage | None:
    message = session.get(SandboxMessage, sid)
    return message if message is not None and message.account_sid == account_sid else None


@dataclass(frozen=True)
class Filters:
    to: str | None = None
    sender: str | None = None
    sent_on: tuple[datetime, datetime] | None = None  # [start, end)
    sent_after: datetime | None = None  # inclusive
    sent_before: datetime | None = None  # inclusive


def find(session: Session, account_sid: str, filters: Filters, *, offset: int, limit: int,
         after_sid: str | None = None) -> list[SandboxMessage]:
    """Messages matching Twilio's list filters, newest first; from `offset`, or after the message
    `after_sid` (a page token: a message logged while a caller pages does not shift the pages)."""
    query = select(SandboxMessage).where(SandboxMessage.account_sid == account_sid)
    if after_sid is not None:
        last = session.get(SandboxMessage, after_sid)
        if last is None:
            return []
        query = query.where(or_(SandboxMessage.date_created < last.date_created,
                                and_(SandboxMessage.date_created == last.date_created, SandboxMessage.sid < last.sid)))
        offset = 0
    if filters.to:
        query = query.where(SandboxMessage.to_number == (_e164(filters.to) or filters.to))
    if filters.sender:
        query = query.where(SandboxMessage.from_number == (_e164(filters.sender) or filters.sender))
    if filters.sent_on:
        start, end = filters.sent_on
        query = query.where(SandboxMessage.date_sent >= start, SandboxMessage.date_sent < end)
    if filters.sent_after:
        query = query.where(SandboxMessage.date_sent >= filters.sent_after)
    if filters.sent_before:
        query = query.where(SandboxMessage.date_sent <= filters.sent_before)
    query = query.order_by(SandboxMessage.date_created.desc(), SandboxMessage.sid.desc())
    return list(session.scalars(query.offset(offset).limit(limit)))


@dataclass(frozen=True)
class Entry:
    """One line of a conversation on the phone page."""

    id: str
    direction: str  # "in": the handset texted us; "out": we (or Twilio) texted the handset
    our_number: str | None
    messaging_service_sid: str | None
    body: str
    status: str
    error_code: int | None
    error_message: str | None
    origin: str
    at: datetime
    webhook_status: int | None = None
    webhook_error_code: int | None = None
    webhook_note: str | None = None


def conversation(session: Session, handset: str, limit: int = 300) -> list[Entry]:
    """Everything between `handset` and our senders, oldest first: messages and refused attempts."""
    entries = []
    messages = session.scalars(
        select(SandboxMessage).where(SandboxMessage.handset == handset)
        .order_by(SandboxMessage.date_created.desc()).limit(limit)
    )
    for m in messages:
        inbound = m.direction == "inbound"
        entries.append(Entry(
            id=m.sid, direction="in" if inbound else "out", our_number=m.to_number if inbound else m.from_number,
            messaging_service_sid=m.messaging_service_sid, body=m.body, status=m.status, error_code=m.error_code,
            error_message=m.error_message, origin=m.origin, at=m.date_created, webhook_status=m.webhook_status,
            webhook_error_code=m.webhook_error_code, webhook_note=m.webhook_note,
        ))
    refusals = session.scalars(
        select(SandboxRefusal).where(SandboxRefusal.handset == handset)
        .order_by(SandboxRefusal.created_at.desc()).limit(limit)
    )
    for r in refusals:
        is_service = bool(r.sender and r.sender.startswith("MG"))
        entries.append(Entry(
            id=f"refusal-{r.id}", direction="out", our_number=None if is_service else r.sender,
            messaging_service_sid=r.sender if is_service else None, body=r.body, status="refused",
            error_code=r.error_code, error_message=r.error_message, origin=r.origin, at=r.created_at,
        ))
    entries.sort(key=lambda e: e.at)
    return entries[-limit:]


def handsets(session: Session, limit: int = 50) -> list[str]:
    """Numbers the sandbox has seen, most recent first."""
    rows = session.execute(
        select(SandboxMessage.handset, SandboxMessage.date_created).order_by(SandboxMessage.date_created.desc())
        .limit(limit * 20)
    )
    seen: dict[str, None] = {}
    for handset, _ in rows:
        seen.setdefault(handset, None)
    return list(seen)[:limit]


def opted_out_senders(session: Session, handset: str) -> list[str]:
    return list(session.scalars(select(SandboxOptOut.sender).where(SandboxOptOut.handset == handset)
                                .order_by(SandboxOptOut.sender)))

