"""JSON errors with stable codes: `{"error": {"code": ..., "message": ...}}`."""

from __future__ import annotations

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """Raise from a handler to answer with a JSON error; nothing has been changed."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


def error_response(status: int, code: str, message: str, **extra):
    response = jsonify(ApiError(status, code, message, **extra).body())
    response.status_code = status
    return response


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type", 429: "rate_limited"}


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.code, error.message, **error.extra)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        # Keep what the exception says beyond its body: a 405's Allow header (RFC 9110), a Retry-After.
        headers = [(name, value) for name, value in error.get_headers() if name.lower() != "content-type"]
        # Twilio and browsers get plain text; API clients get the JSON shape they parse.
        if request.path.startswith("/v1") or request.accept_mimetypes.best == "application/json":
            response = error_response(error.code or 500, _CODES.get(error.code, "error"),
                                      error.description or error.name)
            response.headers.extend(headers)
            return response
        return error.description or error.name, error.code, [*headers, ("Content-Type", "text/plain; charset=utf-8")]
