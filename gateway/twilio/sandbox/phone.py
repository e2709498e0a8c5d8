"""The phone simulator: a handset's conversation with our senders, and a box to text them back.

A local development tool (mounted only with SANDBOX on), so it is `@public`. Its one POST guards
against cross-site requests by demanding JSON (which a cross-site form cannot send without a CORS
preflight we never grant) from a page of the same origin.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import jsonify, render_template, request, send_from_directory
from sqlalchemy import select

from gateway.config import SANDBOX_ACCOUNT_SID
from gateway.domain.numbers import InvalidNumber, parse
from gateway.store.models import Program, utcnow
from gateway.twilio.sandbox import bp, current_sandbox, messages
from gateway.web.auth import public
from gateway.web.context import current
from gateway.web.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = {"phone.js", "phone.css"}


@bp.get("/phone")
@public
def phone_page():
    settings = current().settings
    return render_template("sandbox_phone.html", number=request.args.get("number", ""),
                           webhook_url=current_sandbox().config.sms_url or settings.public_url("/webhooks/twilio/sms"))


@bp.get("/phone/assets/<name>")
@public
def phone_asset(name: str):
    if name not in ASSETS:
        raise ApiError(404, "not_found", "no such asset")
    return send_from_directory(STATIC_DIR, name, max_age=0)


def _handset(raw: str | None) -> str:
    try:
        return parse(raw or "", current().settings.default_region).e164
    except InvalidNumber as error:
        raise ApiError(400, "invalid_number", f"phone number: {error}") from None


def _senders(session, config, conversation: list[messages.Entry], opted_out: set[str]) -> list[dict]:
    """Our numbers the phone can text: every program's sender, and any number that texted it."""
    senders: dict[str, dict] = {}

    def add(number: str, label: str, service: str | None = None) -> None:
        entry = senders.setdefault(number, {"number": number, "labels": [], "messaging_service_sid": service})
        if label and label not in entry["labels"]:
            entry["labels"].append(label)
        entry["messaging_service_sid"] = entry["messaging_service_sid"] or service

    for program in session.scalars(select(Program).order_by(Program.id)):
        if program.sender:
            add(program.sender, program.name)
        elif program.messaging_service_sid:
            for number in config.service_numbers(program.messaging_service_sid):
                add(number, program.name, program.messaging_service_sid)
    for entry in conversation:
        if entry.our_number:
            add(entry.our_number, "", entry.messaging_service_sid)
    return [
        {"number": s["number"], "label": ", ".join(s["labels"]), "messaging_service_sid": s["messaging_service_sid"],
         "opted_out": s["number"] in opted_out or (s["messaging_service_sid"] or "") in opted_out,
         "opt_out_handling": messages.filtering_of(
             session, [s["number"], *([s["messaging_service_sid"]] if s["messaging_service_sid"] else [])]).handling}
        for s in senders.values()
    ]


def _entry_json(entry: messages.Entry) -> dict:
    return {
        "id": entry.id, "direction": entry.direction, "our_number": entry.our_number,
        "messaging_service_sid": entry.messaging_service_sid, "body": entry.body, "status": entry.status,
        "error_code": entry.error_code, "error_message": entry.error_message, "origin": entry.origin,
        "at": entry.at.isoformat(), "webhook_status": entry.webhook_status,
        "webhook_error_code": entry.webhook_error_code, "webhook_note": entry.webhook_note,
    }


@bp.get("/phone/state")
@public
def phone_state():
    """Everything the page shows, polled about once a second."""
    config = current_sandbox().config
    raw = request.args.get("number", "").strip()
    with current_sandbox().reads() as session:
        handset = _handset(raw) if raw else None
        conversation = messages.conversation(session, handset) if handset else []
        opted_out = set(messages.opted_out_senders(session, handset)) if handset else set()
        senders = _senders(session, config, conversation, opted_out)
        known = messages.handsets(session)
    return jsonify({
        "number": handset,
        "senders": senders,
        "handsets": known,
        "test_numbers": [{"number": t.number, "description": t.description} for t in config.test_numbers.values()],
        "messages": [_entry_json(e) for e in conversation],
    })


def _same_origin() -> bool:
    claimed = request.headers.get("Origin") or request.headers.get("Referer") or ""
    netloc = urlsplit(claimed).netloc
    return bool(netloc) and netloc in {request.host, urlsplit(current().settings.public_base_url).netloc}


@bp.post("/phone/messages")
@public
def phone_send():
    """The handset texts one of our numbers; the courier posts it to our webhook right after, unless
    the JSON says `"webhook": false` (a webhook lost on the way: the text is in the message log only)."""
    if not request.is_json or not _same_origin():
        raise ApiError(403, "forbidden", "the phone page posts JSON from its own origin only")
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "expected a JSON object {from, to, body}")
    sandbox = current_sandbox()
    with current().db.transaction() as session:
        try:
            message = messages.receive(session, sandbox.config, SANDBOX_ACCOUNT_SID,
                                       handset=str(data.get("from") or ""), to=str(data.get("to") or ""),
                                       body=str(data.get("body") or ""), now=utcnow(),
                                       webhook=data.get("webhook") is not False)
        except ValueError as error:
            raise ApiError(400, "bad_request", str(error)) from None
        sid = message.sid
    sandbox.courier.wake()
    return jsonify({"sid": sid}), 201
