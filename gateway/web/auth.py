"""Authentication, declared on every route: `public`, `api_key(scope…)` or `twilio_signed`.

An app-wide check refuses any route that declares none, and a test lists them all, so a new route
cannot ship open by accident.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from functools import wraps
from urllib.parse import parse_qs, urlsplit, urlunsplit

from flask import g, request

from gateway.services import keys
from gateway import metrics
from gateway.bootstrap import current
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
            key = keys.caller(current().db, token.strip())
            if key is None:
                raise ApiError(401, "unauthorized", "unknown or revoked API key")
            g.api_key_id, g.api_key_name, g.api_key_scopes = key.id, key.name, key.scopes
            if "admin" not in g.api_key_scopes and not set(scopes) & set(g.api_key_scopes):
                raise ApiError(403, "forbidden", f"this key lacks the {' or '.join(scopes)} scope")
            return view(*args, **kwargs)

        return _declare(wrapper, "api_key:" + ",".join(scopes))

    return decorate


# Webhook signatures. One implementation for HMAC-SHA1 and HMAC-SHA256 rather than twilio's
# RequestValidator: the releases pyproject allows (twilio>=9.4) validate SHA-1 only, and a request
# validated as form fields never had its bodySHA256 checked. tests/integration/web/test_signatures.py runs it against
# twilio-python's official vectors and against RequestValidator itself.

# Twilio's form posts are a few kB (a 1,600-character body, some media URLs); anything near this
# limit is not Twilio. MAX_CONTENT_LENGTH stays large for the batch API.
WEBHOOK_MAX_BYTES = 64 * 1024
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
# Algorithms a signature-settings header may name; without the header Twilio signs with HMAC-SHA1.
SIGNATURE_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


def signature_algorithm(settings_header: str | None) -> str | None:
    """The algorithm `X-Twilio-Webhooks-Signature-Settings` names, HMAC_SHA1 without one; None if unknown."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip().lower() == "algorithm" and value.strip():
            algorithm = value.strip().upper()
            return algorithm if algorithm in SIGNATURE_ALGORITHMS else None
    return "HMAC_SHA1"


def signed_params(params) -> str:
    """POST parameters as Twilio appends them to the URL: names sorted, then each name's distinct
    values sorted, every pair as name+value with no separator (an empty value still adds its name)."""
    getlist = getattr(params, "getlist", None)
    parts = []
    for name in sorted(set(params)):
        values = getlist(name) if getlist else [params[name]]
        parts.extend(name + value for value in sorted(set(values)))
    return "".join(parts)


@functools.lru_cache(maxsize=64)  # a handful of webhook URLs, asked about on every request
def url_variants(url: str) -> tuple[str, str]:
    """The URL without its port and with it (the default one added): Twilio has signed both ways."""
    parts = urlsplit(url)
    default = "443" if parts.scheme == "https" else "80"
    host = parts.netloc.rsplit("@", 1)[-1]
    bare_host = host.rsplit(":", 1)[0] if parts.port else host
    with_port = host if parts.port else f"{host}:{default}"
    return (urlunsplit(parts._replace(netloc=bare_host)), urlunsplit(parts._replace(netloc=with_port)))


def compute_signature(token: str, url: str, params, algorithm: str = "HMAC_SHA1") -> str:
    """Base64 HMAC of URL + signed_params(params) keyed with `token` (what Twilio puts in X-Twilio-Signature)."""
    digest = hmac.new(token.encode(), (url + signed_params(params)).encode(), SIGNATURE_ALGORITHMS[algorithm])
    return base64.b64encode(digest.digest()).decode()


def signature_matches(signature: str, tokens, url: str, params, algorithm: str = "HMAC_SHA1",
                      raw_body: bytes | None = None) -> bool:
    """True when `signature` is Twilio's for this request under one of `tokens`.

    A `bodySHA256` in the query means a JSON body: its hash must match and the URL alone is signed.
    """
    if not signature or algorithm not in SIGNATURE_ALGORITHMS:
        return False
    body_hash = parse_qs(urlsplit(url).query).get("bodySHA256") if "bodySHA256" in url else None
    if body_hash:
        if not hmac.compare_digest(hashlib.sha256(raw_body or b"").hexdigest().encode(), body_hash[0].encode()):
            return False
        params = {}
    suffix = signed_params(params).encode()
    given = signature.strip().encode("latin-1", "replace")  # header values arrive latin-1 decoded
    hash_function = SIGNATURE_ALGORITHMS[algorithm]
    for token in tokens:
        key = token.encode()
        for variant in url_variants(url):
            expected = base64.b64encode(hmac.new(key, variant.encode() + suffix, hash_function).digest())
            if hmac.compare_digest(expected, given):
                return True
    return False


def _signed_url() -> str:
    # Twilio signs the URL it called, which is our public URL, not what a proxy handed Flask.
    query = request.query_string.decode("utf-8", "replace")
    return current().settings.public_url(request.path) + (f"?{query}" if query else "")


def signature_valid() -> bool:
    """True when X-Twilio-Signature matches one of our auth tokens (current or previous)."""
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature:
        return False
    url = _signed_url()
    raw_body = request.get_data(cache=True) if "bodySHA256=" in url else None
    return signature_matches(signature, current().settings.webhook_tokens, url, request.form,
                             signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER)), raw_body)


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
