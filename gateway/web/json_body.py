"""Reading a /v1 request's JSON body: the one place it is parsed and checked.

Every /v1 view reads its body here and nowhere else (a test keeps it so), after its auth: the body
must be JSON text in UTF-8 (or UTF-16/32, as RFC 4627 allowed), within MAX_CONTENT_LENGTH (413),
and hold nothing the store cannot (gateway.domain.storable: NUL or lone surrogates in any key or string,
nesting deeper than 32, NaN, Infinity, integers past 64 bits). What fails that is refused with 422
`invalid_request` whose `field` names the place (`evidence.note`, `recipients[3]`), before anything
is looked up or changed.
"""

from __future__ import annotations

import json

from flask import request

from gateway.domain import storable
from gateway.web.errors import ApiError


def json_body(*, force: bool = False):
    """The request's JSON document, checked; None when there is none to read.

    None: not declared as JSON (unless `force`), empty, not text, or not JSON: each view answers
    that with its own 400 saying what it expects.
    """
    checked = _checked(force)
    if checked is None:
        return None
    if checked.problems:
        raise refusal(checked.problems[0])
    return checked.value


def json_body_salvaging(field: str, *, force: bool = False) -> tuple[object, list[storable.Problem]]:
    """`json_body`, except that what the store cannot hold inside the top-level `field` is dropped
    rather than refused: the document without it, and what was dropped.

    For a request whose point must not be lost to a side detail (an opt-out to its evidence).
    """
    checked = _checked(force)
    if checked is None:
        return None, []
    kept = [problem for problem in checked.problems if not problem.path or problem.path[0] != field]
    if kept or (checked.problems and checked.value is None):  # None: nested too deep for the parser
        raise refusal((kept or checked.problems)[0])
    dropped = list(checked.problems)
    return storable.drop(checked.value, dropped), dropped


def refusal(problem: storable.Problem) -> ApiError:
    return ApiError(422, "invalid_request", problem.message(), field=problem.field)


def _checked(force: bool) -> storable.Checked | None:
    if not (force or request.is_json):
        return None
    data = request.get_data(cache=True)  # 413 beyond MAX_CONTENT_LENGTH
    if not data:
        return None
    try:
        text = data.decode(json.detect_encoding(data))
    except UnicodeDecodeError:
        return None
    try:
        return storable.check_json(text)
    except storable.NotJson:
        return None
