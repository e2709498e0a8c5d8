"""GET /openapi.json: the /v1 API as an OpenAPI 3.1 document.

Built here in code, next to nothing else, so that one file says what every route takes and gives.
Two tests keep it honest: every /v1 route of the app is in it (and nothing else), and schemathesis
drives the running app from it and checks each answer against it.
"""

from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, jsonify

from gateway.domain.gate import Reason
from gateway.domain.numbers import E164_PATTERN
from gateway.domain.outbound import Status
from gateway.domain.segments import MAX_BODY_CHARS
from gateway.services import batches
from gateway.store import idempotency
from gateway.web.auth import public

bp = Blueprint("openapi", __name__)

# The gate's refusals a send can meet (a confirmation's no_pending_request cannot; quiet hours defer).
SEND_REFUSALS = sorted(r.value for r in Reason if r not in (Reason.NO_PENDING_REQUEST, Reason.QUIET_HOURS))
PHONE = {"type": "string", "minLength": 1, "maxLength": 64,
         "description": "A phone number in any form phonenumbers parses (E.164 preferred), default region US.",
         "examples": ["+14155552671"]}
E164 = {"type": "string", "pattern": f"^{E164_PATTERN}$", "examples": ["+14155552671"]}
TIME = {"type": "string", "format": "date-time"}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
RULE = {"type": "object", "description": "The rule behind a deferral or refusal: a state or federal rule pack's "
        "law and version, or the program's own frequency (rule \"program:<slug>\").",
        "required": ["rule", "law", "version", "citation", "source"],
        "properties": {"rule": {"type": "string"}, "law": {"type": "string"},
                       "version": {"type": ["string", "null"]}, "citation": {"type": ["string", "null"]},
                       "source": {"type": ["string", "null"]}}}
MESSAGE_STATUSES = [status.value for status in Status]
ACCEPTED_STATUSES = [Status.QUEUED.value, Status.DEFERRED.value]  # what a message the gate allowed starts as
CONSENT_STATUSES = ["pending", "opted_in", "opted_out", "expired"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str, *codes: str) -> dict:
    """A JSON error answer whose `error.code` is one of `codes`."""
    return {"description": f"{description} (code: {', '.join(codes)})", "content": _json({
        "allOf": [_ref("Error"), {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}}]})}


def _ok(description: str, schema: dict, **headers: dict) -> dict:
    answer = {"description": description, "content": _json(schema)}
    if headers:
        answer["headers"] = headers
    return answer


AUTH_ERRORS = {
    "401": _error("No API key, or an unknown or revoked one", "unauthorized"),
    "403": _error("The key lacks the scope this operation needs", "forbidden"),
}
TOO_LARGE = {"413": _error("The request body is larger than MAX_CONTENT_LENGTH", "too_large")}
BAD_JSON = {"400": _error("The body is not a JSON object", "bad_request")}
PHONE_PARAMETER = {"name": "phone", "in": "path", "required": True, "schema": PHONE}
IMPORT_PARAMETER = {"name": "import_id", "in": "path", "required": True,
                    "schema": {"type": "string", "pattern": "^imp_[0-9a-f]{32}$"}}


def _operation(summary: str, scopes: list[str], responses: dict, *, body: dict | None = None,
               parameters: list | None = None, description: str = "", body_required: bool = True) -> dict:
    operation = {
        "summary": summary,
        "description": (description + "\n\n" if description else "") + f"API key scope: {' or '.join(scopes)} "
                       "(admin has every scope).",
        "security": [{"bearer": []}],
        "responses": {**responses, **AUTH_ERRORS},
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": _json(body)}
    return operation


SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string", "description": "Stable: match on it."},
                           "message": {"type": "string", "description": "For people; may change."}},
            "additionalProperties": True,
        }},
    },
    "SendRequest": {
        "type": "object", "required": ["to", "program", "body"], "additionalProperties": False,
        "properties": {
            "to": PHONE,
            "program": {"type": "string", "minLength": 1, "maxLength": 64, "description": "A program's slug."},
            "body": {"type": "string", "minLength": 1, "maxLength": MAX_BODY_CHARS},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH,
                                "pattern": r"^[\x21-\x7e]+$",
                                "description": "Or the Idempotency-Key header (they must agree)."},
        },
    },
    "SendAccepted": {
        "type": "object", "required": ["id", "status", "to", "program", "segments", "encoding"],
        "properties": {
            "id": {"type": "string", "pattern": "^msg_[0-9a-f]{32}$"},
            "status": {"enum": ACCEPTED_STATUSES},
            "to": E164, "program": {"type": "string"},
            "segments": {"type": "integer", "minimum": 1}, "encoding": {"enum": ["GSM-7", "UCS-2"]},
            "not_before": {**TIME, "description": "Deferred messages: the end of the recipient's quiet hours."},
        },
    },
    "Message": {
        "type": "object",
        "required": ["id", "to", "program", "kind", "status", "reason", "error_code", "segments", "encoding",
                     "not_before", "batch_id", "created_at", "updated_at", "history"],
        "properties": {
            "id": {"type": "string"},
            "to": {"type": ["string", "null"], "description": "E.164; null once the number was erased."},
            "program": {"type": "string"},
            "kind": {"enum": ["marketing", "informational", "transactional", "confirmation", "reply"]},
            "status": {"enum": MESSAGE_STATUSES},
            "reason": {"type": ["string", "null"], "description": "Why it is blocked, deferred or failed."},
            "error_code": {"type": ["integer", "null"], "description": "Twilio's error code, if any."},
            "segments": {"type": "integer"}, "encoding": {"enum": ["GSM-7", "UCS-2"]},
            "not_before": NULLABLE_TIME, "batch_id": {"type": ["string", "null"]},
            "created_at": TIME, "updated_at": TIME,
            "history": {"type": "array", "items": {
                "type": "object", "required": ["status", "reason", "error_code", "at"],
                "properties": {"status": {"enum": MESSAGE_STATUSES}, "reason": {"type": ["string", "null"]},
                               "error_code": {"type": ["integer", "null"]}, "at": TIME, "rule": RULE,
                               "decision": {"type": "object", "description": (
                                   "The send gate's record, on a step that was its decision: the stage, the "
                                   "outcome and reason, and what it read (the consent and its ledger event, "
                                   "suppression, reachability, region, quiet hours, caps).")},
                               "why": {"type": "array", "items": {"type": "string"},
                                       "description": "The decision in plain sentences, the outcome first."}},
            }},
        },
    },
    "BatchRequest": {
        "type": "object", "required": ["recipients", "program", "body"], "additionalProperties": False,
        "properties": {
            "recipients": {"type": "array", "minItems": 1, "maxItems": batches.MAX_RECIPIENTS,
                           "items": {"type": "string"}},
            "program": {"type": "string", "minLength": 1, "maxLength": 64},
            "body": {"type": "string", "minLength": 1, "maxLength": MAX_BODY_CHARS},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH,
                                "pattern": r"^[\x21-\x7e]+$"},
        },
    },
    "BatchResult": {
        "type": "object", "required": ["batch_id", "program", "accepted", "by_status", "refused",
                                       "refused_recipients"],
        "properties": {
            "batch_id": {"type": "string", "pattern": "^bat_[0-9a-f]{32}$"},
            "program": {"type": "string"},
            "accepted": {"type": "integer", "minimum": 0},
            "by_status": {"type": "object", "additionalProperties": {"type": "integer"},
                          "propertyNames": {"enum": ACCEPTED_STATUSES}},
            "refused": {"type": "object", "additionalProperties": {"type": "integer"},
                        "propertyNames": {"enum": [*SEND_REFUSALS, batches.DUPLICATE, batches.INVALID,
                                                   batches.NOT_MOBILE]},
                        "description": "How many recipients were refused, by reason."},
            "refused_recipients": {"type": "array", "items": {
                "type": "object", "required": ["to", "reason"],
                "properties": {"to": {"type": "string", "description": "As given."}, "reason": {"type": "string"}},
            }},
        },
    },
    "SubscriptionRequest": {
        "type": "object", "required": ["phone", "program"],
        "properties": {
            "phone": PHONE, "program": {"type": "string"},
            "evidence": {"type": "object", "description": "Your own evidence of the request (the page the "
                         "person saw, their address as `ip`…), at most 32 keys and 8 kB; kept as given."},
        },
    },
    "Subscription": {
        "type": "object", "required": ["status", "phone", "program"],
        "properties": {
            "status": {"enum": ["pending", "opted_in"]}, "phone": E164, "program": {"type": "string"},
            "expires_at": {**TIME, "description": "Pending: when the request lapses unless confirmed."},
            "request_id": {"type": "string"},
        },
    },
    "ConsentDocument": {
        "type": "object", "required": ["phone", "consents", "events"],
        "properties": {
            "phone": E164,
            "consents": {"type": "array", "items": {
                "type": "object", "required": ["program", "status", "updated_at"],
                "properties": {"program": {"type": ["string", "null"]}, "status": {"enum": CONSENT_STATUSES},
                               "updated_at": TIME},
            }},
            "events": {"type": "array", "items": {
                "type": "object", "required": ["type", "program", "source", "occurred_at", "evidence"],
                "properties": {"type": {"type": "string"}, "program": {"type": ["string", "null"]},
                               "source": {"enum": ["sms", "web", "api", "import", "carrier", "system"]},
                               "occurred_at": TIME, "evidence": {"type": "object"},
                               "actor": {"type": ["string", "null"]}, "reference": {"type": ["string", "null"]}},
            }},
        },
    },
    "OptOutResult": {"allOf": [_ref("ConsentDocument"), {"properties": {"warnings": {
        "type": "array", "description": "Present when part of the evidence was not kept.",
        "items": {"type": "object", "required": ["code", "field", "message"],
                  "properties": {"code": {"const": "evidence_not_kept"}, "field": {"type": "string"},
                                 "message": {"type": "string"}}},
    }}}]},
    "OptOutRequest": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of `program` or `all: true`.",
        "properties": {"program": {"type": "string"}, "all": {"type": "boolean"},
                       "evidence": {"type": "object", "description": "How the opt-out was heard (4 kB of JSON kept at "
                                    "most; the key `gateway_left_out` is the gateway's)."}},
    },
    "Export": {
        "type": "object", "required": ["phone", "number", "consents", "events", "inbound_messages",
                                       "outbound_messages"],
        "properties": {
            "phone": E164, "number": {"type": "object"},
            "consents": {"type": "array", "items": {"type": "object"}},
            "events": {"type": "array", "items": {"type": "object"}},
            "inbound_messages": {"type": "array", "items": {"type": "object"}},
            "outbound_messages": {"type": "array", "items": {"type": "object"}},
        },
    },
    "ImportState": {
        "type": "object",
        "required": ["id", "name", "status", "line_done", "total_lines", "applied", "refused", "error", "created_at",
                     "finished_at"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "status": {"enum": ["queued", "running", "done", "failed"],
                       "description": "failed: the file was refused whole (`error` says why), or the run was "
                                      "interrupted and goes on when the worker runs it again."},
            "line_done": {"type": "integer", "minimum": 1,
                          "description": "The last line of the file whose row was applied or refused (the header "
                                         "is line 1): progress, against total_lines."},
            "total_lines": {"type": ["integer", "null"], "minimum": 0},
            "applied": {"type": "integer", "minimum": 0}, "refused": {"type": "integer", "minimum": 0},
            "error": {"type": ["string", "null"]},
            "created_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "Erasure": {
        "type": "object", "required": ["status", "suppressed", "consents_erased"],
        "properties": {"status": {"const": "erased"}, "suppressed": {"type": "boolean"},
                       "consents_erased": {"type": "integer", "minimum": 0}},
    },
}

IDEMPOTENCY_HEADER = {"name": "Idempotency-Key", "in": "header", "required": False,
                      "schema": {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH,
                                 "pattern": r"^[\x21-\x7e]+$"},
                      "description": "The same key (per API key) returns the first answer and sends once."}
REPLAYED = {"Idempotent-Replayed": {"schema": {"const": "true"}, "description": "Present on a replayed answer."}}

PATHS = {
    "/v1/messages": {"post": _operation(
        "Send one message", ["send"], body=_ref("SendRequest"), parameters=[IDEMPOTENCY_HEADER],
        description="The send gate decides at once; the worker asks it again right before Twilio is called. "
                    "Marketing texts in the recipient's quiet hours are deferred (status `deferred`).",
        responses={
            "202": _ok("Accepted: queued, or deferred to `not_before`", _ref("SendAccepted"),
                       Location={"schema": {"type": "string"}, "description": "The message's URL."}, **REPLAYED),
            **BAD_JSON,
            "409": _error("The send gate refused it", *SEND_REFUSALS),
            **TOO_LARGE,
            "422": _error("Invalid request, number or program, or an idempotency key reused for another request",
                          "invalid_request", "invalid_number", "not_mobile", "unknown_program",
                          "idempotency_key_reused"),
        })},
    "/v1/messages/batch": {"post": _operation(
        f"Send one body to up to {batches.MAX_RECIPIENTS:,} recipients", ["send"], body=_ref("BatchRequest"),
        parameters=[IDEMPOTENCY_HEADER],
        description="Consent is checked for all recipients in bulk. Numbers refused are listed with their "
                    "reason; a number given twice is sent once.",
        responses={
            "200": _ok("Nobody in the batch may be sent to: nothing was stored", _ref("BatchResult"), **REPLAYED),
            "202": _ok("Some or all accepted (queued or deferred)", _ref("BatchResult"), **REPLAYED),
            **BAD_JSON, **TOO_LARGE,
            "422": _error("Invalid request or program, too many recipients, or an idempotency key reused",
                          "invalid_request", "unknown_program", "too_many_recipients", "idempotency_key_reused"),
        })},
    "/v1/messages/{message_id}": {"get": _operation(
        "A message's status, reason and history", ["read", "send"],
        parameters=[{"name": "message_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^msg_[0-9a-f]{32}$"}}],
        responses={
            "200": _ok("The message", _ref("Message")),
            "404": _error("No such message", "not_found"),
        })},
    "/v1/subscriptions": {"post": _operation(
        "Start double opt-in for a number", ["subscribe"], body=_ref("SubscriptionRequest"),
        description="Records `pending` and texts the confirmation through the worker; the person's YES confirms.",
        responses={
            "200": _ok("Already opted in: nothing changed", _ref("Subscription")),
            "202": _ok("Pending: the confirmation text is on its way", _ref("Subscription")),
            **BAD_JSON,
            "409": _error("The number opted out (only the person can come back, by text), opted out under a "
                          "state rule that binds for years (stop_binding: `rule`, `binds_until`), or opted out "
                          "and was erased (suppressed: never texted again)", "opted_out", "stop_binding",
                          "suppressed"),
            **TOO_LARGE,
            "422": _error("Invalid number, program or evidence, a value the store cannot hold (`field` names "
                          "it), a number the program cannot text, or one of our own sender numbers",
                          "unknown_program", "invalid_number", "not_mobile", "invalid_evidence",
                          "country_not_allowed", "invalid_request", "own_sender"),
            "429": {**_error("Too many confirmation requests for this number, client, API key or program",
                             "rate_limited"),
                    "headers": {"Retry-After": {"schema": {"type": "string"}}}},
        })},
    "/v1/consents/{phone}": {"get": _operation(
        "A number's consents and ledger events", ["read"], parameters=[PHONE_PARAMETER],
        responses={
            "200": _ok("Current states and every event with its evidence", _ref("ConsentDocument")),
            "422": _error("Not a phone number", "invalid_number"),
        })},
    "/v1/consents/{phone}/opt-out": {"post": _operation(
        "Record an opt-out heard by other means (a call, an email)", ["subscribe"], parameters=[PHONE_PARAMETER],
        body=_ref("OptOutRequest"), body_required=False,
        description="An opt-out is never lost to its evidence: evidence that cannot be kept as given (a value "
                    "the store cannot hold, not an object, over 4 kB) is kept as far as it can be, the opt-out "
                    "is recorded, and `warnings` names each part left out (the ledger notes them too, under "
                    "`gateway_left_out`).",
        responses={
            "200": _ok("The number's consents after the opt-out", _ref("OptOutResult")),
            "400": _error("Not a JSON object, or not exactly one of program / all", "bad_request"),
            **TOO_LARGE,
            "422": _error("Not a phone number, no such program, or a value outside the evidence that the store "
                          "cannot hold (`field` names it)", "invalid_number", "unknown_program", "invalid_request"),
        })},
    "/v1/consents/{phone}/export": {"get": _operation(
        "Everything held about a number", ["admin"], parameters=[PHONE_PARAMETER],
        responses={
            "200": _ok("The number, its consents, ledger, and messages both ways", _ref("Export")),
            "404": _error("Nothing is held about that number", "not_found"),
            "422": _error("Not a phone number", "invalid_number"),
        })},
    "/v1/consents/import": {"post": {
        **_operation(
            "Import consent collected elsewhere, from a CSV", ["admin"],
            parameters=[{"name": "name", "in": "query", "required": False,
                         "schema": {"type": "string", "maxLength": 200},
                         "description": "The file's name, for people."}],
            description="The body is the CSV itself (`text/csv`, UTF-8, up to 2 GiB, streamed): columns `phone`, "
                        "`program`, `status` (`opted_in` or `opted_out`), every other column kept as evidence. "
                        "It is stored and the worker imports it; follow it at the `Location` given. A row is "
                        "refused, with its line and reason in the results, for a bad number, program or status, "
                        "a value the store cannot hold, an opt-out it would override, a number erased after it "
                        "opted out, or an opt-in while a STOP binds under a state rule.",
            responses={
                "202": _ok("Received and queued", _ref("ImportState"),
                           Location={"schema": {"type": "string"}, "description": "The import's state."}),
                "413": _error("Larger than 2 GiB", "too_large"),
                "422": _error("Not UTF-8 text, or its header lacks a column or names one twice", "invalid_file"),
            }),
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
    }, "get": _operation(
        "The newest imports (50)", ["admin"],
        responses={"200": _ok("Newest first", {"type": "object", "required": ["imports"], "properties": {
            "imports": {"type": "array", "items": _ref("ImportState")}}})})},
    "/v1/consents/import/{import_id}": {"get": _operation(
        "An import's progress and counts", ["admin"], parameters=[IMPORT_PARAMETER],
        responses={
            "200": _ok("Where the import stands", _ref("ImportState")),
            "404": _error("No such import", "not_found"),
        })},
    "/v1/consents/import/{import_id}/results": {"get": _operation(
        "Every row's result: imported, or refused and why", ["admin"], parameters=[IMPORT_PARAMETER],
        responses={
            "200": {"description": "CSV: line,result,reason for every line done so far",
                    "content": {"text/csv": {"schema": {"type": "string"}}}},
            "404": _error("No such import", "not_found"),
        })},
    "/v1/consents/{phone}/erase": {"post": _operation(
        "Erase a number's personal data (a suppression hash stays where it opted out)", ["admin"],
        parameters=[PHONE_PARAMETER],
        responses={
            "200": _ok("Erased", _ref("Erasure")),
            "404": _error("Nothing is held about that number", "not_found"),
            "422": _error("Not a phone number", "invalid_number"),
        })},
}


@lru_cache(maxsize=1)
def document() -> dict:
    """The OpenAPI document (built once per process)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SMS consent gateway",
            "version": "1",
            "description": "Sits between a business and Twilio: every text is checked against the consent "
                           "store, at the door and again right before it is sent. Errors are "
                           "`{\"error\": {\"code\": ..., \"message\": ...}}`; match on `code`. A JSON body "
                           "may not hold what the store cannot: NUL or lone surrogates in any key or string, "
                           "nesting deeper than 32, NaN, Infinity or integers past 64 bits (422 "
                           "`invalid_request`, with `field` naming the place, e.g. `evidence.note`).",
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from `smsgate keys create`."}},
        },
    }


@bp.get("/openapi.json")
@public
def openapi():
    return jsonify(document())
