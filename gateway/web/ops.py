"""Liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from gateway import metrics
from gateway.services import operations
from gateway.web.auth import public
from gateway.web.context import current

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@public
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
@public
def readyz():
    gateway, failed = current(), []
    try:
        gateway.db.ping()
    except Exception:  # any failure means not ready; the reason is in the log
        failed.append("database")
    try:
        gateway.dispatcher.ping()
    except Exception:
        failed.append("broker")
    if failed:
        return jsonify(status="unavailable", failed=failed), 503
    return jsonify(status="ready")


@bp.get("/metrics")
@public
def prometheus():
    gateway = current()
    body, content_type = metrics.render(metrics.HealthGauges(lambda: operations.read(gateway), gateway.settings))
    return Response(body, content_type=content_type)
