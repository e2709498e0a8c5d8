"""Authentication, declared on every route: `public`, `api_key(scope…)` or `twilio_signed`.

An app-wide check refuses any route that declares none, and a test lists them all, so a new route
cannot ship open by accident.
"""

from __future__ import annotations

from functools import wraps

from flask import g, request

from gateway import metrics
from gateway.services import keys
from gateway.twilio import signatures
from gateway.web.context import current
from gateway.web.errors import ApiError

AUTH_ATTRIBUTE = "_auth"


def declare(view, rule: str):
    """Mark `view` with its auth rule (a decorator of another module, such as the console's, uses it)."""
    setattr(view, AUTH_ATTRIBUTE, rule)
    return view


_declare = declare


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
            key = keys.caller(current().db, token.strip())
            if key is None:
                raise ApiError(401, "unauthorized", "unknown or revoked API key")
            g.api_key_id, g.api_key_name, g.api_key_scopes = key.id, key.name, key.scopes
            if "admin" not in g.api_key_scopes and not set(scopes) & set(g.api_key_scopes):
                raise ApiError(403, "forbidden", f"this key lacks the {' or '.join(scopes)} scope")
            return view(*args, **kwargs)

        return _declare(wrapper, "api_key:" + ",".join(scopes))

    return decorate


# Twilio's form posts are a few kB (a 1,600-character body, some media URLs); anything near this
# limit is not Twilio. MAX_CONTENT_LENGTH stays large for the batch API.
WEBHOOK_MAX_BYTES = 64 * 1024


def _signed_url() -> str:
    # Twilio signs the URL it called, which is our public URL, not what a proxy handed Flask.
    query = request.query_string.decode("utf-8", "replace")
    return current().settings.public_url(request.path) + (f"?{query}" if query else "")


def signature_valid() -> bool:
    """True when X-Twilio-Signature matches one of our auth tokens (current or previous)."""
    return signatures.request_signed(request.headers, current().settings.webhook_tokens, _signed_url(), request.form,
                                     lambda: request.get_data(cache=True))


def twilio_signed(view):
    """Require a valid X-Twilio-Signature; otherwise 403 and nothing stored but a counter."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        # Before the form is read: a larger body is refused with 413 without being parsed.
        if request.max_content_length is None or request.max_content_length > WEBHOOK_MAX_BYTES:
            request.max_content_length = WEBHOOK_MAX_BYTES
        if not signature_valid():
            metrics.WEBHOOK_REJECTED.labels(path=request.path).inc()
            return "invalid signature", 403, {"Content-Type": "text/plain; charset=utf-8"}
        return view(*args, **kwargs)

    return _declare(wrapper, "twilio_signature")


def declared_auth(view) -> str | None:
    return getattr(view, AUTH_ATTRIBUTE, None)
