"""The JSON edge of /v1: every body is parsed and checked once (gateway/web/json_body.py), before a
view looks anything up, and what the store cannot hold is a 422 naming the field, not a 500.

The checker itself (gateway.domain.storable) is tested in test_storable.py; the opt-out's kinder handling
of its evidence in test_api_consents.py; every route under generated input in test_odd_input.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config import ROOT
from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store.models import IdempotencyRecord, LedgerEvent, OutboundMessage, PhoneNumber
from gateway.store.programs import by_slug
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)

PHONE = "+14155550177"
DEEP = "[" * 40 + "]" * 40
TOO_DEEP_TO_PARSE = "[" * 100_000 + "]" * 100_000


@pytest.fixture(autouse=True)
def queue(captured_queue):
    return captured_queue


@pytest.fixture
def post(client, make_key):
    key = make_key("admin")

    def send(path: str, text: str, **headers):
        return client.post(path, data=text.encode(), content_type="application/json",
                           headers={"Authorization": f"Bearer {key}", **headers})

    return send


def opted_in(db, phone=PHONE, slug="alerts"):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        consents.apply(session, row, by_slug(session, slug), Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT))


def stored(db):
    with db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(model))
                     for model in (PhoneNumber, LedgerEvent, OutboundMessage, IdempotencyRecord))


SEND = '{"to": "%s", "program": "alerts", "body": %s}' % (PHONE, "%s")
CASES = [
    # (path, body, field named)
    ("/v1/messages", SEND % '"\\ud800"', "body"),
    ("/v1/messages", SEND % '"hi \\udc00 there"', "body"),
    ("/v1/messages", SEND % '"a\\u0000b"', "body"),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "idempotency_key": "\\ud800"}' % PHONE,
     "idempotency_key"),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": %s}' % (PHONE, DEEP), "x" + "[0]" * 31),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": %s}' % (PHONE, TOO_DEEP_TO_PARSE),
     "x" + "[0]" * 31),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": NaN}' % PHONE, "x"),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": -Infinity}' % PHONE, "x"),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": 18446744073709551616}' % PHONE, "x"),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": %s}' % (PHONE, "7" * 5000), "x"),
    ("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "\\u0000": 1}' % PHONE, '["\\u0000"]'),
    ("/v1/messages/batch", '{"recipients": ["%s", "\\udfff"], "program": "alerts", "body": "x"}' % PHONE,
     "recipients[1]"),
    ("/v1/messages/batch", '{"recipients": ["%s"], "program": "alerts", "body": "\\ud83d"}' % PHONE, "body"),
    ("/v1/subscriptions", '{"phone": "%s", "program": "deals", "evidence": {"note": "a\\u0000"}}' % PHONE,
     "evidence.note"),
    ("/v1/subscriptions", '{"phone": "%s", "program": "deals", "evidence": {"page": "\\udfff"}}' % PHONE,
     "evidence.page"),
    ("/v1/subscriptions", '{"phone": "\\ud800", "program": "deals"}', "phone"),
    ("/v1/subscriptions", '{"phone": "%s", "program": "deals", "evidence": {"n": 1e400}}' % PHONE, "evidence.n"),
]


@pytest.mark.parametrize(("path", "text", "field"), CASES)
def test_what_the_store_cannot_hold_is_422_naming_the_field_and_changes_nothing(post, db, path, text, field):
    opted_in(db)  # so that a send would otherwise be accepted and written
    before = stored(db)
    response = post(path, text, **{"Idempotency-Key": "edge-1"} if path.startswith("/v1/messages") else {})
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)
    assert error["message"].startswith(field + " ")
    assert stored(db) == before


def test_a_lone_surrogate_under_an_idempotency_key_is_refused_and_the_key_stays_free(post, db):
    opted_in(db)
    assert post("/v1/messages", SEND % '"\\ud800"', **{"Idempotency-Key": "k-1"}).status_code == 422
    accepted = post("/v1/messages", SEND % '"hello"', **{"Idempotency-Key": "k-1"})
    assert accepted.status_code == 202


@pytest.mark.parametrize("text", ['{"to": "+1", ', "\xff\xfe{}", "[]", "null", "{}{}"])
def test_what_is_not_a_json_object_keeps_its_400(client, make_key, text):
    response = client.post("/v1/messages", data=text.encode("latin-1"), content_type="application/json",
                           headers={"Authorization": f"Bearer {make_key('send')}"})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_request"


def test_emoji_rtl_marks_and_other_scripts_are_taken_as_they_are(post, db):
    opted_in(db)
    body = "שלום \u200f\u202e 😀 naïve — 你好"
    response = post("/v1/messages", SEND % ('"' + body + '"'))
    assert response.status_code == 202
    with db.sessions() as session:
        assert session.scalar(select(OutboundMessage.body)) == body


def test_the_size_limit_still_applies(post, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = post("/v1/messages/batch", '{"recipients": ["' + "1" * limit + '"]}')
    assert response.status_code == 413


def test_a_subscription_user_agent_with_a_nul_is_kept_cleaned(post, db, gateway):
    gateway.limiter.reset()
    response = post("/v1/subscriptions", '{"phone": "%s", "program": "deals"}' % PHONE, **{"User-Agent": "crm\x00/1"})
    assert response.status_code == 202
    with db.sessions() as session:
        evidence = session.scalar(select(LedgerEvent.evidence))
    assert evidence["api_user_agent"] == "crm\ufffd/1"


def test_every_v1_view_reads_its_body_through_the_edge_check():
    """No /v1 module parses JSON itself: `request.get_json`, `request.json` and `json.loads` are the
    edge's alone, so a new route cannot skip the check by accident."""
    for path in sorted((ROOT / "gateway" / "web").glob("api_*.py")):
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"get_json", "json", "loads"}:
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                assert owner not in {"request", "json"}, f"{path.name}:{node.lineno} reads JSON itself"
