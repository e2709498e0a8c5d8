"""Bulk consent imports over the API (admin scope): upload a CSV, follow its progress, read its results.

    POST /v1/consents/import                      the CSV as the body; 202 with the import's state
    GET  /v1/consents/import                      the newest imports
    GET  /v1/consents/import/<id>                 one import's state: progress and counts
    GET  /v1/consents/import/<id>/results         line,result,reason for every line done

The upload streams into the store a part at a time (services/imports.py `receive`), so a file of a
million rows needs neither the memory nor the body limit of a JSON request; the worker runs the
import (the task `consent.run_import`), and the import's row says how far it got.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request, stream_with_context, url_for

from gateway.queue.app import TaskNames
from gateway.services import imports, unit_of_work
from gateway.store import imports as import_rows
from gateway.web.auth import api_key
from gateway.web.context import current
from gateway.web.errors import ApiError

bp = Blueprint("api_imports", __name__, url_prefix="/v1/consents")

MAX_UPLOAD_BYTES = 2 << 30  # 2 GiB: some 20 million rows with their evidence
_BLOCK = 1 << 16
LISTED = 50


@bp.post("/import")
@api_key("admin")
def upload():
    # The body is read as a stream, never whole: the JSON requests' MAX_CONTENT_LENGTH does not apply.
    request.max_content_length = MAX_UPLOAD_BYTES
    gateway = current()
    name = (request.args.get("name") or "upload.csv")[:200]
    stream = request.stream
    try:
        received = imports.receive(gateway.db, iter(lambda: stream.read(_BLOCK), b""), name=name,
                                   actor=g.api_key_name)
    except ValueError as error:
        raise ApiError(422, "invalid_file", str(error)) from None
    with unit_of_work.after_commit(gateway) as outgoing:
        outgoing.send(TaskNames.RUN_IMPORT, received.id)
    answer = jsonify(_state(received))
    answer.status_code = 202
    answer.headers["Location"] = url_for("api_imports.state", import_id=received.id)
    return answer


@bp.get("/import")
@api_key("admin")
def listing():
    """The newest imports first (the API's and the command line's)."""
    with current().db.sessions() as session:
        return jsonify(imports=[_state(row) for row in import_rows.newest(session, LISTED)])


@bp.get("/import/<import_id>")
@api_key("admin")
def state(import_id: str):
    with current().db.sessions() as session:
        return jsonify(_state(_found(session, import_id)))


@bp.get("/import/<import_id>/results")
@api_key("admin")
def results(import_id: str):
    db = current().db
    with db.sessions() as session:
        _found(session, import_id)

    def lines():
        yield ",".join(imports.RESULT_COLUMNS) + "\n"
        for line, result, reason in imports.results(db, import_id):
            yield f"{line},{result},{_csv_field(reason)}\n"

    return Response(stream_with_context(lines()), mimetype="text/csv")


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def _found(session, import_id: str):
    row = import_rows.get(session, import_id) if len(import_id) <= 40 else None
    if row is None or row.status == "receiving":
        raise ApiError(404, "not_found", "no such import")
    return row


def _state(row) -> dict:
    return {
        "id": row.id, "name": row.name, "status": row.status, "line_done": row.line_done,
        "total_lines": row.total_lines, "applied": row.applied, "refused": row.refused, "error": row.error,
        "created_at": row.created_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }
