"""Authentication, declared on every route: `public`, `api_key(scope…)` or `twilio_signed`.

An app-wide check refuses any route that declares none, and a test lists them all, so a new route
cannot ship open by accident.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from functools import wraps

from flask import g, request
from twilio.request_validator import RequestValidator

from gateway import keys, metrics
from gateway.context import current
from gateway.web.errors import ApiError

AUTH_ATTRIBUTE = "_auth"


def _declare(view, rule: str):
    setattr(view, AUTH_ATTRIBUTE, rule)
    return view


def public(view):
    """No credentials: health checks, the hosted form, the sandbox."""
    return _declare(view, "public")


def api_key(*scopes: str):
    """Require `Authorization: Bearer KEY` with one of `scopes` (admin has them all)."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "unauthorized", "send your API key as 'Authorization: Bearer KEY'")
            with current().db.transaction() as session:
                key = keys.authenticate(session, token.strip())
                if key is None:
                    raise ApiError(401, "unauthorized", "unknown or revoked API key")
                g.api_key_id, g.api_key_name, g.api_key_scopes = key.id, key.name, tuple(key.scopes)
            if "admin" not in g.api_key_scopes and not set(scopes) & set(g.api_key_scopes):
                raise ApiError(403, "forbidden", f"this key lacks the {' or '.join(scopes)} scope")
            return view(*args, **kwargs)

        return _declare(wrapper, "api_key:" + ",".join(scopes))

    return decorate


def _signed_url() -> str:
    # Twilio signs the URL it called, which is our public URL, not what the proxy handed Flask.
    query = request.query_string.decode("latin-1")
    return current().settings.public_url(request.path) + (f"?{query}" if query else "")


def _sha256_signature(token: str, url: str, params) -> str:
    payload = url + "".join(f"{name}{value}" for name in sorted(set(params)) for value in sorted(set(params.getlist(name))))
    return base64.b64encode(hmac.new(token.encode(), payload.encode(), hashlib.sha256).digest()).decode()


def signature_valid() -> bool:
    """True when X-Twilio-Signature matches one of our auth tokens (current or previous)."""
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature:
        return False
    url, params = _signed_url(), request.form
    settings_header = request.headers.get("X-Twilio-Webhooks-Signature-Settings", "")
    for token in current().settings.webhook_tokens:
        if "HMAC_SHA256" in settings_header.upper():
            if hmac.compare_digest(_sha256_signature(token, url, params), signature):
                return True
        elif RequestValidator(token).validate(url, params, signature):
            return True
    return False


def twilio_signed(view):
    """Require a valid X-Twilio-Signature; otherwise 403 and nothing stored but a counter."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        if not signature_valid():
            metrics.WEBHOOK_REJECTED.labels(path=request.path).inc()
            return "invalid signature", 403, {"Content-Type": "text/plain; charset=utf-8"}
        return view(*args, **kwargs)

    return _declare(wrapper, "twilio_signature")


def declared_auth(view) -> str | None:
    return getattr(view, AUTH_ATTRIBUTE, None)
