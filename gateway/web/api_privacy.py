"""Data-subject requests over the API: export and erase everything held about a number."""

from __future__ import annotations

import uuid

from flask import Blueprint, g, jsonify

from gateway.domain.consent import Source
from gateway.domain.numbers import InvalidNumber, parse
from gateway.services import consents, privacy
from gateway.store import consents as store_consents
from gateway.web.auth import api_key
from gateway.web.context import current
from gateway.web.errors import ApiError

bp = Blueprint("api_privacy", __name__, url_prefix="/v1/consents")


def _e164(phone: str) -> str:
    try:
        return parse(phone, current().settings.default_region).e164
    except InvalidNumber as error:
        raise ApiError(422, "invalid_number", str(error), reason=error.reason) from None


@bp.get("/<phone>/export")
@api_key("admin")
def export(phone: str):
    e164 = _e164(phone)
    with current().db.transaction() as session:
        number = store_consents.find_number(session, e164)
        if number is None:
            raise ApiError(404, "not_found", "nothing is held about that number")
        return jsonify(privacy.export(session, number))


@bp.post("/<phone>/erase")
@api_key("admin")
def erase(phone: str):
    e164 = _e164(phone)
    gateway = current()
    evidence = consents.Evidence(Source.API, actor=g.api_key_name, reference=f"req_{uuid.uuid4().hex[:16]}",
                                details={"request": "erasure"})
    with gateway.db.transaction() as session:
        number = store_consents.find_number(session, e164)
        if number is None:
            raise ApiError(404, "not_found", "nothing is held about that number")
        result = privacy.erase(session, number, gateway.settings.suppression_key, evidence)
    return jsonify(status="erased", suppressed=result.suppressed, consents_erased=result.consents_erased)
