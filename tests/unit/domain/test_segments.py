"""SMS segment counting: GSM-7 vs UCS-2, extension characters, surrogate pairs, part boundaries."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.segments import MAX_BODY_CHARS, Segments, count

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "\f^{}\\[~]|€"


def test_max_body_chars_matches_twilio():
    assert MAX_BODY_CHARS == 1600


def test_empty_body_is_one_gsm_segment():
    assert count("") == Segments("GSM-7", 0, 1)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Reply STOP to opt out.", Segments("GSM-7", 22, 1)),
        ("a" * 160, Segments("GSM-7", 160, 1)),
        ("a" * 161, Segments("GSM-7", 161, 2)),
        ("a" * 306, Segments("GSM-7", 306, 2)),
        ("a" * 307, Segments("GSM-7", 307, 3)),
        ("a" * 1530, Segments("GSM-7", 1530, 10)),
        ("€" * 80, Segments("GSM-7", 160, 1)),
        ("a" * 159 + "€", Segments("GSM-7", 161, 2)),
        ("Ж" * 70, Segments("UCS-2", 70, 1)),
        ("Ж" * 71, Segments("UCS-2", 71, 2)),
        ("Ж" * 134, Segments("UCS-2", 134, 2)),
        ("Ж" * 135, Segments("UCS-2", 135, 3)),
        ("😀" * 35, Segments("UCS-2", 70, 1)),
        ("😀" * 36, Segments("UCS-2", 72, 2)),
    ],
)
def test_counts(body, expected):
    assert count(body) == expected


def test_whole_alphabet_is_gsm7():
    assert count(GSM_BASIC) == Segments("GSM-7", 127, 1)
    assert count(GSM_EXTENSION) == Segments("GSM-7", 20, 1)


def test_one_character_outside_gsm7_switches_the_whole_body():
    # A curly apostrophe, pasted from a word processor, is the classic cause.
    assert count("It’s here").encoding == "UCS-2"
    assert count("It's here").encoding == "GSM-7"
    # The default alphabet has capital Ç but not small ç.
    assert count("ç").encoding == "UCS-2"
    assert count("ESC\x1b").encoding == "UCS-2"  # the escape code itself is not a character


def test_escape_sequence_is_not_split_across_parts():
    # 152 + 2 + 152 = 306 septets would fill exactly two parts of 153, but the € cannot be cut
    # in half, so it starts part two and the body needs three.
    assert count("a" * 152 + "€" + "a" * 152) == Segments("GSM-7", 306, 3)


def test_surrogate_pair_is_not_split_across_parts():
    assert count("Ж" * 66 + "😀" + "Ж" * 66) == Segments("UCS-2", 134, 3)


gsm_text = st.text(alphabet=GSM_BASIC + GSM_EXTENSION, max_size=MAX_BODY_CHARS)


@given(gsm_text)
def test_gsm7_units_are_characters_plus_escapes(body):
    result = count(body)
    assert result.encoding == "GSM-7"
    assert result.units == len(body) + sum(char in GSM_EXTENSION for char in body)


@given(st.text(max_size=MAX_BODY_CHARS))
def test_segment_bounds(body):
    result = count(body)
    single, per_part = (160, 153) if result.encoding == "GSM-7" else (70, 67)
    if result.encoding == "UCS-2":
        assert result.units == len(body.encode("utf-16-le")) // 2
    if result.units <= single:
        assert result.segments == 1
    else:
        # Every part is full except that a two-unit character may push one unit to the next.
        assert math.ceil(result.units / per_part) <= result.segments <= math.ceil(result.units / (per_part - 1))


@given(gsm_text, st.text(alphabet=GSM_BASIC + GSM_EXTENSION, max_size=50))
def test_appending_never_reduces_segments(body, more):
    assert count(body + more).segments >= count(body).segments
