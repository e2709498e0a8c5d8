"""Twilio's Messages REST resource, emulated: what `twilio.rest.Client().messages` calls.

Routes are `@public` to the gateway's auth layer because they check Twilio's own credentials (HTTP
Basic, AccountSid:AuthToken) themselves, and answer in Twilio's error shape rather than ours.
"""

from __future__ import annotations

import hmac
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

from flask import jsonify, request

from gateway.config import SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN
from gateway.store.models import utcnow
from gateway.twilio.sandbox import bp, current_sandbox, messages
from gateway.twilio.sandbox.messages import API_VERSION, Filters, TwilioError
from gateway.web.auth import public
from gateway.web.context import current

ACCOUNT = f"/{API_VERSION}/Accounts/<account_sid>"
MAX_PAGE_SIZE = 1000


def twilio_error(error: TwilioError):
    response = jsonify(error.body())
    response.status_code = error.status
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
    return response


def _authenticate(account_sid: str) -> None:
    """Twilio's check: Basic auth with the account SID and its auth token, for that account. The
    sandbox has one account, its own (docs/sandbox.md); the gateway is refused any other while the
    sandbox is on, so it calls with exactly these."""
    auth = request.authorization
    if (auth is None or auth.type != "basic"
            or not hmac.compare_digest((auth.username or "").encode(), SANDBOX_ACCOUNT_SID.encode())
            or not hmac.compare_digest((auth.password or "").encode(), SANDBOX_AUTH_TOKEN.encode())):
        raise TwilioError(20003)
    if account_sid != SANDBOX_ACCOUNT_SID:
        raise TwilioError(20404, uri=_resource_path())


def _resource_path() -> str:
    # Twilio names the path it was asked for, without our /sandbox mount point.
    return request.path.split("/sandbox", 1)[-1]


@bp.errorhandler(TwilioError)
def _twilio_error(error: TwilioError):
    return twilio_error(error)


@bp.post(f"{ACCOUNT}/Messages.json")
@public
def create_message(account_sid: str):
    _authenticate(account_sid)
    form = request.form
    outbound = messages.Outbound(
        to=form.get("To", ""), sender=form.get("From", ""), messaging_service_sid=form.get("MessagingServiceSid", ""),
        body=form.get("Body", ""), status_callback=form.get("StatusCallback", ""),
        media_count=len([url for url in form.getlist("MediaUrl") if url.strip()]),
    )
    sandbox = current_sandbox()
    with current().db.transaction() as session:
        try:
            message = messages.create(session, sandbox.config, account_sid, outbound, now=utcnow())
        except TwilioError as error:
            # Returning (not raising) commits the refusal, which the phone page shows.
            return twilio_error(error)
        body = messages.resource(message)
    sandbox.courier.wake()
    return jsonify(body), 201


@bp.get(f"{ACCOUNT}/Messages/<sid>.json")
@public
def fetch_message(account_sid: str, sid: str):
    _authenticate(account_sid)
    with current_sandbox().reads() as session:
        message = messages.get(session, account_sid, sid)
        if message is None:
            raise TwilioError(20404, uri=_resource_path())
        return jsonify(messages.resource(message))


def _date_filter(name: str) -> tuple[datetime, bool] | None:
    """A DateSent value: 'YYYY-MM-DD' (a whole day) or an ISO 8601 time; (moment, is_whole_day)."""
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        if len(raw) == 10:
            return datetime.combine(date.fromisoformat(raw), time(), UTC), True
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise TwilioError(20001, message=f"Invalid {name} value {raw!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC), False


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TwilioError(20001, message=f"Invalid {name} value {raw!r}") from None
    return max(low, min(high, value))


@bp.get(f"{ACCOUNT}/Messages.json")
@public
def list_messages(account_sid: str):
    _authenticate(account_sid)
    on, after, before = _date_filter("DateSent"), _date_filter("DateSent>"), _date_filter("DateSent<")
    filters = Filters(
        to=request.args.get("To") or None, sender=request.args.get("From") or None,
        sent_on=(on[0], on[0] + timedelta(days=1)) if on else None,
        sent_after=after[0] if after else None,
        # "on and before" a day includes all of it.
        sent_before=(before[0] + timedelta(days=1) - timedelta(microseconds=1) if before[1] else before[0])
        if before else None,
    )
    page_size = _int_arg("PageSize", 50, 1, MAX_PAGE_SIZE)
    page = _int_arg("Page", 0, 0, 1_000_000)
    token = request.args.get("PageToken") or None
    if token is not None and not (token.startswith("PA") and messages.SID_RE.match(token[2:])):
        raise TwilioError(20001, message=f"Invalid PageToken value {token!r}")
    with current_sandbox().reads() as session:
        # One extra row tells whether there is a next page.
        found = messages.find(session, account_sid, filters, offset=page * page_size, limit=page_size + 1,
                              after_sid=token[2:] if token else None)
        records = [messages.resource(m) for m in found[:page_size]]
    query = [(k, v) for k, v in request.args.items(multi=True) if k not in ("Page", "PageSize", "PageToken")]
    path = f"/{API_VERSION}/Accounts/{account_sid}/Messages.json"

    def page_uri(number: int, page_token: str | None = None) -> str:
        paging = [("PageSize", page_size), ("Page", number)] + ([("PageToken", page_token)] if page_token else [])
        return f"{path}?{urlencode(query + paging)}"

    return jsonify({
        "messages": records,
        "start": page * page_size,
        "end": page * page_size + max(len(records) - 1, 0),
        "page": page,
        "page_size": page_size,
        "uri": page_uri(page, token),
        "first_page_uri": page_uri(0),
        # As Twilio does: the next page is named by the last message of this one ("PA" + its sid).
        "next_page_uri": page_uri(page + 1, "PA" + found[page_size - 1].sid) if len(found) > page_size else None,
        "previous_page_uri": page_uri(page - 1) if page > 0 and token is None else None,
    })


@bp.route(f"/{API_VERSION}/<path:rest>", methods=["GET", "POST", "DELETE", "PUT", "PATCH"])
@public
def not_emulated(rest: str):
    """Everything else Twilio has: 404 in Twilio's shape, so a caller sees a clear answer."""
    raise TwilioError(20404, uri=_resource_path())
