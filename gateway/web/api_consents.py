"""Consent by other means: read a number's consents and ledger, record an opt-out heard elsewhere.

Support staff hear "stop texting me" on the phone or in an email; the opt-out they record here is
as binding as a STOP and carries the API key's name as its actor.
"""

from __future__ import annotations

import json
import re
import uuid

from flask import Blueprint, g, jsonify, request
from sqlalchemy.orm import Session

from gateway import metrics, programs
from gateway.consent import service
from gateway.consent.machine import Input, Source
from gateway.context import current
from gateway.models import utcnow
from gateway.numbers import InvalidNumber, Number
from gateway.numbers import parse as parse_number
from gateway.web.auth import api_key
from gateway.web.errors import ApiError

bp = Blueprint("api_consents", __name__)

_OPT_OUT_KEYS = frozenset({"program", "all", "evidence"})
_MAX_EVIDENCE_BYTES = 4096
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _number(phone: str) -> Number:
    try:
        return parse_number(phone, current().settings.default_region)
    except InvalidNumber as error:
        raise ApiError(422, "invalid_number", str(error), reason=error.reason) from None


def consent_document(session: Session, e164: str) -> dict:
    """What the store holds about a number's consent: current states and every ledger event."""
    row = service.find_number(session, e164)
    if row is None:
        return {"phone": e164, "consents": [], "events": []}
    slugs = {p.id: p.slug for p in programs.all_programs(session)}
    return {
        "phone": e164,
        "consents": [
            {"program": slugs.get(c.program_id), "status": c.status, "updated_at": c.updated_at.isoformat()}
            for c in service.consents(session, row)
        ],
        "events": [
            {"type": e.type, "program": slugs.get(e.program_id), "source": e.source,
             "occurred_at": e.occurred_at.isoformat(), "evidence": e.evidence,
             "actor": e.actor, "reference": e.reference}
            for e in service.events(session, row)
        ],
    }


@bp.get("/v1/consents/<phone>")
@api_key("read")
def show(phone: str):
    number = _number(phone)
    with current().db.sessions() as session:
        return jsonify(consent_document(session, number.e164))


@bp.post("/v1/consents/<phone>/opt-out")
# An opt-out can only ever stop texts, so the scope that manages subscriptions may record one too.
@api_key("subscribe")
def opt_out(phone: str):
    """Record an opt-out made by other means, for one program (`program`) or every one (`all`)."""
    number = _number(phone)
    body = request.get_json(force=True, silent=True) if request.get_data() else {}
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "send a JSON object: {\"program\": SLUG} or {\"all\": true}")
    unknown = sorted(set(body) - _OPT_OUT_KEYS)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field {unknown[0]!r}")
    slug, everything, evidence = body.get("program"), body.get("all", False), body.get("evidence", {})
    if not isinstance(everything, bool):
        raise ApiError(400, "bad_request", "all must be true or false")
    if (slug is None) == (not everything):
        raise ApiError(400, "bad_request", "give exactly one of program or all: true")
    if slug is not None and (not isinstance(slug, str) or not slug):
        raise ApiError(400, "bad_request", "program must be a program's slug")
    if not isinstance(evidence, dict):
        raise ApiError(400, "bad_request", "evidence must be a JSON object")
    if len(json.dumps(evidence)) > _MAX_EVIDENCE_BYTES:
        raise ApiError(400, "bad_request", f"evidence is limited to {_MAX_EVIDENCE_BYTES} bytes")
    request_id = request.headers.get("X-Request-Id", "")
    reference = request_id if _REQUEST_ID.match(request_id) else "req_" + uuid.uuid4().hex

    with current().db.transaction() as session:
        if everything:
            ended = programs.all_programs(session)
        else:
            program = programs.by_slug(session, slug)
            if program is None:
                raise ApiError(422, "unknown_program", f"no program {slug!r}")
            ended = [program]
        row = service.number_row(session, number)
        changes = service.opt_out(session, row, ended, Input.API_OPT_OUT,
                                  service.Evidence(Source.API, actor=g.api_key_name, reference=reference,
                                                   details=evidence), now=utcnow())
        session.flush()
        document = consent_document(session, number.e164)
    for change in changes:
        metrics.CONSENT_EVENTS.labels(type=change.event.type, source=change.event.source).inc()
    return jsonify(document)
