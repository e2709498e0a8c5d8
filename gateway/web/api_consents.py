"""Consent by other means: read a number's consents and ledger, record an opt-out heard elsewhere.

Support staff hear "stop texting me" on the phone or in an email; the opt-out they record here is
as binding as a STOP and carries the API key's name as its actor.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

from flask import Blueprint, g, jsonify, request
from sqlalchemy.orm import Session

from gateway import logs, metrics
from gateway.domain import storable
from gateway.domain.consent import Input, Source
from gateway.domain.numbers import InvalidNumber, Number
from gateway.domain.numbers import parse as parse_number
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import utcnow
from gateway.web.auth import api_key
from gateway.web.context import current
from gateway.web.errors import ApiError
from gateway.web.json_body import json_body_salvaging

log = logging.getLogger(__name__)

bp = Blueprint("api_consents", __name__)

_OPT_OUT_KEYS = frozenset({"program", "all", "evidence"})
MAX_EVIDENCE_BYTES = 4096
# Where an opt-out's evidence notes what of the caller's evidence it could not keep.
LEFT_OUT_KEY = "gateway_left_out"
# More places than this that cannot be stored, and none of the evidence is kept (the note stays short).
_MAX_LEFT_OUT = 10
_JSON_KINDS = {str: "a string", list: "an array", bool: "true or false"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _number(phone: str) -> Number:
    try:
        return parse_number(phone, current().settings.default_region)
    except InvalidNumber as error:
        raise ApiError(422, "invalid_number", str(error), reason=error.reason) from None


def kept_evidence(given: object, unstorable: list[storable.Problem]) -> tuple[dict, list[dict]]:
    """The caller's evidence as far as it can be kept, and a note of each part that was not.

    `given` is the evidence with the values the store cannot hold already dropped (`unstorable`).
    """
    left_out = [{"field": problem.field, "reason": problem.reason} for problem in unstorable]
    if len(left_out) > _MAX_LEFT_OUT:
        first = left_out[0]
        return {}, [{"field": "evidence", "reason": f"has {len(left_out)} values that cannot be stored (first "
                                                    f"{first['field']}, which {first['reason']})"}]
    if given is None:  # null: no evidence
        given = {}
    if not isinstance(given, dict):
        kind = _JSON_KINDS.get(type(given), "a number")
        return {}, [*left_out, {"field": "evidence", "reason": f"must be a JSON object, not {kind}"}]
    if LEFT_OUT_KEY in given:
        given = {key: value for key, value in given.items() if key != LEFT_OUT_KEY}
        left_out.append({"field": f"evidence.{LEFT_OUT_KEY}", "reason": "is where the gateway notes what it left out"})
    size = len(json.dumps(given))
    if size > MAX_EVIDENCE_BYTES:
        return {}, [*left_out, {"field": "evidence",
                                "reason": f"is {size:,} bytes of JSON, more than the {MAX_EVIDENCE_BYTES:,} kept"}]
    return given, left_out


def consent_document(session: Session, e164: str) -> dict:
    """What the store holds about a number's consent: current states and every ledger event."""
    row = store_consents.find_number(session, e164)
    if row is None:
        return {"phone": e164, "consents": [], "events": []}
    slugs = {p.id: p.slug for p in programs.all_programs(session)}
    return {
        "phone": e164,
        "consents": [
            {"program": slugs.get(c.program_id), "status": c.status, "updated_at": c.updated_at.isoformat()}
            for c in consents.consents(session, row)
        ],
        "events": [
            {"type": e.type, "program": slugs.get(e.program_id), "source": e.source,
             "occurred_at": e.occurred_at.isoformat(), "evidence": e.evidence,
             "actor": e.actor, "reference": e.reference}
            for e in consents.events(session, row)
        ],
    }


@bp.get("/v1/consents/<phone>")
@api_key("read")
def show(phone: str):
    number = _number(phone)
    with current().db.transaction() as session:
        return jsonify(consent_document(session, number.e164))


@bp.post("/v1/consents/<phone>/opt-out")
# An opt-out can only ever stop texts, so the scope that manages subscriptions may record one too.
@api_key("subscribe")
def opt_out(phone: str):
    """Record an opt-out made by other means, for one program (`program`) or every one (`all`).

    An opt-out is never lost to its evidence: evidence that cannot be kept as given (values the store
    cannot hold, not an object, too large) is kept as far as it can be, the opt-out is recorded, and
    the answer carries a warning for each part left out (docs/decisions/0011-unstorable-input.md).
    """
    number = _number(phone)
    body, unstorable = json_body_salvaging("evidence", force=True) if request.get_data() else ({}, [])
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "send a JSON object: {\"program\": SLUG} or {\"all\": true}")
    unknown = sorted(set(body) - _OPT_OUT_KEYS)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field {unknown[0]!r}")
    slug, everything = body.get("program"), body.get("all", False)
    if not isinstance(everything, bool):
        raise ApiError(400, "bad_request", "all must be true or false")
    if (slug is None) == (not everything):
        raise ApiError(400, "bad_request", "give exactly one of program or all: true")
    if slug is not None and (not isinstance(slug, str) or not slug):
        raise ApiError(400, "bad_request", "program must be a program's slug")
    evidence, left_out = kept_evidence(body.get("evidence", {}), unstorable)
    if left_out:
        evidence = {**evidence, LEFT_OUT_KEY: left_out}
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
        row = store_consents.number_row(session, number)
        changes = consents.opt_out(session, row, ended, Input.API_OPT_OUT,
                                  consents.Evidence(Source.API, actor=g.api_key_name, reference=reference,
                                                   details=evidence), now=utcnow())
        session.flush()
        document = consent_document(session, number.e164)
    for change in changes:
        metrics.CONSENT_EVENTS.labels(type=change.event.type, source=change.event.source).inc()
    logs.event(log, "opt_out", request_id=reference, number=number.e164, source="api", key=g.api_key_name,
               programs=",".join(change.program.slug for change in changes if change.program is not None))
    if left_out:
        document["warnings"] = [
            {"code": "evidence_not_kept", "field": note["field"],
             "message": f"{note['field']} {note['reason']}: the opt-out was recorded without it"}
            for note in left_out]
    return jsonify(document)
