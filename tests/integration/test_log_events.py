"""Log lines an operator can use: one line per compliance-relevant event, with its name, the id of
what it is about and the number masked; JSON on request; the twilio client's HTTP dump only when
debugging."""

from __future__ import annotations

import io
import json
import logging

import pytest

from gateway import logs
from tests.sandbox_support import opt_in


@pytest.fixture
def captured():
    """What a handler with the gateway's formatter and mask prints."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.MaskNumbers())
    logger = logging.getLogger("test.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def formatted_with(log_format: str):
        handler.setFormatter(logs.formatter(log_format))
        stream.seek(0)
        stream.truncate()
        return logger, stream

    yield formatted_with
    logger.removeHandler(handler)


def test_an_event_is_one_line_with_its_name_ids_and_the_number_masked(captured):
    logger, stream = captured("text")
    logs.event(logger, "send_blocked", message_id="msg_1", number="+14155550147", reason="opted_out")
    line = stream.getvalue().strip()
    assert line.endswith("event=send_blocked message_id=msg_1 number=+1415***0147 reason=opted_out")
    assert "5550147" not in line


def test_json_log_lines_carry_the_event_fields_as_keys(captured):
    logger, stream = captured("json")
    logs.event(logger, "carrier_opt_out", message_id="msg_2", number="+14155550148", sender="+15005550006")
    record = json.loads(stream.getvalue())
    assert record["event"] == "carrier_opt_out"
    assert (record["message_id"], record["number"], record["sender"]) == ("msg_2", "+1415***0148", "+15005550006")
    assert record["level"] == "INFO" and "time" in record and record["logger"] == "test.events"
    assert "+14155550148" not in stream.getvalue()


def test_a_plain_record_is_json_too_and_masked(captured):
    logger, stream = captured("json")
    logger.warning("texted %s", "+14155550149")
    assert json.loads(stream.getvalue())["message"] == "texted +1415***0149"


def test_the_twilio_clients_http_dump_is_shown_only_when_debugging():
    chatty = logging.getLogger("twilio.http_client")
    try:
        logs.configure("INFO")
        assert not chatty.isEnabledFor(logging.INFO)
        logs.configure("DEBUG")
        assert chatty.isEnabledFor(logging.DEBUG)
    finally:
        logs.configure("INFO")


def test_a_stop_logs_an_opt_out_event(twilio_post, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.services.inbound"):
        answer = twilio_post("/webhooks/twilio/sms", {"MessageSid": "SM" + "e" * 32, "From": "+14155550150",
                                                      "To": "+15005550006", "Body": "please stop texting me"})
    assert answer.status_code == 200
    events = [record for record in caplog.records if getattr(record, "event", None) == "opt_out"]
    assert len(events) == 1
    assert (events[0].message_sid, events[0].number, events[0].source) == ("SM" + "e" * 32, "+1415***0150", "sms")
    assert "+14155550150" not in caplog.text


def test_an_api_opt_out_logs_an_opt_out_event(client, make_key, db, caplog):
    opt_in(db, "+14155550151", "deals")
    headers = {"Authorization": f"Bearer {make_key('subscribe')}", "X-Request-Id": "req-ops-1"}
    with caplog.at_level(logging.INFO, logger="gateway.web.api_consents"):
        answer = client.post("/v1/consents/+14155550151/opt-out", headers=headers, json={"program": "deals"})
    assert answer.status_code == 200, answer.get_json()
    [event] = [record for record in caplog.records if getattr(record, "event", None) == "opt_out"]
    assert (event.source, event.number, event.programs) == ("api", "+1415***0151", "deals")
