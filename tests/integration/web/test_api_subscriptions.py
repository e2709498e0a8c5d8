"""POST /v1/subscriptions: start double opt-in over the API, every refusal and limit."""

import dataclasses
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store.models import ApiKey, Consent, LedgerEvent, OutboundMessage, PhoneNumber, Program
from gateway.store.programs import by_slug

PHONE = "+14155550123"


@pytest.fixture(autouse=True)
def _fresh_limits(gateway):
    gateway.limiter.reset()


@pytest.fixture
def subscribe(client, make_key):
    key = make_key("subscribe")

    def post(body=None, *, key=key, **kwargs):
        headers = {"Authorization": f"Bearer {key}", "User-Agent": "crm-sync/2.1"}
        if body is None:
            return client.post("/v1/subscriptions", headers=headers, **kwargs)
        return client.post("/v1/subscriptions", json=body, headers=headers, **kwargs)

    return post


def counts(db):
    with db.sessions() as session:
        return tuple(session.scalar(select(func.count()).select_from(t))
                     for t in (PhoneNumber, Consent, LedgerEvent, OutboundMessage))


def status_of(db, phone=PHONE, slug="deals"):
    with db.sessions() as session:
        return session.scalar(select(Consent.status).join(PhoneNumber).join(Program)
                              .where(PhoneNumber.e164 == phone, Program.slug == slug))


def apply(db, input, phone=PHONE, slug="deals"):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        if input is Input.CONFIRM_YES:
            consents.apply(session, row, by_slug(session, slug), Input.API_REQUEST, consents.Evidence(Source.API),
                          expires_at=datetime.now().astimezone() + timedelta(hours=1))
        consents.apply(session, row, by_slug(session, slug), input, consents.Evidence(Source.SMS))


def test_a_request_records_pending_with_its_evidence_and_queues_the_text(subscribe, db, settings):
    evidence = {"disclosure_text": "Get Acme Deals by text…", "disclosure_version": "v7", "ip": "203.0.113.7",
                "user_agent": "Mozilla/5.0", "page_url": "https://shop.example/signup"}
    response = subscribe({"phone": "(415) 555-0123", "program": "deals", "evidence": evidence})
    assert response.status_code == 202, response.json
    body = response.json
    assert (body["status"], body["phone"], body["program"]) == ("pending", PHONE, "deals")
    expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=settings.pending_ttl_hours - 1) < expires_at - datetime.now().astimezone() \
        <= timedelta(hours=settings.pending_ttl_hours)
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent)).one()
        key_name = session.scalars(select(ApiKey.name)).one()
        message = session.scalars(select(OutboundMessage)).one()
    assert (event.type, event.source, event.actor, event.reference) == ("request", "api", key_name, body["request_id"])
    assert event.evidence["client_evidence"] == evidence
    assert (event.evidence["api_address"], event.evidence["api_user_agent"]) == ("127.0.0.1", "crm-sync/2.1")
    assert event.evidence["confirmation_text"] == message.body
    assert (message.kind, message.status) == ("confirmation", "queued")


def test_an_opted_in_number_gets_200_and_no_new_text(subscribe, db):
    apply(db, Input.CONFIRM_YES)
    before = counts(db)
    response = subscribe({"phone": PHONE, "program": "deals"})
    assert response.status_code == 200
    assert response.json == {"status": "opted_in", "phone": PHONE, "program": "deals"}
    assert counts(db) == before
    assert status_of(db) == "opted_in"  # never downgraded to pending


def test_asking_again_while_pending_sends_again_within_the_limit(subscribe, db):
    for expected in (202, 202, 202, 429):
        assert subscribe({"phone": PHONE, "program": "deals"}).status_code == expected
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 3


@pytest.mark.parametrize("opt_out", [Input.KEYWORD_STOP, Input.CARRIER_OPT_OUT])
def test_opted_out_or_carrier_blocked_numbers_get_409(subscribe, db, opt_out):
    apply(db, opt_out)
    before = counts(db)
    response = subscribe({"phone": PHONE, "program": "deals"})
    assert response.status_code == 409
    error = response.json["error"]
    assert error["code"] == "opted_out"
    assert "text START to +15005550006 themselves" in error["message"] and "then DEALS" in error["message"]
    assert (error["rejoin_keywords"], error["sender"]) == (["START", "DEALS"], "+15005550006")
    assert counts(db) == before and status_of(db) == "opted_out"


def test_a_suppressed_number_gets_409(subscribe, db, settings):
    with db.transaction() as session:
        consents.suppress(session, settings.suppression_key, PHONE, "erased")
    response = subscribe({"phone": PHONE, "program": "deals"})
    assert (response.status_code, response.json["error"]["code"]) == (409, "suppressed")
    assert counts(db) == (0, 0, 0, 0)


def test_an_erased_number_that_had_opted_out_stays_refused_even_if_opted_in_again(subscribe, client, make_key, db):
    """STOP, erasure, then an opt-in from elsewhere (an import): the API must not answer 200 for it."""
    apply(db, Input.CONFIRM_YES)
    apply(db, Input.KEYWORD_STOP)
    erased = client.post(f"/v1/consents/{PHONE}/erase", headers={"Authorization": f"Bearer {make_key('admin')}"})
    assert erased.json["suppressed"] is True
    apply(db, Input.IMPORT_OPT_IN)
    before = counts(db)
    for program in ("deals", "alerts"):
        response = subscribe({"phone": PHONE, "program": program})
        assert (response.status_code, response.json["error"]["code"]) == (409, "suppressed")
    assert counts(db) == before


@pytest.mark.parametrize("sender", ["+15005550006", "+18885550199", "(888) 555-0199"])
def test_our_own_sender_numbers_are_refused(subscribe, db, sender):
    response = subscribe({"phone": sender, "program": "deals"})
    assert (response.status_code, response.json["error"]["code"]) == (422, "own_sender")
    assert counts(db) == (0, 0, 0, 0)


@pytest.mark.parametrize("body, code", [
    ({"phone": "not a phone", "program": "deals"}, "invalid_number"),
    ({"phone": "+1415555", "program": "deals"}, "invalid_number"),
    ({"program": "deals"}, "invalid_number"),
    ({"phone": PHONE, "program": "nope"}, "unknown_program"),
    ({"phone": PHONE}, "unknown_program"),
    ({"phone": "+442079460000", "program": "deals"}, "not_mobile"),
    ({"phone": "+16045550123", "program": "deals"}, "country_not_allowed"),
    ({"phone": PHONE, "program": "deals", "evidence": "yes"}, "invalid_evidence"),
    ({"phone": PHONE, "program": "deals", "evidence": {"ip": "10.0.0.300"}}, "invalid_evidence"),
    ({"phone": PHONE, "program": "deals", "evidence": {"blob": "x" * 9000}}, "invalid_evidence"),
])
def test_bad_input_is_422_and_changes_nothing(subscribe, db, body, code):
    response = subscribe(body)
    assert response.status_code == 422, response.json
    assert response.json["error"]["code"] == code
    assert counts(db) == (0, 0, 0, 0)


def test_a_landline_learnt_from_a_failed_delivery_is_refused(subscribe, db):
    with db.transaction() as session:
        store_consents.number_row(session, parse(PHONE)).reachability = "landline"
    response = subscribe({"phone": PHONE, "program": "deals"})
    assert (response.status_code, response.json["error"]["code"]) == (422, "not_mobile")


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b""])
def test_a_body_that_is_not_a_json_object_is_400(subscribe, db, raw):
    response = subscribe(data=raw, content_type="application/json")
    assert (response.status_code, response.json["error"]["code"]) == (400, "bad_request")
    assert counts(db) == (0, 0, 0, 0)


def test_keys_need_the_subscribe_scope(client, make_key, db):
    assert client.post("/v1/subscriptions", json={"phone": PHONE, "program": "deals"}).status_code == 401
    response = client.post("/v1/subscriptions", json={"phone": PHONE, "program": "deals"},
                           headers={"Authorization": f"Bearer {make_key('send')}"})
    assert (response.status_code, response.json["error"]["code"]) == (403, "forbidden")
    admin = client.post("/v1/subscriptions", json={"phone": PHONE, "program": "deals"},
                        headers={"Authorization": f"Bearer {make_key('admin')}"})
    assert admin.status_code == 202


def test_over_the_per_number_limit_is_429_with_retry_after_and_nothing_recorded(subscribe, db):
    for program in ("deals", "alerts", "deals"):
        assert subscribe({"phone": PHONE, "program": program}).status_code == 202
    before = counts(db)
    response = subscribe({"phone": PHONE, "program": "alerts"})
    assert response.status_code == 429
    assert (response.json["error"]["code"], response.json["error"]["scope"]) == ("rate_limited", "number")
    assert 0 < int(response.headers["Retry-After"]) <= 24 * 3600
    assert counts(db) == before


def test_the_per_client_limit_counts_the_persons_address_when_given(subscribe, db):
    phones = [f"+1415555{n:04d}" for n in range(200, 212)]
    for phone in phones[:10]:
        assert subscribe({"phone": phone, "program": "deals", "evidence": {"ip": "203.0.113.7"}}).status_code == 202
    limited = subscribe({"phone": phones[10], "program": "deals", "evidence": {"ip": "203.0.113.7"}})
    assert (limited.status_code, limited.json["error"]["scope"]) == (429, "client")
    # Another person's address has its own allowance; without one, the caller's address is counted.
    assert subscribe({"phone": phones[10], "program": "deals", "evidence": {"ip": "203.0.113.8"}}).status_code == 202
    for phone in phones[:10]:
        subscribe({"phone": phone, "program": "alerts"})
    assert subscribe({"phone": phones[11], "program": "deals"}).json["error"]["scope"] == "client"


def test_the_per_program_limit_comes_from_settings(subscribe, db, gateway, monkeypatch):
    monkeypatch.setattr(gateway, "settings",
                        dataclasses.replace(gateway.settings, confirmation_limit_per_program="2 per hour"))
    ips = iter(f"198.51.100.{n}" for n in range(1, 10))
    for phone in ("+14155550301", "+14155550302"):
        assert subscribe({"phone": phone, "program": "deals", "evidence": {"ip": next(ips)}}).status_code == 202
    response = subscribe({"phone": "+14155550303", "program": "deals", "evidence": {"ip": next(ips)}})
    assert (response.status_code, response.json["error"]["scope"]) == (429, "program")
    assert subscribe({"phone": "+14155550303", "program": "alerts", "evidence": {"ip": next(ips)}}).status_code == 202


def test_nobody_can_unsubscribe_someone_else_through_the_api(subscribe, db):
    apply(db, Input.CONFIRM_YES)
    for program in ("deals", "deals", "deals", "deals"):
        assert subscribe({"phone": PHONE, "program": program}).status_code == 200
    assert status_of(db) == "opted_in"


def test_refused_and_failed_requests_take_no_slot(subscribe, db, gateway, monkeypatch, settings):
    """Only a request whose text goes out takes a slot: with one allowed per client and per key,
    every refusal (and a request the store cannot hold) leaves it for the good request."""
    monkeypatch.setattr(gateway, "settings", dataclasses.replace(
        gateway.settings, confirmation_limit_per_client="1 per hour", confirmation_limit_per_key="1 per hour"))
    apply(db, Input.KEYWORD_STOP, phone="+14155550401")
    apply(db, Input.CONFIRM_YES, phone="+14155550402")
    with db.transaction() as session:
        consents.suppress(session, settings.suppression_key, "+14155550403", "erased")
        store_consents.number_row(session, parse("+14155550404")).reachability = "landline"
    ip = {"ip": "203.0.113.7"}
    refused = [
        ({"phone": "+14155550401", "program": "deals", "evidence": ip}, 409),  # opted out
        ({"phone": "+14155550403", "program": "deals", "evidence": ip}, 409),  # suppressed
        ({"phone": "+15005550006", "program": "deals", "evidence": ip}, 422),  # our own sender
        ({"phone": "+14155550404", "program": "deals", "evidence": ip}, 422),  # a landline
        ({"phone": "+16045550123", "program": "deals", "evidence": ip}, 422),  # outside the countries
        ({"phone": "+1415555", "program": "deals", "evidence": ip}, 422),  # not a number
        ({"phone": "+14155550405", "program": "nope", "evidence": ip}, 422),  # no such program
        ({"phone": "+14155550402", "program": "deals", "evidence": ip}, 200),  # already opted in
    ]
    for body, status in refused:
        assert subscribe(body).status_code == status, body
    # Evidence the store cannot hold: refused at the edge, or failing in the store; either way no slot.
    assert subscribe({"phone": "+14155550406", "program": "deals",
                      "evidence": {**ip, "note": "\ud800"}}).status_code in (422, 500)
    assert subscribe({"phone": "+14155550407", "program": "deals", "evidence": ip}).status_code == 202
    limited = subscribe({"phone": "+14155550408", "program": "deals", "evidence": {"ip": "203.0.113.8"}})
    assert (limited.status_code, limited.json["error"]["scope"]) == (429, "key")


def test_made_up_addresses_do_not_raise_a_keys_allowance(subscribe, make_key, db, gateway, monkeypatch):
    """evidence.ip is the caller's to write: the key has its own limit whatever it says."""
    monkeypatch.setattr(gateway, "settings",
                        dataclasses.replace(gateway.settings, confirmation_limit_per_key="5 per hour"))
    answers = [subscribe({"phone": f"+1415555{n + 500:04d}", "program": "deals",
                          "evidence": {"ip": f"198.51.100.{n + 1}"}}) for n in range(20)]
    assert [a.status_code for a in answers] == [202] * 5 + [429] * 15
    assert {a.json["error"]["scope"] for a in answers[5:]} == {"key"}
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboundMessage)) == 5
    # Another key has its own allowance.
    other = make_key("subscribe")
    assert subscribe({"phone": "+14155550599", "program": "deals", "evidence": {"ip": "198.51.100.99"}},
                     key=other).status_code == 202


def test_an_ipv6_person_cannot_rotate_addresses_within_a_network(subscribe, db, gateway, monkeypatch):
    monkeypatch.setattr(gateway, "settings",
                        dataclasses.replace(gateway.settings, confirmation_limit_per_client="3 per hour"))
    answers = [subscribe({"phone": f"+1415555{n + 600:04d}", "program": "deals",
                          "evidence": {"ip": f"2001:db8:5:6::{n + 1:x}"}}) for n in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    assert answers[3].json["error"]["scope"] == "client"
