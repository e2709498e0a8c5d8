"""The rules on carrier look-ups: line verdicts, when to ask again, ports against deactivations."""

from datetime import UTC, date, datetime, timedelta

import pytest

from gateway.domain import lookups
from gateway.domain.consent import Input, State, Status, apply

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
TTL = timedelta(days=30)


def answer(type_="mobile", carrier="T-Mobile USA, Inc.", mcc="310", mnc="260", error=None, reassigned=None):
    found = {"valid": True, "line_type_intelligence": {"type": type_, "carrier_name": carrier,
                                                        "mobile_country_code": mcc, "mobile_network_code": mnc,
                                                        "error_code": error}}
    if reassigned is not None:
        found["reassigned_number"] = {"last_verified_date": "2026-01-01", "is_number_reassigned": reassigned,
                                      "error_code": None}
    return found


@pytest.mark.parametrize(("type_", "verdict"), [
    ("mobile", "ok"), ("landline", "landline"), ("fixedVoip", "ok"), ("nonFixedVoip", "flagged_non_fixed_voip"),
    ("tollFree", "ok"), (None, "ok"),
])
def test_landlines_are_refused_and_non_fixed_voip_flagged(type_, verdict):
    assert lookups.line_of(answer(type_)).verdict.value == verdict


def test_an_answer_without_line_type_is_no_line():
    assert lookups.line_of({"valid": True, "line_type_intelligence": None}) is None
    assert lookups.line_of(None) is None


def test_the_carrier_is_compared_by_network_codes_else_by_name():
    assert lookups.line_of(answer()).carrier_key == "310-260"
    assert lookups.line_of(answer(mcc=None, mnc=None, carrier=" Sandbox Mobile ")).carrier_key == "sandbox mobile"


@pytest.mark.parametrize(("value", "expected"), [("yes", "yes"), ("no", "no"), ("no_data", "no_data"),
                                                 (None, None), ("maybe", None)])
def test_reassigned_answers(value, expected):
    found = {"reassigned_number": {"is_number_reassigned": value, "error_code": None}}
    assert (lookups.reassigned_of(found) or None) == (expected and lookups.Reassigned(expected))


def test_a_line_type_is_asked_again_only_after_its_ttl():
    assert lookups.line_check_due(None, NOW, TTL)
    assert not lookups.line_check_due(NOW - timedelta(days=29), NOW, TTL)
    assert lookups.line_check_due(NOW - timedelta(days=30), NOW, TTL)


def test_a_reassigned_no_covers_later_consents_while_fresh():
    asked = date(2026, 1, 10)
    fresh = NOW - timedelta(days=1)
    assert not lookups.reassigned_check_due(date(2026, 2, 1), asked, fresh, NOW, TTL)  # consent after: covered
    assert not lookups.reassigned_check_due(asked, asked, fresh, NOW, TTL)
    assert lookups.reassigned_check_due(date(2025, 12, 1), asked, fresh, NOW, TTL)  # consent before: ask
    assert lookups.reassigned_check_due(date(2026, 2, 1), asked, NOW - TTL, NOW, TTL)  # stale
    assert lookups.reassigned_check_due(date(2026, 2, 1), None, None, NOW, TTL)  # never asked
    assert not lookups.reassigned_check_due(None, None, None, NOW, TTL)  # no consent date: nothing to ask


def test_a_port_is_believed_only_on_another_carrier_than_the_one_on_record():
    verdict = lookups.deactivation_verdict
    moved = lookups.line_of(answer(mcc="311", mnc="480", carrier="Verizon"))
    assert verdict(moved, "310-260").verdict is lookups.Deactivation.PORTED
    assert verdict(moved, "311-480").verdict is lookups.Deactivation.DEACTIVATED  # same carrier
    assert verdict(moved, None).verdict is lookups.Deactivation.DEACTIVATED  # no record to compare
    assert verdict(None, "310-260").verdict is lookups.Deactivation.DEACTIVATED  # no look-up
    gone = lookups.line_of(answer(type_=None, carrier=None, mcc=None, mnc=None, error=60600))
    assert verdict(gone, "310-260").verdict is lookups.Deactivation.DEACTIVATED
    assert "60600" in verdict(gone, "310-260").why
    assert verdict(lookups.line_of(answer("landline", mcc=None, mnc=None)), "310-260").verdict \
        is lookups.Deactivation.DEACTIVATED


@pytest.mark.parametrize(("line", "e164"), [
    ("+14155550114", "+14155550114"), ("14155550114", "+14155550114"), ("4155550114\r", "+14155550114"),
    ("", None), ("# header", None), ("+447700900123", None), ("415555011", None),
])
def test_lines_of_the_deactivations_file(line, e164):
    assert lookups.listed_number(line) == e164


@pytest.mark.parametrize("input_", [Input.CARRIER_DEACTIVATION, Input.REASSIGNED_NUMBER])
def test_what_a_deactivation_or_reassignment_ends_start_cannot_restore(input_):
    after = apply(State(Status.OPTED_IN), input_)
    assert after == State(Status.OPTED_OUT, restorable=False)
    assert apply(State(Status.PENDING), input_).status is Status.OPTED_OUT
