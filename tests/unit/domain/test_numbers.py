"""Number parsing, types and masking."""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import numbers
from gateway.domain.numbers import InvalidNumber, is_e164, mask, parse
from gateway.logs import MaskNumbers


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("(415) 555-2671", "US", "+14155552671"),
        ("415.555.2671", "US", "+14155552671"),
        ("+1 415 555 2671", "US", "+14155552671"),
        ("001 415 555 2671", "FR", "+14155552671"),
        ("020 7183 8750", "GB", "+442071838750"),
        ("+44 20 7183 8750", "US", "+442071838750"),
        ("06 12 34 56 78", "FR", "+33612345678"),
    ],
)
def test_national_and_international_forms_become_e164(raw, region, e164):
    assert parse(raw, region).e164 == e164


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "missing"),
        (None, "missing"),
        ("hello", "not_a_number"),
        ("415", "too_short"),
        ("+1 415 555 2671 1234 5678", "too_long"),
        ("+999 1234567", "invalid_country_code"),
        ("12345", "short_code"),
        ("+1 555 555 5555", "invalid"),
        ("+1415\x005552671", "not_a_number"),
        ("9" * 200, "not_a_number"),
    ],
)
def test_invalid_input_is_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidNumber) as caught:
        parse(raw, "US")
    assert caught.value.reason == reason
    assert str(caught.value)


@pytest.mark.parametrize(
    ("raw", "kind", "textable"),
    [
        ("+33 6 12 34 56 78", "mobile", True),
        ("+44 20 7183 8750", "fixed_line", False),
        ("+1 800 555 0100", "toll_free", True),
        ("+1 415 555 2671", "fixed_line_or_mobile", True),
    ],
)
def test_number_type(raw, kind, textable):
    number = parse(raw)
    assert number.kind == kind
    assert number.textable is textable


def test_mask_keeps_country_area_and_last_four():
    assert mask("+14155552671") == "+1415***2671"
    assert mask("+33612345678") == "+3361***5678"
    assert mask(None) == "<none>"


def test_log_filter_masks_every_number_in_a_record():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "from %s to %s", ("+14155552671", "+33612345678"), None)
    MaskNumbers().filter(record)
    assert record.getMessage() == "from +1415***2671 to +3361***5678"


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_invalid_number(raw):
    try:
        number = parse(raw, "US")
    except InvalidNumber as error:
        assert error.reason
    else:
        assert number.e164.startswith("+")


@pytest.mark.parametrize("text", ["+14155552671", "+4420718387", "+123456789012345"])
def test_e164_text_is_e164(text):
    assert is_e164(text)


@pytest.mark.parametrize("text", [
    "+14155552671\n",  # `$` would let this through
    "+1415555267\uff11",  # a full-width digit: `\d` matches it, phonenumbers reads it as 1
    "+1415555267\u0661",  # an Arabic-Indic digit
    "\uff0b14155552671",  # a full-width plus
    " +14155552671", "14155552671", "+04155552671", "+123456", "+1234567890123456", "", None, 14155552671,
])
def test_anything_else_is_not_e164(text):
    assert not is_e164(text)


@pytest.mark.parametrize("text", ["+14155552671\n", "+1415555267\uff11", "\uff0b14155552671"])
def test_what_is_not_e164_is_parsed_to_the_number_it_means(text):
    assert parse(text).e164 == "+14155552671"


def _parse_as_the_library_says(raw: str, region: str):
    """What `parse` decided before it worked out the region once: phonenumbers' public functions."""
    import phonenumbers
    from phonenumbers import shortnumberinfo

    parsed = phonenumbers.parse(raw, region)
    if shortnumberinfo.is_valid_short_number(parsed):
        return "short_code"
    if not phonenumbers.is_valid_number(parsed):
        return "invalid"
    kind = numbers._TYPES.get(phonenumbers.number_type(parsed), "unknown")
    return (phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), kind,
            phonenumbers.region_code_for_number(parsed))


def _e164_shaped(rng) -> list[str]:
    """Text of E.164's shape for every country code phonenumbers knows: each region's example number
    of every type; the same with the national prefix, a trunk zero or another digit put after the
    country code (which phonenumbers.parse strips or keeps by the region's rules); Italian leading
    zeros; random digits of every length the pattern allows; North American numbers of every area code."""
    import phonenumbers
    from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

    texts = []
    for code, regions in sorted(COUNTRY_CODE_TO_REGION_CODE.items()):
        for region in regions:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            prefixes = {"0", "1", "8", "00", "06", "10", "9"} | {metadata.national_prefix or ""} if metadata else {""}
            for kind in phonenumbers.PhoneNumberType.values():
                example = phonenumbers.example_number_for_type(region, kind) if region != "001" else \
                    phonenumbers.example_number_for_non_geo_entity(code)
                if example is None:
                    continue
                national = phonenumbers.national_significant_number(example)
                texts += [f"+{code}{prefix}{national}" for prefix in prefixes]
                texts += [f"+{code}{national[:-1]}", f"+{code}{national}{rng.randint(0, 9)}"]
        for length in range(4, 15):
            texts += [f"+{code}" + "".join(rng.choice("0123456789") for _ in range(length)) for _ in range(3)]
        texts += [f"+{code}0" + "".join(rng.choice("0123456789") for _ in range(8)), f"+{code}000000"]
    texts += [f"+1{area}{rng.randint(0, 9_999_999):07d}" for area in range(100, 1000) for _ in range(3)]
    unassigned = [code for code in range(1, 1000) if not any(int(str(code)[:size]) in COUNTRY_CODE_TO_REGION_CODE
                                                             for size in (1, 2, 3))]
    texts += [f"+{code}{rng.randint(0, 10 ** 9):09d}" for code in unassigned]
    return [text for text in dict.fromkeys(texts) if numbers.is_e164(text)]


def test_e164_text_is_parsed_as_phonenumbers_parses_it():
    """`parse` builds the number of text already in E.164 itself, without phonenumbers.parse's search
    for a number in the text: the same PhoneNumber (country code, national number, leading zeros)
    wherever phonenumbers.parse takes the text, and nothing where it refuses it (then it says why)."""
    import random

    import phonenumbers

    texts = _e164_shaped(random.Random(18))
    assert len(texts) > 15_000
    for text in texts:
        for region in ("US", "GB", "IT"):
            try:
                expected = phonenumbers.parse(text, region)
            except phonenumbers.NumberParseException:
                expected = None
            assert numbers._from_e164(text) == expected, (text, region)


def test_parse_decides_as_phonenumbers_public_functions_do():
    """`parse` calls a private helper of phonenumbers once instead of its public functions three
    times: held to the public answer over numbers of every country and shape, short codes included."""
    import random

    import phonenumbers

    rng = random.Random(18)
    inputs = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        example = phonenumbers.example_number(region)
        code = phonenumbers.country_code_for_region(region)
        if example is not None:
            inputs.append((phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164), "US"))
            inputs.append((phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL), region))
        for length in (3, 4, 5, 6, 8, 9, 10, 11):
            inputs.append((f"+{code}" + "".join(rng.choice("0123456789") for _ in range(length)), "US"))
        inputs.append(("".join(rng.choice("0123456789") for _ in range(rng.choice((3, 5, 6, 10)))), region))
    inputs += [(f"+1{rng.randint(200, 999)}{rng.randint(0, 9_999_999):07d}", "US") for _ in range(3000)]
    inputs += [("911", "US"), ("112", "GB"), ("40404", "US"), ("+447911123456", "US"), ("+8613800138000", "US")]
    inputs += [(text, "US") for text in _e164_shaped(rng)]
    for raw, region in inputs:
        try:
            expected = _parse_as_the_library_says(raw, region)
        except phonenumbers.NumberParseException:
            continue
        try:
            number = numbers.parse(raw, region)
            got = (number.e164, number.kind, number.region)
        except numbers.InvalidNumber as error:
            got = "short_code" if error.reason == "short_code" else "invalid"
        assert got == expected, (raw, region)


def test_e164_text_is_refused_for_the_reason_phonenumbers_gives():
    """Text of E.164's shape that phonenumbers.parse refuses is refused with its reason, as before
    `parse` built such numbers itself (the import's results file names the reason)."""
    import random

    import phonenumbers

    refused = 0
    for text in _e164_shaped(random.Random(7)):
        try:
            phonenumbers.parse(text, "US")
        except phonenumbers.NumberParseException as error:
            with pytest.raises(InvalidNumber) as caught:
                parse(text, "US")
            assert caught.value.reason == numbers._PARSE_REASONS.get(error.error_type, "not_a_number"), text
            refused += 1
    assert refused > 50
