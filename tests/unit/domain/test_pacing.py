"""Paced release: slots at no more than each sender's rate, from the window's opening, in order."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.pacing import JITTER, Waiting, schedule, spacing

OPENING = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)  # 08:00 in New York


def waiting(count: int, sender: str = "+15005550006", opening: datetime = OPENING, prefix: str = "m") -> list[Waiting]:
    return [Waiting(f"{prefix}{i}", sender, opening) for i in range(count)]


def per_second(slots) -> Counter:
    return Counter(int(slot.timestamp()) for _, slot in slots)


def most_in_any_second(times: list[datetime]) -> int:
    """The most slots within any half-open second, wherever it starts (not only on whole seconds)."""
    times = sorted(times)
    most, first = 0, 0
    for last, time in enumerate(times):
        while time - times[first] >= timedelta(seconds=1):
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_senders_backlog_goes_at_its_rate_from_the_opening_in_order():
    slots = schedule(waiting(100), {"+15005550006": 10}, OPENING)
    assert [message_id for message_id, _ in slots] == [f"m{i}" for i in range(100)]
    assert slots[0][1] == OPENING
    assert slots[-1][1] - slots[0][1] == 99 * timedelta(seconds=0.1)
    assert max(per_second(slots).values()) == 10
    assert len(per_second(slots)) == 10  # 100 messages at 10 a second: ten seconds, not one


def test_n_messages_at_m_per_second_take_at_least_n_over_m_seconds():
    for count, mps in ((7, 1), (30, 3), (1000, 7), (250, 250)):
        slots = schedule(waiting(count, sender="s"), {"s": mps}, OPENING)
        span = slots[-1][1] - slots[0][1] + spacing(mps)  # the last slot's own turn
        assert span >= timedelta(seconds=count / mps)
        assert most_in_any_second([slot for _, slot in slots]) <= mps


def test_a_rate_that_does_not_divide_a_second_never_fits_one_more_into_it():
    # 1/3 s rounded down to the microsecond would put a fourth slot within the first second.
    slots = schedule(waiting(10, sender="s"), {"s": 3}, OPENING)
    assert most_in_any_second([slot for _, slot in slots]) == 3
    assert spacing(3) == timedelta(microseconds=333_334)


def test_senders_are_paced_each_at_its_own_rate_and_jitter():
    due = waiting(50, sender="slow", prefix="a") + waiting(500, sender="fast", prefix="b")
    jitter = {"slow": timedelta(milliseconds=700), "fast": timedelta(milliseconds=1300)}
    slots = schedule(due, {"slow": 1, "fast": 100}, OPENING, jitter=jitter)
    by_sender = {"slow": [s for i, s in slots if i.startswith("a")], "fast": [s for i, s in slots if i.startswith("b")]}
    assert by_sender["slow"][0] == OPENING + jitter["slow"]
    assert by_sender["fast"][0] == OPENING + jitter["fast"]
    assert most_in_any_second(by_sender["slow"]) == 1 and most_in_any_second(by_sender["fast"]) == 100
    assert [s for _, s in slots] == sorted(s for _, s in slots)  # handed over in the order of their slots


def test_a_schedule_still_running_is_carried_on_not_overlaid():
    tail = OPENING + timedelta(seconds=30)
    slots = schedule(waiting(3, sender="s"), {"s": 2}, OPENING + timedelta(seconds=5), tails={"s": tail},
                     jitter={"s": timedelta(seconds=1)})
    assert [slot for _, slot in slots] == [tail + timedelta(seconds=0.5 * n) for n in (1, 2, 3)]


def test_a_schedule_still_running_near_its_opening_is_carried_on_without_a_second_jitter():
    # A pass that died after five slots of a 3-a-second sender that opened a second and a third ago;
    # the next pass draws another jitter (up to 2 s): the opening plus it must not jump the spacing.
    step = spacing(3)
    tail = OPENING + timedelta(milliseconds=17) + 4 * step
    slots = schedule(waiting(7, sender="s"), {"s": 3}, OPENING + timedelta(milliseconds=10), tails={"s": tail},
                     jitter={"s": JITTER})
    assert [slot for _, slot in slots] == [tail + n * step for n in range(1, 8)]


def test_a_schedule_that_has_run_out_starts_afresh_from_now():
    now = OPENING + timedelta(minutes=5)
    slots = schedule(waiting(2, sender="s"), {"s": 1}, now, tails={"s": OPENING})
    assert [slot for _, slot in slots] == [now, now + timedelta(seconds=1)]


def test_no_slot_comes_before_its_window_opens():
    later = OPENING + timedelta(hours=1)  # Chicago opens an hour after New York
    due = waiting(2, sender="s", prefix="ny") + waiting(2, sender="s", opening=later, prefix="chi")
    slots = dict(schedule(due, {"s": 1}, OPENING))
    assert slots == {"ny0": OPENING, "ny1": OPENING + timedelta(seconds=1), "chi0": later,
                     "chi1": later + timedelta(seconds=1)}


@pytest.mark.parametrize("mps", [0, -1, 1.5, True, None])
def test_a_rate_that_is_not_a_whole_positive_number_is_refused(mps):
    with pytest.raises(ValueError, match="whole number"):
        schedule(waiting(1, sender="s"), {"s": mps}, OPENING)


def test_jitter_outside_its_bounds_and_a_sender_without_a_rate_are_refused():
    with pytest.raises(ValueError, match="jitter"):
        schedule(waiting(1, sender="s"), {"s": 1}, OPENING, jitter={"s": JITTER + timedelta(microseconds=1)})
    with pytest.raises(ValueError, match="jitter"):
        schedule(waiting(1, sender="s"), {"s": 1}, OPENING, jitter={"s": -timedelta(seconds=1)})
    with pytest.raises(ValueError, match="no rate"):
        schedule(waiting(1, sender="s"), {}, OPENING)


@given(
    senders=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                            st.tuples(st.integers(1, 60), st.integers(0, 300), st.floats(0, 1)), min_size=1),
    tail_offset=st.integers(-120, 120),
)
def test_property_no_sender_ever_gets_more_than_its_rate_in_any_second(senders, tail_offset):
    due, rates, jitter, tails = [], {}, {}, {}
    for sender, (mps, count, share) in senders.items():
        due += waiting(count, sender=sender, prefix=sender,
                       opening=OPENING + timedelta(seconds=count % 7))
        rates[sender], jitter[sender] = mps, JITTER * share
        tails[sender] = OPENING + timedelta(seconds=tail_offset)
    slots = schedule(due, rates, OPENING, tails=tails, jitter=jitter)
    assert sorted(i for i, _ in slots) == sorted(m.id for m in due)
    for sender, mps in rates.items():
        mine = [slot for message_id, slot in slots if message_id.startswith(sender)]
        assert most_in_any_second(mine) <= mps
        assert all(slot >= OPENING for slot in mine)
