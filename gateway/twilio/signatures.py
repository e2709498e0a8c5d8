"""Twilio's webhook signatures: X-Twilio-Signature, checked against our auth tokens.

One implementation for HMAC-SHA1 and HMAC-SHA256 rather than twilio's RequestValidator: the releases
pyproject allows (twilio>=9.4) validate SHA-1 only, and a request validated as form fields never had
its bodySHA256 checked. tests/integration/web/test_signatures.py runs it against twilio-python's
official vectors and against RequestValidator itself.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit, urlunsplit

SIGNATURE_HEADER = "X-Twilio-Signature"
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
    # A form (werkzeug's MultiDict) gives each name with all its values at once; a plain mapping one value.
    named = params.lists() if hasattr(params, "lists") else ((name, (value,)) for name, value in params.items())
    return "".join(name + value for name, values in sorted(named) for value in sorted(set(values)))


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


def request_signed(headers: Mapping[str, str], tokens: Iterable[str], url: str, params,
                   read_body: Callable[[], bytes]) -> bool:
    """True when a webhook request to `url` carries Twilio's signature under one of `tokens`.

    `read_body` is called only when the URL says the body is signed (a JSON body's bodySHA256).
    """
    signature = headers.get(SIGNATURE_HEADER, "")
    if not signature:
        return False
    raw_body = read_body() if "bodySHA256=" in url else None
    return signature_matches(signature, tokens, url, params,
                             signature_algorithm(headers.get(SIGNATURE_SETTINGS_HEADER)), raw_body)
