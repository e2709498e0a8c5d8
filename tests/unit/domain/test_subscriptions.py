"""What a request to join and a YES do to the consents a number holds, without a database."""

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest

from gateway.domain.consent import IllegalTransition, Input, State, Status
from gateway.domain.subscriptions import plan_confirm, plan_start

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
NEVER, PENDING, OPTED_IN = State(), State(Status.PENDING), State(Status.OPTED_IN)
OPTED_OUT, EXPIRED = State(Status.OPTED_OUT, restorable=True), State(Status.EXPIRED)


class Held(NamedTuple):
    program_id: int
    status: str
    expires_at: datetime | None = None


@pytest.mark.parametrize("input", [Input.API_REQUEST, Input.WEB_REQUEST, Input.KEYWORD_JOIN])
@pytest.mark.parametrize("double_opt_in", [True, False])
def test_a_request_for_a_number_opted_in_already_changes_nothing(input, double_opt_in):
    assert plan_start(OPTED_IN, input, double_opt_in=double_opt_in) is None


@pytest.mark.parametrize("current", [NEVER, PENDING, EXPIRED])
@pytest.mark.parametrize("input", [Input.API_REQUEST, Input.WEB_REQUEST])
def test_a_request_made_off_the_handset_always_asks_for_yes(current, input):
    assert plan_start(current, input, double_opt_in=False) is input
    assert plan_start(current, input, double_opt_in=True) is input


@pytest.mark.parametrize("current", [NEVER, PENDING, EXPIRED, OPTED_OUT])
def test_a_join_keyword_asks_for_yes_or_joins_at_once_as_the_program_says(current):
    assert plan_start(current, Input.KEYWORD_JOIN, double_opt_in=True) is Input.KEYWORD_JOIN
    assert plan_start(current, Input.KEYWORD_JOIN, double_opt_in=False) is Input.KEYWORD_JOIN_DIRECT


@pytest.mark.parametrize("input", [Input.API_REQUEST, Input.WEB_REQUEST])
def test_a_business_cannot_ask_someone_who_opted_out(input):
    with pytest.raises(IllegalTransition):
        plan_start(OPTED_OUT, input, double_opt_in=True)


@pytest.mark.parametrize("input", [Input.CONFIRM_YES, Input.KEYWORD_STOP, Input.IMPORT_OPT_IN])
def test_only_requests_start_a_subscription(input):
    with pytest.raises(ValueError):
        plan_start(NEVER, input, double_opt_in=True)


def test_yes_confirms_every_live_pending_request_in_the_order_held():
    held = [Held(3, "pending", NOW + timedelta(hours=1)), Held(1, "opted_in"),
            Held(2, "pending", NOW + timedelta(seconds=1))]
    assert plan_confirm(held, NOW) == [3, 2]


def test_yes_confirms_no_request_at_or_past_its_deadline():
    held = [Held(1, "pending", NOW), Held(2, "pending", NOW - timedelta(minutes=1)), Held(3, "pending", None)]
    assert plan_confirm(held, NOW) == []


def test_yes_confirms_nothing_but_pending_requests():
    held = [Held(1, "opted_out", NOW + timedelta(hours=1)), Held(2, "expired", NOW + timedelta(hours=1))]
    assert plan_confirm(held, NOW) == []
