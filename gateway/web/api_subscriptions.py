"""POST /v1/subscriptions: a business asks us to start double opt-in for a number."""

from __future__ import annotations

import ipaddress
import json
import math
import uuid
from datetime import timedelta

from flask import Blueprint, g, jsonify, request

from gateway.domain import storable
from gateway.domain.consent import Input, Source
from gateway.domain.numbers import InvalidNumber, parse
from gateway.services import abuse, consents, subscriptions, unit_of_work
from gateway.store.models import utcnow
from gateway.web.auth import api_key
from gateway.web.context import current
from gateway.web.errors import ApiError
from gateway.web.json_body import json_body

bp = Blueprint("api_subscriptions", __name__)

MAX_EVIDENCE_BYTES = 8192
MAX_EVIDENCE_KEYS = 32


def _evidence(raw: object) -> dict:
    """The caller's own evidence: a small JSON object, kept as given."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_evidence", "evidence must be a JSON object")
    if len(raw) > MAX_EVIDENCE_KEYS or len(json.dumps(raw)) > MAX_EVIDENCE_BYTES:
        raise ApiError(422, "invalid_evidence",
                       f"evidence is limited to {MAX_EVIDENCE_KEYS} keys and {MAX_EVIDENCE_BYTES} bytes")
    if "ip" in raw:
        try:
            ipaddress.ip_address(str(raw["ip"]))
        except ValueError:
            raise ApiError(422, "invalid_evidence", "evidence.ip must be an IP address") from None
    return raw


def iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@bp.post("/v1/subscriptions")
@api_key("subscribe")
def create_subscription():
    payload = json_body()
    if not isinstance(payload, dict):
        raise ApiError(400, "bad_request", 'send a JSON object: {"phone": ..., "program": ..., "evidence": {...}}')
    slug = payload.get("program")
    if not isinstance(slug, str) or not slug:
        raise ApiError(422, "unknown_program", "program is required: the slug of a program")
    gateway = current()
    settings = gateway.settings
    try:
        number = parse(payload.get("phone"), settings.default_region)
    except InvalidNumber as error:
        raise ApiError(422, "invalid_number", str(error), reason=error.reason) from None
    client_evidence = _evidence(payload.get("evidence"))
    request_id = f"req_{uuid.uuid4().hex[:16]}"
    evidence = consents.Evidence(Source.API, actor=g.api_key_name, reference=request_id, details={
        "client_evidence": client_evidence,
        "api_address": request.remote_addr,
        # A header can carry a NUL (latin-1 decoded, anything goes), which the store cannot.
        "api_user_agent": storable.storable_text(request.user_agent.string),
    })
    # Limits count per person (the address the caller saw them at when it says so, else the caller)
    # and per key: a caller that writes a new evidence.ip each time still has only its key's allowance.
    guard = abuse.Guard.for_request(gateway.limiter, settings,
                                    client=str(client_evidence.get("ip") or request.remote_addr),
                                    api_key=str(g.api_key_id))
    try:
        with unit_of_work.transaction(gateway) as (session, outgoing):
            program, started = subscriptions.request(
                session, number=number, program_slug=slug, input=Input.API_REQUEST, evidence=evidence,
                now=utcnow(), ttl=timedelta(hours=settings.pending_ttl_hours),
                suppression_key=settings.suppression_key, rules=gateway.quiet_hours, guard=guard)
            if started.confirmation:
                outgoing.send_messages([started.confirmation.id])
    except subscriptions.Refused as refusal:
        status = 409 if refusal.code in ("opted_out", "suppressed", subscriptions.STOP_BINDING) else 422
        raise ApiError(status, refusal.code, refusal.message, phone=number.e164, program=slug,
                       **refusal.extra) from None
    except abuse.RateLimited as limited:
        retry_after = max(1, math.ceil(limited.retry_after))
        response = jsonify(ApiError(429, "rate_limited", str(limited), scope=limited.scope,
                                    retry_after=retry_after).body())
        return response, 429, {"Retry-After": str(retry_after)}
    body = {"status": started.status.value, "phone": number.e164, "program": program.slug}
    if started.status.value == "pending":
        body["expires_at"] = iso(started.expires_at)
        body["request_id"] = request_id
        return jsonify(body), 202
    return jsonify(body), 200
