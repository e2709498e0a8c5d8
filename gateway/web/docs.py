"""Pages for people: the API reference (GET /docs/api) and, in the sandbox build, a start page (GET /).

The reference is rendered on the server from the same OpenAPI document /openapi.json serves, so the
two cannot disagree; it loads nothing from elsewhere (no script at all, one inline <style>), which the
Content-Security-Policy in headers.py would refuse anyway.

`/` exists only with SANDBOX on (docs/decisions/0020-newcomer-pages.md): there it is where a newcomer
starts. A production gateway is an API behind a business's own site; its root page would only tell
strangers which programs it runs, so it answers 404 there like any unknown path.
"""

from __future__ import annotations

import re

from flask import Blueprint, render_template
from markupsafe import Markup, escape

from gateway.store import programs
from gateway.web import openapi
from gateway.web.auth import public
from gateway.web.context import current

bp = Blueprint("docs", __name__)
landing_bp = Blueprint("landing", __name__)

METHOD_ORDER = ("get", "post", "put", "patch", "delete")


def prose(text: str) -> Markup:
    """Escaped text whose `backticked` words show as code."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text or ""))))


def schema_name(schema: dict) -> str | None:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref.startswith("#/components/schemas/") else None


def describe(schema: dict) -> Markup:
    """A schema in a few words: its type, and what limits it (links for named schemas)."""
    name = schema_name(schema)
    if name:
        return Markup('<a href="#schema-{0}">{0}</a>').format(name)
    if "allOf" in schema:
        return Markup(" + ").join(describe(part) for part in schema["allOf"] if schema_name(part) or "type" in part)
    if "const" in schema:
        return Markup("<code>{}</code>").format(schema["const"])
    if "enum" in schema:
        return Markup("one of ") + Markup(", ").join(Markup("<code>{}</code>").format(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and "items" in schema:
        words = Markup("array of ") + describe(schema["items"])
    else:
        words = Markup(escape(kind))
    limits = [f"{label} {schema[key]}" for key, label in (
        ("minLength", "min length"), ("maxLength", "max length"), ("minimum", "≥"), ("minItems", "min items"),
        ("maxItems", "max items"), ("format", "format")) if key in schema]
    if "pattern" in schema:
        limits.append(Markup("pattern <code>{}</code>").format(schema["pattern"]))
    if limits:
        words += Markup(" (") + Markup(", ").join(escape(limit) if isinstance(limit, str) else limit
                                                  for limit in limits) + Markup(")")
    return words


def fields(schema: dict) -> list[tuple[str, bool, dict]]:
    """(name, required, schema) of an object schema's own fields, those its allOf parts add included."""
    parts = [schema, *(part for part in schema.get("allOf", []) if not schema_name(part))]
    return [(name, name in part.get("required", []), spec)
            for part in parts for name, spec in part.get("properties", {}).items()]


def operations(document: dict) -> list[dict]:
    """Every (path, method) of the document, in the document's order, ready for the template."""
    found = []
    for path, methods in document["paths"].items():
        for method in sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
            operation = methods[method]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            found.append({
                "path": path, "method": method, "anchor": f"{method}-{re.sub(r'[^a-z0-9]+', '-', path.lower())}",
                "summary": operation.get("summary", ""), "description": operation.get("description", ""),
                "parameters": operation.get("parameters", []), "body": body,
                "body_required": operation.get("requestBody", {}).get("required", False),
                "responses": sorted(operation.get("responses", {}).items()),
            })
    return found


@bp.get("/docs/api")
@public
def api_reference():
    document = openapi.document()
    return render_template("docs/api.html", info=document["info"], operations=operations(document),
                           schemas=document["components"]["schemas"], prose=prose, describe=describe,
                           fields=fields)


@landing_bp.get("/")
@public
def landing():
    with current().db.transaction() as session:
        listed = sorted((row.slug, row.name) for row in programs.all_programs(session))
    return render_template("docs/landing.html", programs=listed, window=current().quiet_hours.default_window)
