"""POST /v1/messages/batch: the gate for many recipients in bulk, the counts, the refused list."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, insert, select

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import batches, consents, policy
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import Consent, MessageEvent, OutboundMessage, PhoneNumber, utcnow
from tests.integration.web.test_api_messages import _number_in_quiet_hours, _world_program
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture)

EVIDENCE = consents.Evidence(Source.IMPORT, actor="test")
OPTED_IN = ["+14155550141", "+14155550142", "+14155550143"]


@pytest.fixture(autouse=True)
def queue(captured_queue):
    return captured_queue


@pytest.fixture
def headers(make_key):
    return {"Authorization": f"Bearer {make_key('send')}"}


def given(db, phone, slug, *inputs):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for step in inputs:
            consents.apply(session, row, programs.by_slug(session, slug), step, EVIDENCE,
                          expires_at=utcnow() + timedelta(hours=48) if step is Input.API_REQUEST else None)
        return row.id


def batch(client, headers, recipients, program="alerts", body="Service notice", **extra):
    return client.post("/v1/messages/batch", json={"recipients": recipients, "program": program, "body": body, **extra},
                       headers=headers)


def count(db, model, *where):
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def test_a_mixed_batch_is_counted_by_reason(client, headers, db, gateway, queue):
    for phone in OPTED_IN:
        given(db, phone, "alerts", Input.IMPORT_OPT_IN)
    given(db, "+14155550144", "alerts", Input.IMPORT_OPT_IN, Input.KEYWORD_STOP)
    given(db, "+14155550145", "alerts", Input.API_REQUEST)
    with db.transaction() as session:
        consents.suppress(session, gateway.settings.suppression_key, "+14155550146", "erased")
    recipients = [
        *OPTED_IN,
        "(415) 555-0141",  # the first one again, written another way
        "+14155550144",  # opted out
        "+14155550145",  # pending
        "+14155550146",  # suppressed, not in the store
        "+14155550147",  # never heard of
        "12",  # not a number
        "+442079460000",  # a London landline
        "+447911123456",  # abroad: not a country the program sends to
    ]
    response = batch(client, headers, recipients)
    assert response.status_code == 202
    body = response.json
    assert body["batch_id"].startswith("bat_") and body["program"] == "alerts"
    # One task fans the batch out later: the request itself enqueues no 100,000 sends.
    assert queue.take() == [("messages.send_batch", [body["batch_id"]])]
    assert (body["accepted"], body["by_status"]) == (3, {"queued": 3})
    assert body["refused"] == {"duplicate": 1, "opted_out": 1, "pending_confirmation": 1, "suppressed": 1,
                               "no_consent": 1, "invalid_number": 1, "not_mobile": 1, "country_not_allowed": 1}
    assert sorted((r["to"], r["reason"]) for r in body["refused_recipients"]) == sorted([
        ("(415) 555-0141", "duplicate"), ("+14155550144", "opted_out"), ("+14155550145", "pending_confirmation"),
        ("+14155550146", "suppressed"), ("+14155550147", "no_consent"), ("12", "invalid_number"),
        ("+442079460000", "not_mobile"), ("+447911123456", "country_not_allowed")])
    with db.sessions() as session:
        sent = session.scalars(select(OutboundMessage).where(OutboundMessage.batch_id == body["batch_id"])).all()
        assert sorted(m.number.e164 for m in sent) == OPTED_IN
        assert {(m.status, m.kind, m.sender, m.body, m.segments) for m in sent} == {
            ("queued", "informational", "+15005550006", "Service notice", 1)}
        assert all(m.recheck_at is not None for m in sent)
        assert [e.status for m in sent for e in m.events] == ["queued"] * 3
    # Numbers we will not text are not kept.
    assert count(db, PhoneNumber, PhoneNumber.e164.in_(["+14155550146", "+14155550147", "+447911123456"])) == 0


def test_numbers_are_matched_exactly_whatever_surrounds_them(client, headers, db):
    given(db, OPTED_IN[0], "alerts", Input.IMPORT_OPT_IN)
    body = batch(client, headers, [OPTED_IN[0] + "\n", OPTED_IN[0], " " + OPTED_IN[0], "+1415"]).json
    assert (body["accepted"], body["refused"]) == (1, {"duplicate": 2, "invalid_number": 1})
    assert batch(client, headers, [OPTED_IN[0]], body="a\x00").json["error"]["code"] == "invalid_request"
    # A recipient the store could not even hold is named by the edge check, before anything is sent.
    refused = batch(client, headers, [OPTED_IN[0], "+1415\x00"]).json["error"]
    assert (refused["code"], refused["field"]) == ("invalid_request", "recipients[1]")


def test_a_batch_nobody_may_receive_is_200_with_nothing_stored(client, headers, db):
    response = batch(client, headers, ["+14155550151", "+14155550152"])
    assert response.status_code == 200
    assert (response.json["accepted"], response.json["refused"]) == (0, {"no_consent": 2})
    assert count(db, OutboundMessage) == 0


def test_marketing_batches_defer_in_quiet_hours(client, headers, db, gateway, example_programs):
    _world_program(db, example_programs)
    quiet, open_ = _number_in_quiet_hours(gateway, True), _number_in_quiet_hours(gateway, False)
    for phone in (quiet, open_):
        given(db, phone, "world", Input.IMPORT_OPT_IN)
    body = batch(client, headers, [quiet, open_], program="world").json
    assert (body["accepted"], body["by_status"], body["refused"]) == (2, {"deferred": 1, "queued": 1}, {})
    with db.sessions() as session:
        deferred = session.scalars(select(OutboundMessage).where(OutboundMessage.status == "deferred")).one()
        assert (deferred.number.e164, deferred.reason) == (quiet, "quiet_hours")
        assert deferred.not_before == gateway.quiet_hours.next_allowed(quiet, deferred.created_at)


@pytest.mark.parametrize(("payload", "code"), [
    ({"program": "alerts", "body": "x"}, "invalid_request"),
    ({"recipients": [], "program": "alerts", "body": "x"}, "invalid_request"),
    ({"recipients": "+14155550141", "program": "alerts", "body": "x"}, "invalid_request"),
    ({"recipients": ["+14155550141", 5], "program": "alerts", "body": "x"}, "invalid_request"),
    ({"recipients": ["+14155550141"], "program": "alerts"}, "invalid_request"),
    ({"recipients": ["+14155550141"], "program": "alerts", "body": "x" * 1601}, "invalid_request"),
    ({"recipients": ["+14155550141"], "program": "nope", "body": "x"}, "unknown_program"),
    ({"recipients": ["+14155550141"], "to": "x", "program": "alerts", "body": "x"}, "invalid_request"),
])
def test_bad_batches_change_nothing(client, headers, db, payload, code):
    response = client.post("/v1/messages/batch", json=payload, headers=headers)
    assert (response.status_code, response.json["error"]["code"]) == (422, code)
    assert count(db, OutboundMessage) == 0 and count(db, PhoneNumber) == 0


def test_at_most_100000_recipients(client, headers, db):
    response = batch(client, headers, ["+14155550141"] * 100_001)
    assert (response.status_code, response.json["error"]["code"]) == (422, "too_many_recipients")


def test_a_batch_key_returns_the_first_answer(client, headers, db):
    given(db, OPTED_IN[0], "alerts", Input.IMPORT_OPT_IN)
    first = batch(client, headers, OPTED_IN, idempotency_key="batch-1")
    again = client.post("/v1/messages/batch", json={"recipients": OPTED_IN, "program": "alerts",
                                                    "body": "Service notice"},
                        headers={**headers, "Idempotency-Key": "batch-1"})
    assert (again.status_code, again.json) == (first.status_code, first.json)
    assert count(db, OutboundMessage) == 1
    other = batch(client, headers, OPTED_IN[:1], idempotency_key="batch-1")
    assert other.json["error"]["code"] == "idempotency_key_reused"


def test_the_filter_takes_the_same_queries_for_10_or_1000_recipients(db, gateway):
    """Never one query per recipient: the statement count does not grow with the batch."""
    with db.transaction() as session:
        program = programs.by_slug(session, "alerts")
        numbers = [f"+1415556{i:04d}" for i in range(1000)]
        session.execute(insert(PhoneNumber), [{"e164": n, "kind": "fixed_line_or_mobile", "region": "US"}
                                              for n in numbers])
        ids = session.scalars(select(PhoneNumber.id).where(PhoneNumber.e164.in_(numbers))).all()
        session.execute(insert(Consent), [{"number_id": i, "program_id": program.id, "status": "opted_in",
                                           "updated_at": utcnow()} for i in ids[::2]])

    def statements(recipients):
        seen = []
        with db.transaction() as session:
            # Only this session's connection: the sandbox's courier thread shares the engine.
            event.listen(session.connection(), "before_cursor_execute", lambda *args: seen.append(args[2]))
            result = batches.accept(session, program=programs.by_slug(session, "alerts"), body="hi",
                                    recipients=recipients, now=utcnow(),
                                    gate=policy.gate_of(gateway), default_region="US")
            session.rollback()
        return len(seen), len(result.accepted)

    few, many = statements(numbers[:10]), statements(numbers)
    assert (few[1], many[1]) == (5, 500)
    # (Fewer for many: past a few rows, PostgreSQL takes them by COPY, which is no statement at all.)
    assert many[0] <= few[0] <= 12


def test_dispatch_enqueues_the_ready_ones(db, gateway, client, headers, queue):
    for phone in OPTED_IN:
        given(db, phone, "alerts", Input.IMPORT_OPT_IN)
    batch_id = batch(client, headers, OPTED_IN).json["batch_id"]
    queue.take()
    later = utcnow() + timedelta(seconds=5)
    assert batches.dispatch(gateway, batch_id, now=later) == 3
    with db.sessions() as session:
        ids = session.scalars(select(OutboundMessage.id).where(OutboundMessage.batch_id == batch_id)).all()
    assert sorted(queue.ids()) == sorted(ids)
    with db.sessions() as session:
        rechecks = session.scalars(select(OutboundMessage.recheck_at).where(OutboundMessage.batch_id == batch_id))
        assert set(rechecks) == {later}  # their tasks are on their way from then
    assert count(db, MessageEvent) == 3
