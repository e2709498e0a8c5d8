"""The send API: POST /v1/messages, POST /v1/messages/batch, GET /v1/messages/{id}.

A message is accepted only if the send gate allows it now (or defers it to the end of quiet
hours); the worker asks the gate again right before the provider call.
"""

from __future__ import annotations

import re

from flask import Blueprint, g, jsonify, request, url_for
from werkzeug.routing import BaseConverter

from gateway import metrics
from gateway.domain import decisions
from gateway.domain.decisions import Stage
from gateway.domain.gate import Kind, Reason
from gateway.domain.numbers import InvalidNumber, Number, is_e164, parse
from gateway.domain.outbound import Status
from gateway.domain.segments import MAX_BODY_CHARS
from gateway.queue.app import TaskNames
from gateway.services import batches, policy, unit_of_work
from gateway.store import idempotency, outbox, programs
from gateway.store.models import Program, utcnow
from gateway.web.auth import api_key
from gateway.web.context import current
from gateway.web.errors import ApiError
from gateway.web.json_body import json_body

bp = Blueprint("api_messages", __name__)

MESSAGE_ID = re.compile(r"^msg_[0-9a-f]{32}$")


class MessageIdConverter(BaseConverter):
    """Only message ids match /v1/messages/<id>, so /v1/messages/batch is not also a message to GET."""

    regex = MESSAGE_ID.pattern.strip("^$")


@bp.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters["message_id"] = MessageIdConverter

_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: what fits in a header
_SEND_FIELDS = frozenset({"to", "program", "body", "idempotency_key"})
_BATCH_FIELDS = frozenset({"recipients", "program", "body", "idempotency_key"})

# What each refusal means, for the people reading the error.
REFUSALS = {
    Reason.NO_CONSENT: "this number has not consented to the program",
    Reason.PENDING_CONFIRMATION: "this number has not yet confirmed its subscription (double opt-in)",
    Reason.OPTED_OUT: "this number opted out of the program",
    Reason.SUPPRESSED: "this number must never be messaged (suppression list)",
    Reason.UNREACHABLE: "messages to this number fail as unreachable",
    Reason.LANDLINE: "this number is a landline",
    Reason.COUNTRY_NOT_ALLOWED: "the program does not send to this number's country",
    Reason.FREQUENCY_CAP: "this number has had as many of these messages as it may for now: see rule",
    Reason.NO_PENDING_REQUEST: "there is no pending request to confirm",
}


def iso(moment) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _payload(fields: frozenset[str], example: str) -> dict:
    payload = json_body()
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_request", f"send a JSON object: {example}")
    unknown = sorted(set(payload) - fields)
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field {unknown[0]!r}", field=unknown[0])
    return payload


def _invalid_number(error: InvalidNumber) -> ApiError:
    return ApiError(422, "invalid_number", str(error), reason=error.reason, field="to")


def _parsed(to: str, region: str) -> Number:
    try:
        return parse(to, region)
    except InvalidNumber as error:
        raise _invalid_number(error) from None


def _text(payload: dict, name: str, maximum: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(422, "invalid_request", f"{name} is required: a string", field=name)
    if len(value) > maximum:
        raise ApiError(422, "invalid_request", f"{name} is longer than {maximum} characters", field=name)
    return value


def _idempotency_key(payload: dict) -> str | None:
    header, field = request.headers.get("Idempotency-Key"), payload.get("idempotency_key")
    if field is not None and not isinstance(field, str):
        raise ApiError(422, "invalid_request", "idempotency_key must be a string", field="idempotency_key")
    if header is not None and field is not None and header != field:
        raise ApiError(422, "invalid_request", "the Idempotency-Key header and idempotency_key differ",
                       field="idempotency_key")
    key = header if header is not None else field
    if key is not None and not (0 < len(key) <= idempotency.MAX_KEY_LENGTH and _KEY_CHARS.match(key)):
        raise ApiError(422, "invalid_request",
                       f"an idempotency key is 1-{idempotency.MAX_KEY_LENGTH} printable ASCII characters",
                       field="idempotency_key")
    return key


def _program(database, slug: str) -> Program:
    """The program (a copy in no session, briefly cached: programs.cached_by_slug), or 422."""
    program = programs.cached_by_slug(database, slug)
    if program is None:
        raise ApiError(422, "unknown_program", f"no program {slug!r}", field="program")
    return program


def _replay(answer: idempotency.Answer):
    return jsonify(answer.body), answer.status_code, {"Idempotent-Replayed": "true"}


def _begin(session, key: str | None, digest: str) -> idempotency.Answer | None:
    if key is None:
        return None
    try:
        return idempotency.begin(session, g.api_key_id, key, digest)
    except idempotency.KeyReused:
        raise ApiError(422, "idempotency_key_reused",
                       "this idempotency key was used for a different request", field="idempotency_key") from None




@bp.post("/v1/messages")
@api_key("send")
def create_message():
    """Accept one message, or refuse it with the gate's reason."""
    payload = _payload(_SEND_FIELDS, '{"to": ..., "program": ..., "body": ...}')
    to = _text(payload, "to", 64)
    slug = _text(payload, "program", 64)
    body = _text(payload, "body", MAX_BODY_CHARS)
    key = _idempotency_key(payload)
    gateway = current()
    region = gateway.settings.default_region
    # E.164 goes to the gate as given: a number we hold is not parsed again (policy.Gate.may_send_to).
    # Any other form is parsed here, so it is refused before anything is looked up.
    given = to if is_e164(to) else _parsed(to, region)
    # Before the send's own connection: on SQLite a second one could not begin while it writes.
    program = _program(gateway.db, slug)
    kind = Kind(program.category)
    now = utcnow()
    # A Core connection: the ORM session's unit of work would cost more than the SQL of one send.
    # An unkeyed send is one read (the gate's facts) and one statement writing the message with its
    # first step, so it needs no transaction (on PostgreSQL that spares BEGIN and COMMIT, two of its
    # five round trips; under READ COMMITTED a transaction around them would not make the read any
    # more current). A keyed send takes its key and stores its answer in the message's transaction.
    with unit_of_work.statements(gateway, atomic=key is not None) as (connection, outgoing):
        if key is not None:
            e164 = given if isinstance(given, str) else given.e164
            replay = _begin(connection, key, idempotency.digest(
                "/v1/messages", {"to": e164, "program": slug, "body": body}))
            if replay is not None:
                return _replay(replay)
        # A number we do not hold cannot have consented: it is refused, and not stored either.
        try:
            known, number, decision = policy.gate_of(gateway).may_send_to(connection, given, program, kind, now,
                                                                          default_region=region, stage=Stage.API)
        except InvalidNumber as error:
            raise _invalid_number(error) from None
        if not number.textable:
            raise ApiError(422, "not_mobile", f"a {number.kind.replace('_', ' ')} number cannot receive texts",
                           kind=number.kind, field="to")
        if decision.allowed or decision.deferred:
            [message] = outbox.accept_many(connection, program=program, kind=kind, body=body,
                                           decisions=[(known.id, decision)], now=now, api_key_id=g.api_key_id,
                                           idempotency_key=key)
            answer = idempotency.Answer(202, {
                "id": message.id, "status": message.status, "to": number.e164, "program": program.slug,
                "segments": message.segments, "encoding": message.encoding,
                **({"not_before": iso(message.not_before)} if message.not_before else {}),
            })
            if message.status == Status.QUEUED:
                outgoing.send_messages([message.id])
            metrics.MESSAGES_ACCEPTED.labels(kind=kind.value).inc()
        else:
            refusal = ApiError(409, decision.reason.value, REFUSALS[decision.reason], to=number.e164,
                               program=program.slug, **({"rule": dict(decision.rule)} if decision.rule else {}))
            answer = idempotency.Answer(409, refusal.body())
            metrics.MESSAGES_REFUSED.labels(reason=decision.reason.value, stage="api").inc()
        if key is not None:
            idempotency.finish(connection, g.api_key_id, key, answer)
    headers = {"Location": url_for(".show_message", message_id=answer.body["id"])} if answer.status_code == 202 else {}
    return jsonify(answer.body), answer.status_code, headers


@bp.post("/v1/messages/batch")
@api_key("send")
def create_batch():
    """One body to up to 100,000 recipients: counts accepted and refused, and who was refused why."""
    payload = _payload(_BATCH_FIELDS, '{"recipients": [...], "program": ..., "body": ...}')
    slug = _text(payload, "program", 64)
    body = _text(payload, "body", MAX_BODY_CHARS)
    recipients = payload.get("recipients")
    if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
        raise ApiError(422, "invalid_request", "recipients is required: a list of phone numbers (strings)",
                       field="recipients")
    if len(recipients) > batches.MAX_RECIPIENTS:
        raise ApiError(422, "too_many_recipients", f"at most {batches.MAX_RECIPIENTS:,} recipients per batch",
                       field="recipients", limit=batches.MAX_RECIPIENTS)
    key = _idempotency_key(payload)
    gateway = current()
    settings = gateway.settings
    program = _program(gateway.db, slug)  # before the transaction, as for one message
    with unit_of_work.transaction(gateway) as (session, outgoing):
        replay = _begin(session, key, idempotency.digest("/v1/messages/batch", {
            "recipients": recipients, "program": slug, "body": body}))
        if replay is not None:
            return _replay(replay)
        result = batches.accept(session, program=program, body=body, recipients=recipients, now=utcnow(),
                                gate=policy.gate_of(gateway),
                                default_region=settings.default_region, api_key_id=g.api_key_id)
        by_status = result.by_status
        answer = idempotency.Answer(202 if result.accepted else 200, {
            "batch_id": result.batch_id, "program": program.slug,
            "accepted": len(result.accepted), "by_status": by_status,
            "refused": result.refused_by_reason,
            "refused_recipients": [{"to": to, "reason": reason} for to, reason in result.refused],
        })
        if key is not None:
            idempotency.finish(session, g.api_key_id, key, answer)
        if by_status.get(Status.QUEUED):
            # One task fans the batch out, so this request does not spend its time on 100,000 enqueues.
            outgoing.send(TaskNames.SEND_BATCH, result.batch_id)
    for count in by_status.values():
        metrics.MESSAGES_ACCEPTED.labels(kind=program.category).inc(count)
    for reason, count in result.refused_by_reason.items():
        metrics.MESSAGES_REFUSED.labels(reason=reason, stage="api").inc(count)
    return jsonify(answer.body), answer.status_code


@bp.get("/v1/messages/<message_id:message_id>")
@api_key("read", "send")
def show_message(message_id: str):
    """A message's status, why it is there, and every step it took."""
    with current().db.transaction() as session:
        message = outbox.find(session, message_id)
        if message is None:
            raise ApiError(404, "not_found", "no such message")
        return jsonify({
            "id": message.id,
            # The caller gave us this number; it is theirs to see. None once the number was erased.
            "to": message.number.e164,
            "program": message.program.slug,
            "kind": message.kind,
            "status": message.status,
            "reason": message.reason,
            "error_code": message.error_code,
            "segments": message.segments,
            "encoding": message.encoding,
            "not_before": iso(message.not_before),
            "batch_id": message.batch_id,
            "created_at": iso(message.created_at),
            "updated_at": iso(message.updated_at),
            "history": [{"status": h.status, "reason": h.reason, "error_code": h.error_code, "at": iso(h.at),
                         **({"rule": h.rule} if h.rule else {}),
                         # The gate's record where the step was its decision, and the same in words
                         # (docs/decisions/0028-send-decisions.md): what it read, weighed and answered.
                         **({"decision": h.decision, "why": decisions.explain(h.decision)} if h.decision else {})}
                        for h in outbox.history(message)],
        })
