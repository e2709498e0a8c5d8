"""GET /v1/consents/{phone} and POST /v1/consents/{phone}/opt-out: consent by other means."""

import json
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import Kind, Reason
from gateway.domain.numbers import parse
from gateway.services import consents, policy
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import LedgerEvent, PhoneNumber, utcnow

PERSON = "+14155552671"


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def opt_in(db, *slugs, number=PERSON):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        for slug in slugs:
            consents.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN,
                          consents.Evidence(Source.IMPORT, actor="crm-import"), now=utcnow())


def ledger_size(db):
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(LedgerEvent))


def test_reading_needs_a_key_with_the_read_scope(client, make_key):
    assert client.get(f"/v1/consents/{PERSON}").status_code == 401
    response = client.get(f"/v1/consents/{PERSON}", headers=auth(make_key("send")))
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert client.get(f"/v1/consents/{PERSON}", headers=auth(make_key("read"))).status_code == 200


def test_a_number_never_seen_has_no_consents(client, make_key):
    response = client.get(f"/v1/consents/{PERSON}", headers=auth(make_key("read")))
    assert response.get_json() == {"phone": PERSON, "consents": [], "events": []}


def test_consents_and_events_after_a_stop(client, make_key, twilio_post, db):
    opt_in(db, "deals")
    twilio_post("/webhooks/twilio/sms", {"MessageSid": "SM" + "7" * 32, "From": PERSON, "To": "+15005550006",
                                          "Body": "stop please"})
    response = client.get(f"/v1/consents/{quote('(415) 555-2671')}", headers=auth(make_key("read")))
    document = response.get_json()
    assert document["phone"] == PERSON
    assert {(c["program"], c["status"]) for c in document["consents"]} == {
        ("deals", "opted_out"), ("alerts", "opted_out")}
    assert all(c["updated_at"] for c in document["consents"])
    types = [(e["type"], e["program"], e["source"]) for e in document["events"]]
    assert types == [("import", "deals", "import"), ("opt_out", "deals", "sms"), ("opt_out", "alerts", "sms")]
    stop = document["events"][1]
    assert stop["evidence"]["body"] == "stop please" and stop["reference"] == "SM" + "7" * 32
    assert stop["occurred_at"]


def test_an_invalid_phone_is_422_with_the_error_shape(client, make_key):
    response = client.get("/v1/consents/not-a-phone", headers=auth(make_key("read")))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_number"


def test_opt_out_of_one_program_records_the_key_and_evidence(client, make_key, db, gateway):
    opt_in(db, "deals", "alerts")
    key = make_key("subscribe")
    response = client.post(f"/v1/consents/{PERSON}/opt-out", headers={**auth(key), "X-Request-Id": "call-42"},
                           json={"program": "deals", "evidence": {"channel": "phone", "agent": "Sam"}})
    assert response.status_code == 200
    document = response.get_json()
    assert {(c["program"], c["status"]) for c in document["consents"]} == {
        ("deals", "opted_out"), ("alerts", "opted_in")}
    event = document["events"][-1]
    assert (event["type"], event["program"], event["source"]) == ("opt_out", "deals", "api")
    assert event["evidence"] == {"channel": "phone", "agent": "Sam"}
    assert event["reference"] == "call-42"
    assert event["actor"].startswith("test-key-")
    with db.sessions() as session:
        number = store_consents.find_number(session, PERSON)
        decision = policy.gate_of(gateway).may_send(session, number, programs.by_slug(session, "deals"),
                                                    Kind.INFORMATIONAL, utcnow())
    assert decision.reason is Reason.OPTED_OUT


def test_opt_out_of_everything(client, make_key, db):
    opt_in(db, "orders")
    response = client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(make_key("admin")), json={"all": True})
    assert response.status_code == 200
    assert {(c["program"], c["status"]) for c in response.get_json()["consents"]} == {
        ("deals", "opted_out"), ("alerts", "opted_out"), ("orders", "opted_out")}


def test_opt_out_needs_the_subscribe_or_admin_scope(client, make_key, db):
    for scope in ("read", "send"):
        response = client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(make_key(scope)), json={"all": True})
        assert response.status_code == 403
    assert ledger_size(db) == 0


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 400, "bad_request"),
    ({"program": "deals", "all": True}, 400, "bad_request"),
    ({"all": "yes"}, 400, "bad_request"),
    ({"all": 1}, 400, "bad_request"),
    ({"program": 7}, 400, "bad_request"),
    ({"program": "deals", "programme": "alerts"}, 400, "bad_request"),
    (["deals"], 400, "bad_request"),
    ({"program": "nope"}, 422, "unknown_program"),
    ({"program": "nope", "evidence": {"note": "a\x00b"}}, 422, "unknown_program"),
])
def test_bad_opt_out_requests_change_nothing(client, make_key, db, body, status, code):
    response = client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(make_key("admin")), json=body)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PhoneNumber)) == 0
    assert ledger_size(db) == 0


def test_opt_out_with_a_body_that_is_not_json(client, make_key, db):
    response = client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(make_key("admin")), data="program=deals",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    assert ledger_size(db) == 0


def test_opt_out_for_an_invalid_phone_is_422(client, make_key, db):
    response = client.post("/v1/consents/12/opt-out", headers=auth(make_key("admin")), json={"all": True})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "invalid_number"
    assert ledger_size(db) == 0


# --- an opt-out is never lost to its evidence --------------------------------------------------------

def opt_out_raw(client, key, text: str):
    """POST raw JSON text (json= cannot carry a lone surrogate, NaN or a 5,000-digit number)."""
    return client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(key), data=text.encode(),
                       content_type="application/json")


def opt_out_event(db):
    with db.sessions() as session:
        return session.scalars(select(LedgerEvent).where(LedgerEvent.type == "opt_out")).one()


@pytest.mark.parametrize(("evidence", "field", "reason"), [
    ('{"agent": "Sam", "note": "a\\u0000b"}', "evidence.note", "NUL"),
    ('{"agent": "Sam", "note": "\\ud800"}', "evidence.note", "lone surrogate (U+D800)"),
    ('{"agent": "Sam", "\\udfffkey": "x"}', 'evidence["\\udfffkey"]', "name that contains a lone surrogate"),
    ('{"agent": "Sam", "note": NaN}', "evidence.note", "NaN"),
    ('{"agent": "Sam", "note": 1e999}', "evidence.note", "too large"),
    ('{"agent": "Sam", "note": ' + "9" * 5000 + "}", "evidence.note", "64-bit"),
    ('{"agent": "Sam", "note": ' + "[" * 40 + "]" * 40 + "}", "evidence.note" + "[0]" * 30, "more than 32 deep"),
    # So deep that the parser itself gives up: cut out all the same.
    ('{"agent": "Sam", "note": ' + "[" * 50_000 + "]" * 50_000 + "}", "evidence.note" + "[0]" * 30,
     "more than 32 deep"),
])
def test_an_opt_out_with_unstorable_evidence_is_recorded_with_what_can_be_kept(client, make_key, db, evidence,
                                                                              field, reason):
    opt_in(db, "deals")
    response = opt_out_raw(client, make_key("subscribe"), '{"program": "deals", "evidence": ' + evidence + "}")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert {(c["program"], c["status"]) for c in body["consents"]} == {("deals", "opted_out")}
    [warning] = body["warnings"]
    assert warning["code"] == "evidence_not_kept" and warning["field"] == field and reason in warning["message"]
    event = opt_out_event(db)
    assert event.evidence["agent"] == "Sam"
    [note] = event.evidence["gateway_left_out"]
    assert note["field"] == field and reason in note["reason"]
    # What was left out is gone; what stands for a container cut too deep stays within the limit.
    assert "\\u0000" not in json.dumps(event.evidence) and "\\ud800" not in json.dumps(event.evidence)


@pytest.mark.parametrize(("evidence", "reason"), [
    ('"on the phone"', "must be a JSON object, not a string"),
    ('["a call"]', "must be a JSON object, not an array"),
    ('{"note": "' + "x" * 5000 + '"}', "more than the 4,096 kept"),
    ("{" + ", ".join(f'"n{i}": "\\u0000"' for i in range(11)) + "}", "has 11 values that cannot be stored"),
])
def test_evidence_that_cannot_be_kept_at_all_still_records_the_opt_out(client, make_key, db, evidence, reason):
    response = opt_out_raw(client, make_key("subscribe"), '{"all": true, "evidence": ' + evidence + "}")
    assert response.status_code == 200
    [warning] = response.get_json()["warnings"]
    assert warning["field"] == "evidence" and reason in warning["message"]
    with db.sessions() as session:
        assert set(session.scalars(select(LedgerEvent.type))) == {"opt_out"}
        kept = session.scalars(select(LedgerEvent.evidence)).all()
    assert all(set(evidence) == {"gateway_left_out"} for evidence in kept)


def test_the_gateways_note_cannot_be_forged_by_the_caller(client, make_key, db):
    response = client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(make_key("subscribe")), json={
        "program": "deals", "evidence": {"gateway_left_out": [], "agent": "Sam"}})
    assert response.status_code == 200
    assert response.get_json()["warnings"][0]["field"] == "evidence.gateway_left_out"
    assert opt_out_event(db).evidence == {"agent": "Sam", "gateway_left_out": [
        {"field": "evidence.gateway_left_out", "reason": "is where the gateway notes what it left out"}]}


def test_an_opt_out_with_clean_evidence_has_no_warnings(client, make_key, db):
    response = client.post(f"/v1/consents/{PERSON}/opt-out", headers=auth(make_key("subscribe")), json={
        "program": "deals", "evidence": {"agent": "Sam", "note": "שלום \u200f 😀"}})
    assert response.status_code == 200 and "warnings" not in response.get_json()
    assert opt_out_event(db).evidence == {"agent": "Sam", "note": "שלום \u200f 😀"}


@pytest.mark.parametrize(("text", "field"), [
    ('{"program": "deals\\u0000"}', "program"),
    ('{"program": "\\ud800"}', "program"),
    ('{"all": true, "\\u0000": 1}', '["\\u0000"]'),
])
def test_unstorable_values_outside_the_evidence_are_422_naming_the_field(client, make_key, db, text, field):
    response = opt_out_raw(client, make_key("subscribe"), text)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field) and error["message"].startswith(field)
    assert ledger_size(db) == 0
