"""Twilio's message statuses as ours."""

import pytest

from gateway.twilio.statuses import our_status


@pytest.mark.parametrize(("twilio", "ours"), [
    ("accepted", "sent"), ("scheduled", "sent"), ("queued", "sent"), ("sending", "sent"), ("sent", "sent"),
    ("delivered", "delivered"), ("read", "delivered"), ("partially_delivered", "delivered"),
    ("undelivered", "undelivered"), ("failed", "failed"), ("canceled", "failed"), ("DELIVERED", "delivered"),
    ("receiving", None), ("received", None), ("", None),
])
def test_twilio_statuses_map_onto_ours(twilio, ours):
    assert our_status(twilio) == ours
