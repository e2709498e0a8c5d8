"""Odd input at every /v1 route and both webhooks: never a server error, and a refusal changes nothing.

Hypothesis draws requests from what callers and carriers can actually put on the wire: lone
surrogates (as JSON escapes, or as the CESU-8 bytes of a sloppy form encoder), NUL, right-to-left
and other invisible marks, emoji, nesting from just under the limit to far past what the parser can
take, NaN, Infinity and numbers past 64 bits, bytes that are not UTF-8. Every answer must be below
500; every 4xx must leave the store exactly as it was (every row of every table); an opt-out whose
program and number are good is recorded whatever its evidence; a STOP with NULs in it still stops.

Derandomized, so CI sees the same examples every run; the example counts keep each backend's run to
some seconds (ODD_INPUT_EXAMPLES scales them for a longer local hunt).
"""

from __future__ import annotations

import itertools
import json
import os
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from gateway.domain.consent import Input, Source
from gateway.domain.gate import ALLOW, Kind
from gateway.domain.numbers import parse
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store import outbox, programs
from gateway.store.models import Base, Consent, PhoneNumber, utcnow
from tests.conftest import AUTH_TOKEN
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)

SCALE = float(os.environ.get("ODD_INPUT_EXAMPLES", "1"))
PERSON = "+14155552671"  # opted in to alerts and deals; has a sent message for the status callbacks
SENDER = "+15005550006"
PROVIDER_SID = "SM" + "5" * 32


def examples(count: int):
    return settings(max_examples=max(1, int(count * SCALE)), derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.large_base_example])


# --- what goes on the wire ------------------------------------------------------------------------

ODD_CHARS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u200f", "\u202e", "\u2066", "\u200b", "\ufeff",
             "\ufffd", "😀", "\U0001f3fd", "\u200d", "\u0301", "é", "ß", "你", "ش", "\n", "\t", '"', "\\", "%", "&",
             "=", "+"]
odd_text = st.one_of(
    st.text(alphabet=st.one_of(st.characters(), st.sampled_from(ODD_CHARS)), max_size=16),
    st.sampled_from(["👍🏽", "🏳️‍🌈", "\u202eSTOP\u202c", "STOP\x00", "\ud83dSTOP", "\u0000"]),
)


class Raw(str):
    """A JSON fragment written as it is: what json.dumps cannot produce (or refuses to)."""


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


# Drawn as small values and built after, so that Hypothesis's reports stay readable.
odd_numbers = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9223372036854775808",
                     "-9223372036854775809", "1e-400", "-0", "0.1"]).map(Raw),
    st.sampled_from([20, 400, 5000]).map(lambda digits: Raw("9" * digits)),
)
deep = st.sampled_from([31, 33, 1_500, 50_000]).map(nested)
plain = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats())
leaves = st.one_of(odd_text, odd_numbers, deep, plain)  # odd three times out of four
def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3)


json_values = st.recursive(leaves, _containers, max_leaves=8)


def render(value) -> str:
    """JSON text of `value`; Raw fragments go in as they are, strings with ASCII escapes (so a lone
    surrogate travels as `\\ud800`, the only way JSON can carry one)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key)}: {render(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    return json.dumps(value)


def mostly(good: st.SearchStrategy, odd: st.SearchStrategy = odd_text) -> st.SearchStrategy:
    """Good three times out of four: a request must get past its first checks for the rest to matter."""
    return st.one_of(good, good, good, odd)


# Good values often enough that odd ones elsewhere in the request reach the store.
phones = st.one_of(st.sampled_from([PERSON, PERSON, PERSON, "(415) 555-2671", "+14155550100", "+442079460000", "12"]),
                   odd_text)
slugs = st.one_of(st.sampled_from(["alerts", "alerts", "deals", "orders", "nope"]), odd_text)
texts = st.one_of(st.sampled_from(["Hi there", "STOP"]), st.just(1700).map(lambda n: "x" * n), odd_text)
# Headers are latin-1, on one line.
header_text = st.text(alphabet=st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=40)
bodies_that_are_not_json = st.one_of(st.binary(max_size=40),
                                     st.sampled_from([b"", b"\xff\xfe{}", b'{"to": "\xed\xa0\x80"}']))


# Evidence as callers send it (an object), but with anything in it.
evidence_objects = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(["note", "agent", "ip", "page"]), odd_text), json_values,
                    min_size=1, max_size=4),
    json_values)


def json_object(required: dict, optional: dict) -> st.SearchStrategy[str]:
    """A JSON object with the route's fields (good or odd), perhaps more, or any JSON at all."""
    shaped = st.fixed_dictionaries(required, optional={**optional, "extra\u0000": json_values, "x": json_values})
    return st.one_of(shaped, shaped, shaped, json_values).map(render)


def v1_requests(route: str) -> st.SearchStrategy[dict]:
    """Requests for one /v1 route: method, path, headers and body."""
    message_ids = st.one_of(st.just("msg_" + "0" * 32), st.from_regex(r"\Amsg_[0-9a-f]{32}\Z"), odd_text)
    phone_path = phones.map(lambda phone: quote(phone, safe="", errors="surrogatepass"))
    headers = st.fixed_dictionaries({}, optional={"Idempotency-Key": st.one_of(st.just("key-1"), header_text),
                                                  "X-Request-Id": header_text, "User-Agent": header_text})
    if route == "/v1/messages":
        body = json_object({"to": phones, "program": slugs, "body": texts},
                           {"idempotency_key": st.one_of(st.just("key-1"), odd_text)})
        shape = st.tuples(st.just("POST"), st.just(route), body)
    elif route == "/v1/messages/batch":
        body = json_object({"recipients": st.lists(phones, max_size=4), "program": slugs, "body": texts},
                           {"idempotency_key": odd_text})
        shape = st.tuples(st.just("POST"), st.just(route), body)
    elif route == "/v1/messages/<message_id:message_id>":
        paths = message_ids.map(lambda m: "/v1/messages/" + quote(m, safe="", errors="surrogatepass"))
        shape = st.tuples(st.just("GET"), paths, st.just(""))
    elif route == "/v1/subscriptions":
        fresh = st.one_of(st.integers(100, 999).map(lambda n: f"+14155550{n}"), phones)  # pending: evidence kept
        body = json_object({"phone": fresh, "program": mostly(st.sampled_from(["deals", "alerts", "orders"])),
                            "evidence": evidence_objects}, {})
        shape = st.tuples(st.just("POST"), st.just(route), body)
    elif route == "/v1/consents/<phone>/opt-out":
        target = st.one_of(st.just({"all": True}), slugs.map(lambda slug: {"program": slug}),
                           st.fixed_dictionaries({}, optional={"program": slugs, "all": json_values}))
        rest = st.fixed_dictionaries({"evidence": evidence_objects}, optional={"x\u0000": json_values})
        body = st.one_of(st.tuples(target, rest).map(lambda parts: render({**parts[0], **parts[1]})),
                         json_values.map(render))
        shape = st.tuples(st.just("POST"), phone_path.map(lambda p: f"/v1/consents/{p}/opt-out"), body)
    elif route == "/v1/consents/<phone>/erase":
        shape = st.tuples(st.just("POST"), phone_path.map(lambda p: f"/v1/consents/{p}/erase"), st.just(""))
    elif route == "/v1/consents/<phone>/export":
        shape = st.tuples(st.just("GET"), phone_path.map(lambda p: f"/v1/consents/{p}/export"), st.just(""))
    elif route == "/v1/consents/<phone>":
        shape = st.tuples(st.just("GET"), phone_path.map(lambda p: f"/v1/consents/{p}"), st.just(""))
    elif route == "/v1/consents/import":
        # A CSV upload (the header usually right, the cells anything), or the listing.
        header = mostly(st.just("phone,program,status"), st.one_of(odd_text, st.just("phone,program")))
        cell = st.one_of(phones, slugs, st.sampled_from(["opted_in", "opted_out", "pending"]), odd_text)
        rows = st.lists(st.lists(cell, min_size=1, max_size=4).map(lambda cells: ",".join(cells)), max_size=4)
        csv_text = st.tuples(header, rows).map(lambda parts: "\n".join([parts[0], *parts[1]]) + "\n")
        shape = st.one_of(st.tuples(st.just("POST"), st.just(route), csv_text),
                          st.tuples(st.just("GET"), st.just(route), st.just("")))
    elif route in ("/v1/consents/import/<import_id>", "/v1/consents/import/<import_id>/results"):
        ids = st.one_of(st.uuids().map(str), st.text(alphabet="0123456789abcdef-", max_size=60), odd_text)
        tail = "/results" if route.endswith("/results") else ""
        paths = ids.map(lambda i: "/v1/consents/import/" + quote(i, safe="", errors="surrogatepass") + tail)
        shape = st.tuples(st.just("GET"), paths, st.just(""))
    else:
        raise AssertionError(f"no strategy for {route}: add one")
    encoded = shape.map(lambda s: (s[0], s[1], s[2].encode("utf-8", "surrogatepass")))
    # Now and then the body is not JSON text at all.
    odd_bodies = st.tuples(shape.map(lambda s: s[0]), shape.map(lambda s: s[1]), bodies_that_are_not_json)
    return st.fixed_dictionaries({"request": st.one_of(encoded, encoded, encoded, odd_bodies), "headers": headers})


# The routes this test drives: a test below fails when the app has one it does not.
V1_ROUTES = ["/v1/messages", "/v1/messages/batch", "/v1/messages/<message_id:message_id>", "/v1/subscriptions",
             "/v1/consents/<phone>/opt-out", "/v1/consents/<phone>/erase", "/v1/consents/<phone>/export",
             "/v1/consents/<phone>", "/v1/consents/import", "/v1/consents/import/<import_id>",
             "/v1/consents/import/<import_id>/results"]


def test_every_v1_route_is_driven(app):
    # A set: one path may be two rules (POST /v1/consents/import uploads, GET lists).
    assert {rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1")} == set(V1_ROUTES)


# --- the store, before and after --------------------------------------------------------------------

def snapshot(db) -> dict[str, list[tuple]]:
    """Every row of every table (the store is small here): a refusal must change none of them."""
    with db.sessions() as session:
        return {table.name: sorted(map(tuple, session.execute(select(table)).all()), key=repr)
                for table in Base.metadata.sorted_tables}


@pytest.fixture
def person(db, gateway, captured_queue):
    """PERSON opted in to alerts and deals, with a message Twilio has (for status callbacks)."""
    gateway.limiter.reset()
    now = utcnow()
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PERSON))
        for slug in ("alerts", "deals"):
            consents.apply(session, row, programs.by_slug(session, slug), Input.IMPORT_OPT_IN,
                          consents.Evidence(Source.IMPORT), now=now)
        message = outbox.accept(session, number=row, program=programs.by_slug(session, "alerts"),
                                kind=Kind.INFORMATIONAL, body="Hi", decision=ALLOW, now=now)
        outbox.advance(session, message, "sending", now=now)
        message.provider_sid = PROVIDER_SID
        outbox.advance(session, message, "sent", now=now)
        return message.id


def check_answer(response, before, after) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if 400 <= response.status_code < 500:
        changed = [name for name in before if before[name] != after[name]]
        assert not changed, f"a {response.status_code} changed {changed}: {response.get_data(as_text=True)[:300]}"


# --- /v1 ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", V1_ROUTES)
def test_property_odd_requests_to_v1_are_never_a_server_error_and_refusals_change_nothing(
        route, client, make_key, db, person, gateway):
    key = make_key("admin")
    takes_a_body = route in ("/v1/messages", "/v1/messages/batch", "/v1/subscriptions", "/v1/consents/<phone>/opt-out",
                             "/v1/consents/import")

    @examples(35 if takes_a_body else 15)
    @given(v1_requests(route))
    def run(drawn):
        method, path, body = drawn["request"]
        gateway.limiter.reset()  # the property is about input, not about the anti-pumping limits
        before = snapshot(db)
        response = client.open(path, method=method, data=body, content_type="application/json",
                               headers={"Authorization": f"Bearer {key}", **drawn["headers"]})
        check_answer(response, before, snapshot(db))

    # What the issue found, tried every run whatever Hypothesis draws.
    for request in REPORTED.get(route, []):
        run = example({"request": request, "headers": {"Idempotency-Key": "reported-1"}})(run)
    run()


def _post(path: str, text: str) -> tuple[str, str, bytes]:
    return "POST", path, text.encode()


_OPT_OUT = f"/v1/consents/{PERSON}/opt-out"
_DEEP = "[" * 5000 + "]" * 5000
REPORTED = {
    "/v1/messages": [
        _post("/v1/messages", '{"to": "%s", "program": "alerts", "body": "\\ud800"}' % PERSON),
        _post("/v1/messages", '{"to": "%s", "program": "alerts", "body": "hi", "x": %s}' % (PERSON, _DEEP)),
    ],
    "/v1/messages/batch": [
        _post("/v1/messages/batch", '{"recipients": ["%s"], "program": "alerts", "body": "\\udfff"}' % PERSON),
    ],
    "/v1/subscriptions": [
        _post("/v1/subscriptions", '{"phone": "+14155550123", "program": "deals", "evidence": {"n": "a\\u0000"}}'),
        _post("/v1/subscriptions", '{"phone": "+14155550124", "program": "deals", "evidence": {"n": "\\ud800"}}'),
        _post("/v1/subscriptions", '{"phone": "+14155550125", "program": "deals", "evidence": {"n": %s}}' % _DEEP),
    ],
    "/v1/consents/<phone>/opt-out": [
        _post(_OPT_OUT, '{"program": "alerts", "evidence": {"note": "a\\u0000b"}}'),
        _post(_OPT_OUT, '{"all": true, "evidence": {"note": "\\ud800", "n": NaN, "big": %s}}' % ("9" * 5000)),
        _post(_OPT_OUT, '{"program": "\\ud800"}'),
    ],
}


@examples(30)
@given(target=st.one_of(st.just({"all": True}),
                        st.sampled_from(["alerts", "deals", "orders"]).map(lambda slug: {"program": slug})),
       evidence=evidence_objects)
def test_property_an_opt_out_is_recorded_whatever_its_evidence(client, make_key, db, target, evidence):
    response = client.post(f"/v1/consents/{PERSON}/opt-out", data=render({**target, "evidence": evidence}).encode(),
                           content_type="application/json",
                           headers={"Authorization": f"Bearer {make_key('subscribe')}"})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    ended = ["alerts", "deals", "orders"] if "all" in target else [target["program"]]
    statuses = {c["program"]: c["status"] for c in response.get_json()["consents"]}
    assert all(statuses[slug] == "opted_out" for slug in ended)


# --- webhooks -----------------------------------------------------------------------------------------

def form_body(fields: dict[str, str]) -> bytes:
    """A form body as a sloppy encoder would write it: a lone surrogate as its CESU-8 bytes."""
    return "&".join(f"{quote(name, safe='', errors='surrogatepass')}={quote(value, safe='', errors='surrogatepass')}"
                    for name, value in fields.items()).encode()


def signed(settings, path: str, query: str, body: bytes) -> str:
    """The signature Twilio would send for this body: over the fields as the app will read them."""
    environ = EnvironBuilder(method="POST", data=body, content_type="application/x-www-form-urlencoded").get_environ()
    params = Request(environ).form.to_dict()
    return RequestValidator(AUTH_TOKEN).compute_signature(settings.public_url(path) + (f"?{query}" if query else ""),
                                                          params)


_sids = mostly(st.integers(0, 2**64).map(lambda n: f"SM{n:032x}"))
inbound_fields = st.fixed_dictionaries(
    {"MessageSid": _sids, "From": mostly(st.just(PERSON), phones), "To": mostly(st.just(SENDER)), "Body": texts},
    optional={"OptOutType": st.one_of(st.sampled_from(["STOP", "START", "HELP"]), odd_text),
              "AccountSid": odd_text, "MessagingServiceSid": odd_text, "NumMedia": odd_text, "Odd\u0000": odd_text},
)
status_fields = st.fixed_dictionaries(
    {"MessageSid": st.one_of(st.just(PROVIDER_SID), _sids),
     "MessageStatus": st.one_of(st.sampled_from(["sent", "delivered", "undelivered", "failed"]), odd_text)},
    optional={"ErrorCode": st.one_of(st.sampled_from(["21610", "30003", "30006", "", "9" * 40]), odd_text),
              "ErrorMessage": odd_text, "SmsSid": odd_text, "Odd\u0000": odd_text},
)


@pytest.mark.parametrize("path", ["/webhooks/twilio/sms", "/webhooks/twilio/status"])
def test_property_odd_webhooks_are_never_a_server_error_and_refusals_change_nothing(
        path, client, db, settings, person):
    fields = inbound_fields if path.endswith("sms") else status_fields
    queries = st.just("") if path.endswith("sms") else st.one_of(
        st.just(""), st.just(f"message_id={person}"),
        odd_text.map(lambda text: "message_id=" + quote(text, errors="surrogatepass")))

    @examples(40)
    @given(body=st.one_of(fields.map(form_body), fields.map(form_body), st.binary(max_size=60)), query=queries)
    def run(body, query):
        before = snapshot(db)
        response = client.post(path + (f"?{query}" if query else ""), data=body,
                               content_type="application/x-www-form-urlencoded",
                               headers={"X-Twilio-Signature": signed(settings, path, query, body)})
        check_answer(response, before, snapshot(db))

    if path.endswith("sms"):  # NULs where the store keeps them
        for fields in ({"MessageSid": "SM" + "1" * 32, "From": PERSON, "To": SENDER, "Body": "STOP",
                        "OptOutType": "STOP\x00"},
                       {"MessageSid": "SM" + "2" * 32, "From": PERSON, "To": SENDER, "Body": "hi",
                        "AccountSid": "AC\x00"}):
            run = example(body=form_body(fields), query="")(run)
    else:
        run = example(body=form_body({"MessageSid": "SM\x00", "MessageStatus": "failed", "ErrorCode": "21610",
                                      "Odd\x00": "x"}), query="")(run)
    run()


@st.composite
def stop_with_nuls(draw) -> str:
    word = draw(st.sampled_from(["STOP", "stop", "Stop please", "UNSUBSCRIBE", "cancel", "STOPALL", "quit"]))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(word)))
        word = word[:at] + "\x00" + word[at:]
    return word


@examples(20)
@given(body=stop_with_nuls())
def test_property_a_stop_with_nuls_in_it_still_stops(client, db, settings, body):
    number = f"+1628555{next(_stop_numbers) % 10_000:04d}"  # a new one, opted in first
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(number))
        consents.apply(session, row, programs.by_slug(session, "alerts"), Input.IMPORT_OPT_IN,
                      consents.Evidence(Source.IMPORT))
        alerts = programs.by_slug(session, "alerts").id
    payload = form_body({"MessageSid": f"SM{next(_stop_sids):032x}", "From": number, "To": SENDER, "Body": body})
    response = client.post("/webhooks/twilio/sms", data=payload, content_type="application/x-www-form-urlencoded",
                           headers={"X-Twilio-Signature": signed(settings, "/webhooks/twilio/sms", "", payload)})
    assert response.status_code == 200
    with db.sessions() as session:
        status = session.scalar(select(Consent.status).join(Consent.number).where(
            Consent.program_id == alerts, PhoneNumber.e164 == number))
    assert status == "opted_out"


_stop_sids, _stop_numbers = itertools.count(1), itertools.count(1)
