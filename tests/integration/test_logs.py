"""Numbers, message bodies and evidence stay out of the logs: every part of a record is masked, and
database errors carry neither bound parameters nor the values PostgreSQL quotes from rows."""

import io
import logging
import time
import urllib.request

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from gateway import logs
from gateway.store import database as db_module
from gateway.store.models import InboundMessage, PhoneNumber
from tests.conftest import gunicorn_serving, wait_for
from tests.integration.web.test_api_messages import consent

MARKER = "zebra-marker-7Q"  # a message body nobody else writes
NUMBER = "+14155550147"  # named, so the source lines a traceback quotes do not hold it


@pytest.fixture
def log_output():
    """What a plain handler (no filter of ours, a formatter that renders tracebacks) prints."""
    logs.install()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


@pytest.mark.parametrize("written", [
    "+14155550147", "%2B14155550147", "(415) 555-0147", "415-555-0147", "415.555.0147", "415 555 0147",
    "4155550147", "14155550147", "1-415-555-0147", "+1 415 555 0147", "+1 (415) 555-0147",
])
def test_numbers_in_any_common_form_are_masked(written):
    masked = logs.mask_text(f"texting {written} now")
    assert "555-0147" not in masked and "5550147" not in masked and "555 0147" not in masked
    assert "***0147" in masked


@pytest.mark.parametrize("line", [
    "2026-12-05 16:24:47,715 INFO worker: took 0.0123 s",
    "at 2026-12-05T16:24:47.715123+00:00",
    "epoch 1733412345 and 1733412345123 ms",
    "listening on 127.0.0.1:5432 and [::1]:6379",
    "message msg_0123456789abcdef0123456789abcdef, SID SM4155550147abcdef4155550147abcdef",
    "request req_1234567890abcdef in 1234567 µs, 9876543210 bytes, id 123456789012",
    "uuid 550e8400-e29b-41d4-a716-446655440000 from 192.168.100.200",
    "version 3.11.415, pid 1234567890, row 4294967296",
])
def test_timestamps_ids_ports_and_durations_are_left_alone(line):
    assert logs.mask_text(line) == line


def test_a_logged_exception_is_masked_in_its_message_traceback_and_stack(log_output):
    logger, stream = log_output
    try:
        raise ValueError("Twilio refused (415) 555-0147 and +14155550148")
    except ValueError:
        logger.exception("sending to %s failed", "415.555.0149", stack_info=True)
    printed = stream.getvalue()
    assert "Traceback" in printed and "ValueError: Twilio refused +1415***0147 and +1415***0148" in printed
    assert "sending to +1415***0149 failed" in printed and "Stack (most recent call last)" in printed
    for digits in ("555-0147", "4155550148", "555.0149"):
        assert digits not in printed


def test_a_record_built_by_make_log_record_is_masked_by_the_filter():
    """Records from another process (makeLogRecord) bypass the record factory; the handler filter
    still masks them."""
    logs.install()
    record = logging.makeLogRecord({"msg": "from %s", "args": ("(415) 555-0147",), "levelno": logging.INFO})
    logs.MaskNumbers().filter(record)
    assert record.getMessage() == "from +1415***0147"


def test_a_database_error_carries_no_parameters_nor_row_values(db, log_output):
    """A unique violation on a number: neither `[parameters: …]` nor PostgreSQL's DETAIL shows it."""
    logger, stream = log_output
    with db.transaction() as session:
        session.execute(insert(PhoneNumber), {"e164": NUMBER})
    with pytest.raises(IntegrityError) as raised:
        with db.transaction() as session:
            session.execute(insert(PhoneNumber), {"e164": NUMBER})
    assert "4155550147" not in str(raised.value)
    assert "SQL parameters hidden" in str(raised.value)
    try:
        raise raised.value
    except IntegrityError:
        logger.exception("could not store a number")
    printed = stream.getvalue()
    assert "IntegrityError" in printed and "4155550147" not in printed and "1415***0147" not in printed


def test_an_operational_error_hides_its_parameters(db, log_output):
    logger, stream = log_output
    with pytest.raises(OperationalError) as raised:
        with db.transaction() as session:
            if db.dialect == "postgresql":
                session.execute(text("SET LOCAL statement_timeout = 1"))
                session.execute(text("SELECT pg_sleep(1), CAST(:e164 AS text)"), {"e164": NUMBER})
            else:
                session.execute(text("SELECT e164 FROM no_such_table WHERE e164 = :e164"), {"e164": NUMBER})
    try:
        raise raised.value
    except OperationalError:
        logger.exception("statement failed")
    printed = stream.getvalue()
    assert "OperationalError" in printed and "SQL parameters hidden" in printed
    assert "4155550147" not in printed and "1415***0147" not in printed


def test_a_message_body_in_a_failing_row_stays_out_of_the_log(db, log_output):
    """PostgreSQL's 'Failing row contains (…)' quotes the whole row, body included."""
    logger, stream = log_output
    with pytest.raises(IntegrityError) as raised:
        with db.transaction() as session:
            session.execute(insert(InboundMessage), {"message_sid": "SM" + "0" * 32, "to_number": "+15005550006",
                                                     "body": f"hello {MARKER}", "intent": None})
    try:
        raise raised.value
    except IntegrityError:
        logger.exception("could not store a text")
    printed = stream.getvalue()
    assert "IntegrityError" in printed and "intent" in printed
    assert MARKER not in printed and MARKER not in str(raised.value)


def test_errors_on_the_driver_path_carry_no_parameters_nor_row_values(db):
    if db.dialect != "postgresql":
        pytest.skip("the driver path is PostgreSQL's; elsewhere statements go through SQLAlchemy")
    with db.transaction() as session:
        session.execute(insert(PhoneNumber), {"e164": NUMBER})
    sql = "INSERT INTO numbers (e164, kind, reachability, ledger_seq, ledger_head, created_at) " \
          "VALUES (%(e164)s, %(body)s, 'ok', 0, '', now())"
    with pytest.raises(DBAPIError) as raised:
        with db.transaction() as session:
            db_module.on_driver(session, sql, {"e164": NUMBER, "body": MARKER}, returns_rows=False)
    shown = str(raised.value) + str(raised.value.orig)
    assert "unique" in shown and "4155550147" not in shown and MARKER not in shown
    assert raised.value.orig.diag.constraint_name  # what went wrong is still there


def test_bodies_and_evidence_on_erroring_requests_stay_out_of_the_log(client, make_key, db, captured_queue, caplog):
    """Values PostgreSQL cannot store (a NUL) fail deep in the store, or are refused at the edge; either
    way the log names the error, never the body, the evidence or the number."""
    consent(db, NUMBER)
    headers = {"Authorization": f"Bearer {make_key('send', 'subscribe')}", "User-Agent": f"crm/{MARKER}"}
    with caplog.at_level(logging.INFO):
        sent = client.post("/v1/messages", headers=headers,
                           json={"to": NUMBER, "program": "orders", "body": f"{MARKER}\x00"})
        asked = client.post("/v1/subscriptions", headers=headers, json={
            "phone": "+14155550148", "program": "deals",
            "evidence": {"ip": "203.0.113.9", "user_agent": f"Mozilla/{MARKER}", "note": "\x00"}})
    assert sent.status_code in (202, 422, 500) and asked.status_code in (202, 422, 500)
    assert MARKER not in caplog.text and "203.0.113.9" not in caplog.text
    assert "4155550147" not in caplog.text and "4155550148" not in caplog.text


def test_gunicorns_error_log_masks_a_failing_request(tmp_path):
    """gunicorn (config/gunicorn.conf.py) logs an exception that escapes the app with the request's
    URI and the traceback: both masked."""
    errors = tmp_path / "error.log"
    with gunicorn_serving(tmp_path, "tests.failing_wsgi:app", "--error-logfile", str(errors)) as port:
        wait_for(lambda: errors.exists() and "Booting worker" in errors.read_text(), timeout=30)
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/consents/4155550147/export?to=%2B14155550148",
                                   timeout=10)
        assert failed.value.code == 500
        wait_for(lambda: "RuntimeError" in errors.read_text(), timeout=10)
        time.sleep(0.2)
        printed = errors.read_text()
    assert "Error handling request" in printed and "Traceback" in printed
    assert "/v1/consents/+1415***0147/export?to=%2B1415***0148" in printed
    assert "RuntimeError: no consent for +1415***0149" in printed
    for digits in ("4155550147", "4155550148", "555-0149"):
        assert digits not in printed
