"""Twilio's Lookup v2 and Deactivations resources, emulated (docs/sandbox.md, "Lookup and Deactivations").

- `GET /v2/PhoneNumbers/{PhoneNumber}?Fields=…&LastVerifiedDate=YYYYMMDD`: the PhoneNumber resource
  with `line_type_intelligence` and `reassigned_number` as Twilio renders them, from the test
  numbers of `[[lookup_numbers]]` (config/sandbox.toml).
- `GET /v1/Deactivations?Date=YYYY-MM-DD`: 307 with `{"redirect_to": …}`, a signed link to the day's
  file valid for two minutes, as Twilio answers; the file lists one number a line.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, date, datetime

import phonenumbers
from flask import Response, jsonify, request

from gateway.config import SANDBOX_ACCOUNT_SID
from gateway.twilio.sandbox import bp, current_sandbox
from gateway.twilio.sandbox.api import _authenticate
from gateway.twilio.sandbox.messages import TwilioError
from gateway.web.auth import public

LINK_SECONDS = 120  # Twilio: "valid for up to two minutes"
FIELDS = {"validation", "caller_name", "sim_swap", "call_forwarding", "line_status", "line_type_intelligence",
          "identity_match", "reassigned_number", "sms_pumping_risk", "phone_number_quality_score", "pre_fill"}
LOOKUP_ERRORS = {429: 20429, 500: 20500, 503: 20503}


def _signature(day: str, expires: int) -> str:
    from gateway.config import SANDBOX_AUTH_TOKEN

    return hmac.new(SANDBOX_AUTH_TOKEN.encode(), f"{day}:{expires}".encode(), hashlib.sha256).hexdigest()


@bp.get("/v2/PhoneNumbers/<path:raw>")
@public
def lookup(raw: str):
    _authenticate(SANDBOX_ACCOUNT_SID)
    fields = [f.strip() for f in request.args.get("Fields", "").split(",") if f.strip()]
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise TwilioError(20001, message=f"Invalid Fields value {','.join(unknown)!r}")
    config = current_sandbox().config
    try:
        parsed = phonenumbers.parse(raw, request.args.get("CountryCode") or "US")
    except phonenumbers.NumberParseException:
        parsed = None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if parsed else raw
    entry = config.lookup_of(e164)
    if entry.delay:
        time.sleep(entry.delay)
    if entry.http_status:
        code = LOOKUP_ERRORS.get(entry.http_status, 20500)
        raise TwilioError(code, status=entry.http_status, message="Service Unavailable")
    valid = parsed is not None and phonenumbers.is_valid_number(parsed)
    body = {
        "calling_country_code": str(parsed.country_code) if parsed else None,
        "country_code": phonenumbers.region_code_for_number(parsed) if parsed else None,
        "phone_number": e164,
        "national_format": (phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
                            if parsed else None),
        "valid": valid,
        "validation_errors": [] if valid else ["INVALID_BUT_POSSIBLE"],
        **{name: None for name in FIELDS if name != "validation"},
        "url": f"https://lookups.twilio.com/v2/PhoneNumbers/{e164}",
    }
    if "line_type_intelligence" in fields and valid:
        body["line_type_intelligence"] = {
            "error_code": entry.error_code,
            "mobile_country_code": entry.mobile_country_code or None,
            "mobile_network_code": entry.mobile_network_code or None,
            "carrier_name": entry.carrier or None,
            "type": entry.line_type or None,
        }
    if "reassigned_number" in fields and valid:
        body["reassigned_number"] = _reassigned(entry.reassigned, body["country_code"],
                                                request.args.get("LastVerifiedDate"))
    return jsonify(body)


def _reassigned(answer: str, country: str | None, last_verified: str | None) -> dict:
    if country != "US":  # US numbers only, as Twilio's package
        return {"last_verified_date": None, "is_number_reassigned": None, "error_code": 60617}
    try:
        day = datetime.strptime(last_verified or "", "%Y%m%d").date()
    except ValueError:
        raise TwilioError(20001, message=f"Invalid LastVerifiedDate value {last_verified!r}") from None
    return {"last_verified_date": day.isoformat(), "is_number_reassigned": answer, "error_code": None}


@bp.get("/v1/Deactivations")
@public
def deactivations():
    _authenticate(SANDBOX_ACCOUNT_SID)
    raw = request.args.get("Date", "")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise TwilioError(20001, message=f"Invalid Date value {raw!r}") from None
    if day >= datetime.now(UTC).date():
        raise TwilioError(20404, uri=f"/v1/Deactivations?Date={raw}")
    expires = int(time.time()) + LINK_SECONDS
    link = (f"{request.host_url}sandbox/v1/Deactivations/Files/{day.isoformat()}.txt"
            f"?Expires={expires}&Signature={_signature(day.isoformat(), expires)}")
    response = jsonify({"redirect_to": link})
    response.status_code = 307
    response.headers["Location"] = link
    return response


@bp.get("/v1/Deactivations/Files/<day>.txt")
@public
def deactivations_file(day: str):
    """The signed link's file: no credentials, the link is the permission (and expires)."""
    try:
        expires = int(request.args.get("Expires", ""))
    except ValueError:
        expires = 0
    if expires < time.time() or not hmac.compare_digest(request.args.get("Signature", ""),
                                                        _signature(day, expires)):
        return Response("Request has expired or its signature does not match\n", status=403, mimetype="text/plain")
    config = current_sandbox().config
    if config.deactivations_file_status != 200:
        return Response("Service Unavailable\n", status=config.deactivations_file_status, mimetype="text/plain")
    numbers = sorted(entry.number for entry in config.lookup_numbers.values() if entry.deactivated)
    return Response("".join(f"{number}\n" for number in numbers), mimetype="text/plain")
