"""Security headers: our HTML pages cannot be framed (clickjacking on the hosted form's consent
checkbox, or on the sandbox phone), load nothing from elsewhere, and leak no URL to other sites.

One `after_request` hook, so a page added later gets them without asking.
"""

from __future__ import annotations

from flask import Flask, Response

# Every HTML page is served by us with its scripts and stylesheets: nothing from another origin, no
# inline script. The hosted form's styles are one inline <style> block, hence 'unsafe-inline' for styles
# only. `frame-ancestors 'none'` is the modern form of X-Frame-Options: DENY; both are sent for older
# browsers.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
])
HTML_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    # `same-origin`, not `no-referrer`: under no-referrer a browser sends `Origin: null` on a same-origin
    # POST, and the sandbox phone page's one write checks that Origin. Other sites still get nothing.
    "Referrer-Policy": "same-origin",
}


def _add_security_headers(response: Response) -> Response:
    # On every response: a browser never guesses a type other than the one we declare.
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.mimetype == "text/html":
        response.headers.update(HTML_HEADERS)
    return response


def register(app: Flask) -> None:
    app.after_request(_add_security_headers)
