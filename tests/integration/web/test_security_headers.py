"""Every HTML page refuses to be framed, loads only its own scripts and styles, and sends no URL to
other sites; no response lets a browser guess another content type."""

from __future__ import annotations

import pytest

from gateway.web.headers import CONTENT_SECURITY_POLICY

HTML_PAGES = [
    "/subscribe/deals",  # the hosted form: its consent checkbox must not be clickjacked
    "/subscribe/no-such-program",  # an error page (404)
    "/sandbox/phone",  # the sandbox phone
]


@pytest.mark.parametrize("path", HTML_PAGES)
def test_html_pages_cannot_be_framed(client, path):
    response = client.get(path)
    assert response.mimetype == "text/html"
    assert response.status_code == (404 if "no-such" in path else 200)
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_the_policy_allows_only_our_own_scripts():
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no inline script, nothing from elsewhere
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize(("path", "mimetype"), [
    ("/healthz", "application/json"),
    ("/v1/consents?phone=%2B14155552671", "application/json"),  # 401 without a key
    ("/nowhere", "text/plain"),  # a plain-text 404
    ("/sandbox/phone/assets/phone.js", "text/javascript"),
])
def test_no_response_may_be_sniffed(client, path, mimetype):
    response = client.get(path)
    assert response.mimetype == mimetype
    assert response.headers["X-Content-Type-Options"] == "nosniff"
