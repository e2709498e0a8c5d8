"""/openapi.json describes the /v1 API as it is: every route, and every answer the app gives.

schemathesis generates requests from the document, sends them to the app, and checks each answer
(status code, content type, body) against it. A route the document forgets, or one it invents,
fails the coverage test.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.web import openapi
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)

_FLASK_PARAMETER = re.compile(r"<(?:[a-z_]+:)?([a-z_]+)>")


def app_operations(app) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every /v1 route the app serves."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1"):
            path = _FLASK_PARAMETER.sub(r"{\1}", rule.rule)
            found |= {(method.lower(), path) for method in rule.methods - {"HEAD", "OPTIONS"}}
    return found


def documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in openapi.document()["paths"].items() for method in item}


def test_every_v1_route_is_documented_and_every_documented_route_exists(app):
    assert app_operations(app) == documented_operations()


def test_the_document_is_served_without_a_key(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.is_json
    body = response.json
    assert body["openapi"] == "3.1.0"
    assert body["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key from `smsgate keys create`."}
    assert all(op["security"] == [{"bearer": []}] for item in body["paths"].values() for op in item.values())


def test_the_documented_refusals_are_the_gates(client):
    send = client.get("/openapi.json").json["paths"]["/v1/messages"]["post"]["responses"]["409"]
    codes = send["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]["properties"]["code"]
    assert set(codes["enum"]) == {"no_consent", "pending_confirmation", "opted_out", "suppressed", "unreachable",
                                  "landline", "country_not_allowed", "frequency_cap"}


@pytest.fixture
def admin(make_key):
    return {"Authorization": f"Bearer {make_key('admin')}"}


def test_the_served_document_is_the_one_tested(client):
    assert client.get("/openapi.json").json == json.loads(json.dumps(openapi.document()))


# Loaded when the module is collected: the document comes from code, not from a running app, and the
# test sends each generated request to the app over real HTTP (the live server).
schema = schemathesis.openapi.from_dict(openapi.document())


@schema.parametrize()
@settings(max_examples=int(os.environ.get("OPENAPI_EXAMPLES", "25")), deadline=None,
          suppress_health_check=list(HealthCheck))
def test_the_app_answers_as_documented(case, live_server, admin, captured_queue):
    # Sends the requests enqueue go to a queue no worker reads. Not checked: that every schema-valid
    # request is accepted. A well-formed send to a number without consent, or to a program that does
    # not exist, must be refused: that is the gateway's job, and the refusal is documented.
    case.call_and_validate(base_url=live_server, headers=admin,
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
