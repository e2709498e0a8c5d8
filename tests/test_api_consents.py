"""GET /v1/consents/{phone} and POST /v1/consents/{phone}/opt-out: consent by other means."""

from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from gateway import policy, programs
from gateway.consent import Input, Source, service
from gateway.models import LedgerEvent, PhoneNumber, utcnow
from gateway.numbers import parse

PERSON = "+14155552671"


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def opt_in(db, *slugs, number=PERSON):
    with db.transaction() as session:
        row = service.number_row(session, parse(number))
        for slug in slugs:
            service.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN,
                          service.Evidence(Source.IMPORT, actor="crm-import"), now=utcnow())


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
        number = service.find_number(session, PERSON)
        decision = policy.may_send(session, number, programs.by_slug(session, "deals"), policy.Kind.INFORMATIONAL,
                                   utcnow(), suppression_key=gateway.settings.suppression_key,
                                   rules=gateway.quiet_hours)
    assert decision.reason is policy.Reason.OPTED_OUT


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
    ({"program": "deals", "evidence": "on the phone"}, 400, "bad_request"),
    ({"program": "deals", "evidence": {"note": "x" * 5000}}, 400, "bad_request"),
    ({"program": "deals", "programme": "alerts"}, 400, "bad_request"),
    (["deals"], 400, "bad_request"),
    ({"program": "nope"}, 422, "unknown_program"),
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
