"""Twilio's own opt-out filtering, as the gateway models it: what Twilio does with a text, per mode."""

import pytest

from gateway.domain.twilio_filter import (
    Filtering,
    OptOutHandling,
    Reaction,
    handle,
    is_blocked,
    keyword_of,
    with_block,
)

DEFAULT = Filtering()
NONE = Filtering.of("none")
ADVANCED = Filtering.of("twilio_advanced", opt_out=["ALTO"], opt_in=["DEALS"])


@pytest.mark.parametrize("body, word", [("STOP", "STOP"), ("  stop \n", "STOP"), ("Stop please", None),
                                        ("please stop", None), ("", None), ("STOP.", "STOP.")])
def test_twilio_matches_one_whole_word_in_any_case(body, word):
    assert keyword_of(body) == word


@pytest.mark.parametrize("body", ["STOP", "stopall", "Unsubscribe", "CANCEL", "end", "QUIT", "REVOKE", "OPTOUT"])
def test_default_filtering_blocks_on_every_twilio_opt_out_word(body):
    outcome = handle(DEFAULT, body, blocked=False)
    assert (outcome.reaction, outcome.blocked_after, outcome.replies_carried) == (Reaction.BLOCK, True, False)
    assert outcome.twilio_replied


@pytest.mark.parametrize("body", ["please stop texting me", "STOP PLEASE", "OPT OUT", "STOP."])
def test_what_twilio_does_not_match_does_not_block_there(body):
    outcome = handle(DEFAULT, body, blocked=False)
    assert (outcome.reaction, outcome.blocked_after) == (Reaction.NONE, False)


@pytest.mark.parametrize("body", ["START", "yes", "Unstop"])
def test_an_opt_in_word_lifts_the_block_only_where_there_is_one(body):
    lifted = handle(DEFAULT, body, blocked=True)
    assert (lifted.reaction, lifted.blocked_before, lifted.blocked_after) == (Reaction.UNBLOCK, True, False)
    nothing = handle(DEFAULT, body, blocked=False)
    assert (nothing.reaction, nothing.blocked_after, nothing.twilio_replied) == (Reaction.NONE, False, False)


def test_help_is_answered_by_twilio_and_leaves_the_block_as_it_was():
    while_blocked = handle(DEFAULT, "HELP", blocked=True)
    assert (while_blocked.reaction, while_blocked.blocked_after, while_blocked.replies_carried) == (
        Reaction.HELP, True, False)
    assert handle(DEFAULT, "info", blocked=False).blocked_after is False


def test_other_texts_while_blocked_stay_blocked():
    outcome = handle(DEFAULT, "DEALS", blocked=True)
    assert (outcome.reaction, outcome.blocked_after, outcome.replies_carried) == (Reaction.NONE, True, False)


def test_with_no_filtering_at_twilio_nothing_ever_blocks():
    for body in ("STOP", "START", "HELP", "DEALS"):
        outcome = handle(NONE, body, blocked=False)
        assert (outcome.reaction, outcome.blocked_after, outcome.replies_carried) == (Reaction.NONE, False, True)
    # A block remembered from before the sender's handling changed to none no longer holds.
    assert handle(NONE, "hello", blocked=True).blocked_after is False


def test_advanced_opt_out_acts_on_its_configured_words_and_keeps_stop_start_help():
    assert ADVANCED.handling is OptOutHandling.TWILIO_ADVANCED
    assert handle(ADVANCED, "alto", blocked=False).reaction is Reaction.BLOCK
    assert handle(ADVANCED, "STOP", blocked=False).reaction is Reaction.BLOCK
    assert handle(ADVANCED, "CANCEL", blocked=False).reaction is Reaction.NONE  # removed from the defaults
    assert handle(ADVANCED, "DEALS", blocked=True).reaction is Reaction.UNBLOCK  # a join keyword set as opt-in
    assert handle(ADVANCED, "START", blocked=True).reaction is Reaction.UNBLOCK
    assert handle(ADVANCED, "YES", blocked=True).reaction is Reaction.NONE  # not configured there
    assert handle(ADVANCED, "HELP", blocked=False).reaction is Reaction.HELP


def test_advanced_opt_outs_own_word_on_what_it_did_wins_over_our_copy_of_its_keywords():
    assert handle(ADVANCED, "BASTA", blocked=False, opt_out_type="STOP").blocked_after is True
    assert handle(ADVANCED, "VUELVO", blocked=True, opt_out_type="START").reaction is Reaction.UNBLOCK
    assert handle(ADVANCED, "AYUDA", blocked=True, opt_out_type="HELP").blocked_after is True


def test_an_unknown_handling_is_refused():
    with pytest.raises(ValueError):
        Filtering.of("twilio")


def test_the_block_list_covers_a_number_and_its_messaging_service():
    service = "MG" + "a" * 32
    stored = with_block("", ("+15005550006", service), True)
    assert stored == f"+15005550006 {service}"
    assert is_blocked(stored, (service,)) and is_blocked(stored, ("+15005550006",))
    assert not is_blocked(stored, ("+18885550199",))
    assert with_block(stored, ("+15005550006", service), False) == ""
    assert with_block("+18885550199", ("+15005550006",), True) == "+15005550006 +18885550199"
