"""POST /v1/messages and GET /v1/messages/{id}: validation, the gate's answers, idempotency."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents, inbound, policy
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import IdempotencyRecord, MessageEvent, OutboundMessage, utcnow
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)

PHONE = "+14155550131"
EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")
# Mobiles around the world, to find one in quiet hours (or not) whatever the real time is.
WORLD = ["+12125550123", "+447911123456", "+61412345678", "+819012345678", "+919812345678", "+5511987654321",
         "+33612345678", "+16045550123"]


@pytest.fixture(autouse=True)
def queue(captured_queue):
    """What the requests enqueue, kept from the session's worker (it would send them)."""
    return captured_queue


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send')}"}


def consent(db, phone=PHONE, slug="orders", *inputs):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for step in inputs or (Input.IMPORT_OPT_IN,):
            consents.apply(session, row, programs.by_slug(session, slug), step, EVIDENCE,
                          expires_at=utcnow() + timedelta(hours=48) if step is Input.API_REQUEST else None)


def post(client, headers, **fields):
    body = {"to": PHONE, "program": "orders", "body": "Your order shipped"}
    body.update(fields)
    return client.post("/v1/messages", json={k: v for k, v in body.items() if v is not None}, headers=headers)


def messages(db):
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(OutboundMessage))


# --- auth and validation ---------------------------------------------------------------------------


def test_a_key_with_the_send_scope_is_required(client, make_key):
    assert post(client, {}).status_code == 401
    assert post(client, {"Authorization": "Bearer nope"}).status_code == 401
    refused = post(client, {"Authorization": f"Bearer {make_key('subscribe')}"})
    assert (refused.status_code, refused.json["error"]["code"]) == (403, "forbidden")


@pytest.mark.parametrize(("payload", "status", "code"), [
    ("not json", 400, "bad_request"),
    ([1, 2], 400, "bad_request"),
    ({"program": "orders", "body": "hi"}, 422, "invalid_request"),
    ({"to": PHONE, "body": "hi"}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders"}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": ""}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": "x" * 1601}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": 7}, 422, "invalid_request"),
    ({"to": 4155550131, "program": "orders", "body": "hi"}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": "hi", "media": "x"}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": "hi", "idempotency_key": 5}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": "hi", "idempotency_key": "has space"}, 422, "invalid_request"),
    ({"to": PHONE, "program": "orders", "body": "hi", "idempotency_key": "k" * 201}, 422, "invalid_request"),
    ({"to": PHONE, "program": "nope", "body": "hi"}, 422, "unknown_program"),
    ({"to": PHONE, "program": "orders", "body": "a\x00b"}, 422, "invalid_request"),
    ({"to": PHONE, "program": "ord\x00ers", "body": "hi"}, 422, "invalid_request"),
    ({"to": "12", "program": "orders", "body": "hi"}, 422, "invalid_number"),
    ({"to": "+1 415 555", "program": "orders", "body": "hi"}, 422, "invalid_number"),
    ({"to": "+442079460000", "program": "orders", "body": "hi"}, 422, "not_mobile"),
])
def test_bad_requests_change_nothing(client, headers, db, payload, status, code):
    if isinstance(payload, str):
        response = client.post("/v1/messages", data=payload, headers={**headers, "Content-Type": "application/json"})
    else:
        response = client.post("/v1/messages", json=payload, headers=headers)
    assert (response.status_code, response.json["error"]["code"]) == (status, code)
    assert messages(db) == 0
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0


def test_invalid_numbers_say_why(client, headers):
    assert post(client, headers, to="+1 415 555").json["error"]["reason"] == "short_code"
    assert post(client, headers, to="+1 415 555 01").json["error"]["reason"] == "too_short"
    assert post(client, headers, to="+442079460000").json["error"]["kind"] == "fixed_line"


def test_a_body_of_1600_characters_is_accepted(client, headers, db):
    consent(db)
    response = post(client, headers, body="x" * 1600)
    assert response.status_code == 202
    assert (response.json["segments"], response.json["encoding"]) == (11, "GSM-7")


# --- the gate's answers ----------------------------------------------------------------------------


def test_accepted_messages_are_queued_with_their_segments(client, headers, db, queue):
    consent(db)
    response = post(client, headers, body="Ünïcode ✓ shipped", to="(415) 555-0131")
    assert response.status_code == 202
    body = response.json
    assert queue.ids() == [body["id"]]
    assert body["status"] == "queued" and body["id"].startswith("msg_")
    assert (body["to"], body["program"], body["segments"], body["encoding"]) == (PHONE, "orders", 1, "UCS-2")
    assert response.headers["Location"].endswith(f"/v1/messages/{body['id']}")
    with db.sessions() as session:
        message = session.get(OutboundMessage, body["id"])
        assert (message.status, message.kind, message.sender, message.body) == (
            "queued", "transactional", "+18885550199", "Ünïcode ✓ shipped")
        assert message.recheck_at is not None  # the sweeper finds it if its task is lost


@pytest.mark.parametrize(("inputs", "code"), [
    ((), "no_consent"),
    ((Input.API_REQUEST,), "pending_confirmation"),
    ((Input.IMPORT_OPT_IN, Input.KEYWORD_STOP), "opted_out"),
])
def test_refusals_name_the_reason_and_store_nothing(client, headers, db, inputs, code, queue):
    if inputs:
        consent(db, PHONE, "alerts", *inputs)
    response = post(client, headers, program="alerts")
    assert (response.status_code, response.json["error"]["code"]) == (409, code)
    assert response.json["error"]["to"] == PHONE and response.json["error"]["message"]
    assert messages(db) == 0 and queue.take() == []


def test_a_number_we_hold_is_taken_from_the_store_and_only_new_ones_are_parsed(client, headers, db, monkeypatch):
    consent(db)
    parsed = []
    real_parse = policy.parse

    def counting_parse(raw, region="US"):
        parsed.append(raw)
        return real_parse(raw, region)

    monkeypatch.setattr(policy, "parse", counting_parse)
    assert post(client, headers).status_code == 202  # PHONE, held and validated when its row was made
    assert parsed == []
    stranger = "+14155550177"
    refused = post(client, headers, to=stranger)
    assert (refused.status_code, refused.json["error"]["code"]) == (409, "no_consent")
    assert parsed == [stranger]
    # Other forms are parsed before the gate, as ever; the answer is the same number's.
    national = post(client, headers, to="(415) 555-0131")
    assert (national.status_code, national.json["to"]) == (202, PHONE)


# Not E.164 as written, but forms the parser reads as PHONE: a trailing newline, a full-width or an
# Arabic-Indic last digit. They were looked up literally and found no consent; they are PHONE's answer.
NOT_QUITE_E164 = [PHONE + "\n", PHONE[:-1] + "\uff11", PHONE[:-1] + "\u0661", "\uff0b" + PHONE[1:]]


@pytest.mark.parametrize("to", NOT_QUITE_E164)
def test_a_number_written_with_odd_characters_is_the_same_number(client, headers, db, to):
    consent(db)
    accepted = post(client, headers, to=to)
    assert (accepted.status_code, accepted.json["to"]) == (202, PHONE)
    consent(db, PHONE, "alerts", Input.IMPORT_OPT_IN, Input.KEYWORD_STOP)
    refused = post(client, headers, to=to, program="alerts")
    assert (refused.status_code, refused.json["error"]["code"], refused.json["error"]["to"]) == (
        409, "opted_out", PHONE)


@pytest.mark.parametrize("to", ["+1415555013\n", "+1415555013\uff11\uff11\uff11", "+1415555\uff10"])
def test_a_number_that_is_no_number_after_parsing_is_invalid(client, headers, db, to):
    response = post(client, headers, to=to)
    assert (response.status_code, response.json["error"]["code"]) == (422, "invalid_number")
    assert messages(db) == 0


def test_a_held_number_our_metadata_calls_invalid_is_still_refused_as_invalid(client, headers, gateway):
    inbound.handle(gateway, inbound.InboundText("SM" + "3" * 32, "+12005550100", "+15005550006", "STOP"))
    response = post(client, headers, to="+12005550100")
    assert (response.status_code, response.json["error"]["code"]) == (422, "invalid_number")


def test_suppressed_landline_and_foreign_numbers_are_refused(client, headers, db, gateway):
    consent(db, PHONE)
    with db.transaction() as session:
        consents.suppress(session, gateway.settings.suppression_key, PHONE, "erased")
    assert post(client, headers).json["error"]["code"] == "suppressed"
    consent(db, "+14155550132")
    with db.transaction() as session:
        store_consents.find_number(session, "+14155550132").reachability = "landline"
    assert post(client, headers, to="+14155550132").json["error"]["code"] == "landline"
    consent(db, "+447911123456")
    assert post(client, headers, to="+447911123456").json["error"]["code"] == "country_not_allowed"
    assert messages(db) == 0


def _world_program(db, example_programs):
    spec = replace(next(p for p in example_programs if p.slug == "deals"), slug="world", join_keywords=("WORLD",),
                   allowed_countries=("US", "GG", "AU", "JP", "IN", "BR", "FR", "CA"))
    with db.transaction() as session:
        programs.store(session, [spec])


def _number_in_quiet_hours(gateway, quiet: bool) -> str:
    now = utcnow()
    for phone in WORLD:
        states = [gateway.quiet_hours.next_allowed(phone, now + timedelta(minutes=m)) is not None for m in (0, 5)]
        if states == [quiet, quiet]:
            return phone
    raise AssertionError("no number in the sample is in that state now")


def test_marketing_in_quiet_hours_is_deferred_not_refused(client, headers, db, gateway, example_programs, queue):
    _world_program(db, example_programs)
    phone = _number_in_quiet_hours(gateway, quiet=True)
    consent(db, phone, "world")
    response = post(client, headers, to=phone, program="world", body="Sale!")
    assert response.status_code == 202
    assert response.json["status"] == "deferred"
    assert queue.ids() == []  # the sweeper releases it when due
    not_before = gateway.quiet_hours.next_allowed(phone, utcnow())
    assert response.json["not_before"] == not_before.isoformat().replace("+00:00", "Z")
    with db.sessions() as session:
        message = session.get(OutboundMessage, response.json["id"])
        assert (message.status, message.reason, message.not_before) == ("deferred", "quiet_hours", not_before)


def test_marketing_in_open_hours_is_queued(client, headers, db, gateway, example_programs):
    _world_program(db, example_programs)
    phone = _number_in_quiet_hours(gateway, quiet=False)
    consent(db, phone, "world")
    assert post(client, headers, to=phone, program="world", body="Sale!").json["status"] == "queued"


# --- idempotency -----------------------------------------------------------------------------------


def test_the_same_key_returns_the_first_answer_and_sends_once(client, headers, db, queue):
    consent(db)
    first = post(client, headers, idempotency_key="order-1")
    again = client.post("/v1/messages", json={"to": PHONE, "program": "orders", "body": "Your order shipped"},
                        headers={**headers, "Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert first.json == again.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert messages(db) == 1
    assert queue.ids() == [first.json["id"]]  # enqueued once


def test_a_refusal_is_the_first_answer_too(client, headers, db):
    first = post(client, headers, idempotency_key="order-2")
    assert first.status_code == 409
    consent(db)  # consent arrives later; the key still means that first request
    again = post(client, headers, idempotency_key="order-2")
    assert (again.status_code, again.json) == (409, first.json)
    assert post(client, headers, idempotency_key="order-3").status_code == 202


def test_a_key_reused_for_another_request_is_refused(client, headers, db):
    consent(db)
    assert post(client, headers, idempotency_key="order-4").status_code == 202
    reused = post(client, headers, idempotency_key="order-4", body="Something else")
    assert (reused.status_code, reused.json["error"]["code"]) == (422, "idempotency_key_reused")
    assert messages(db) == 1


def test_the_same_number_written_differently_is_the_same_request(client, headers, db):
    consent(db)
    first = post(client, headers, idempotency_key="order-5")
    assert post(client, headers, idempotency_key="order-5", to="(415) 555-0131").json == first.json


def test_keys_belong_to_one_api_key(client, headers, make_key, db):
    consent(db)
    other = {"Authorization": f"Bearer {make_key('send')}"}
    assert post(client, headers, idempotency_key="shared").json["id"] != post(client, other,
                                                                                idempotency_key="shared").json["id"]
    assert messages(db) == 2


def test_header_and_field_must_agree(client, headers):
    response = client.post("/v1/messages", json={"to": PHONE, "program": "orders", "body": "x",
                                                 "idempotency_key": "a"}, headers={**headers, "Idempotency-Key": "b"})
    assert (response.status_code, response.json["error"]["code"]) == (422, "invalid_request")


def test_a_rejected_request_leaves_its_key_free(client, headers, db):
    assert post(client, headers, idempotency_key="order-6", program="nope").status_code == 422
    consent(db)
    assert post(client, headers, idempotency_key="order-6").status_code == 202


def test_concurrent_identical_requests_make_one_message(live_server, headers, db):
    consent(db)
    barrier = threading.Barrier(8)
    answers = []

    def send():
        barrier.wait()
        answers.append(requests.post(f"{live_server}/v1/messages", timeout=30, headers={
            **headers, "Idempotency-Key": "race-1"}, json={"to": PHONE, "program": "orders", "body": "Once"}))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1
    assert messages(db) == 1


# --- reading a message -----------------------------------------------------------------------------


def test_a_message_shows_its_status_reason_and_history(client, headers, make_key, db):
    consent(db)
    created = post(client, headers).json
    shown = client.get(f"/v1/messages/{created['id']}", headers={"Authorization": f"Bearer {make_key('read')}"})
    assert shown.status_code == 200
    body = shown.json
    assert {k: body[k] for k in ("id", "to", "program", "status", "reason", "error_code", "segments")} == {
        "id": created["id"], "to": PHONE, "program": "orders", "status": "queued", "reason": None,
        "error_code": None, "segments": 1}
    assert [h["status"] for h in body["history"]] == ["queued"]
    assert body["created_at"].endswith("Z") and body["updated_at"].endswith("Z")
    # The acceptance was the gate's decision: its record and the same in words come with the step.
    accepted = body["history"][0]
    assert (accepted["decision"]["stage"], accepted["decision"]["outcome"]) == ("api", "allowed")
    assert accepted["decision"]["consent"]["status"] == "opted_in"
    assert accepted["why"][0].startswith("Allowed when the API accepted it")
    with db.transaction() as session:
        session.add(MessageEvent(message_id=created["id"], status="blocked", reason="opted_out"))
    steps = client.get(f"/v1/messages/{created['id']}", headers=headers).json["history"]
    assert [h["reason"] for h in steps] == [None, "opted_out"]
    assert "decision" not in steps[1] and "why" not in steps[1]  # a step no gate decided


@pytest.mark.parametrize("message_id", ["msg_" + "0" * 32, "nope", "msg_../../etc"])
def test_unknown_messages_are_404(client, headers, message_id):
    response = client.get(f"/v1/messages/{message_id}", headers=headers)
    assert (response.status_code, response.json["error"]["code"]) == (404, "not_found")


def test_reading_needs_read_or_send(client, make_key):
    response = client.get("/v1/messages/msg_" + "0" * 32, headers={"Authorization": f"Bearer {make_key('subscribe')}"})
    assert response.status_code == 403


def test_a_key_revoked_here_stops_working_at_once(client, db, make_key):
    from gateway.services import keys

    key = make_key("send")
    assert client.get("/v1/messages/msg_" + "0" * 32, headers={"Authorization": f"Bearer {key}"}).status_code == 404
    with db.transaction() as session:
        name = keys.caller(db, key).name
        assert keys.revoke(session, name)
    response = client.get("/v1/messages/msg_" + "0" * 32, headers={"Authorization": f"Bearer {key}"})
    assert (response.status_code, response.json["error"]["code"]) == (401, "unauthorized")


def test_a_slug_with_a_nul_is_no_program_on_any_database(db):
    with db.sessions() as session:
        assert programs.by_slug(session, "ord\x00ers") is None
