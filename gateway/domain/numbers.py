"""Phone numbers: parse any input to E.164, tell its type, mask it for logs."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneMetadata, PhoneNumber, PhoneNumberType, shortnumberinfo
from phonenumbers.phonenumberutil import (
    _MAX_LENGTH_FOR_NSN,
    _MIN_LENGTH_FOR_NSN,
    COUNTRY_CODE_TO_REGION_CODE,
    REGION_CODE_FOR_NON_GEO_ENTITY,
    ValidationResult,
    _extract_country_code,
    _maybe_strip_national_prefix_carrier_code,
    _number_type_helper,
    _set_italian_leading_zeros_for_phone_number,
    _test_number_length,
)
from phonenumbers.re_util import re_compile

_TYPES = {
    PhoneNumberType.MOBILE: "mobile",
    PhoneNumberType.FIXED_LINE: "fixed_line",
    # North American numbers often cannot be told apart; carriers text both.
    PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile",
    PhoneNumberType.VOIP: "voip",
    PhoneNumberType.TOLL_FREE: "toll_free",
    PhoneNumberType.PREMIUM_RATE: "premium_rate",
    PhoneNumberType.SHARED_COST: "shared_cost",
    PhoneNumberType.PERSONAL_NUMBER: "personal",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "uan",
    PhoneNumberType.VOICEMAIL: "voicemail",
}
# Types that can receive an SMS. Fixed lines, pagers and premium numbers cannot.
TEXTABLE = frozenset({"mobile", "fixed_line_or_mobile", "voip", "personal", "toll_free"})

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "invalid_country_code",
    NumberParseException.NOT_A_NUMBER: "not_a_number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too_short",
    NumberParseException.TOO_SHORT_NSN: "too_short",
    NumberParseException.TOO_LONG: "too_long",
}
_MAX_INPUT = 64
# The one E.164 pattern, for text that must already be E.164 (our senders, Twilio's From, a stored row).
# ASCII digits only: `\d` also matches full-width and other scripts' digits, which phonenumbers reads
# as the ASCII ones, so such text is not the number it looks like. Used with fullmatch, never match
# with `$` (which lets a trailing newline through). Anchor it (`^...$`) where a pattern is searched.
E164_PATTERN = r"\+[1-9][0-9]{6,14}"
_E164 = re.compile(E164_PATTERN)


class InvalidNumber(ValueError):
    """Input that is not a usable phone number; `reason` is a stable code, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Number:
    e164: str
    kind: str
    region: str | None

    @property
    def textable(self) -> bool:
        return self.kind in TEXTABLE

    @property
    def masked(self) -> str:
        return mask(self.e164)


def parse(raw: object, default_region: str = "US") -> Number:
    """Parse input in any form phonenumbers understands; raise InvalidNumber with the reason."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidNumber("missing", "a phone number is required")
    text = raw.strip()
    if len(text) > _MAX_INPUT or "\x00" in text:
        raise InvalidNumber("not_a_number", "that is not a phone number")
    parsed = _from_e164(text) if _E164.fullmatch(text) else None
    if parsed is None:
        try:
            parsed = phonenumbers.parse(text, default_region)
        except NumberParseException as error:
            reason = _PARSE_REASONS.get(error.error_type, "not_a_number")
            raise InvalidNumber(reason, f"not a phone number ({reason.replace('_', ' ')})") from None
    if _may_be_short(parsed) and shortnumberinfo.is_valid_short_number(parsed):
        raise InvalidNumber("short_code", "short codes cannot be subscribed")
    region, code = _region_and_type(parsed)
    if code == PhoneNumberType.UNKNOWN:
        possible = phonenumbers.is_possible_number_with_reason(parsed)
        reason = {
            phonenumbers.ValidationResult.TOO_SHORT: "too_short",
            phonenumbers.ValidationResult.TOO_LONG: "too_long",
            phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "invalid_country_code",
        }.get(possible, "invalid")
        raise InvalidNumber(reason, f"not a valid phone number ({reason.replace('_', ' ')})")
    return Number(
        e164=phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164),
        kind=_TYPES.get(code, "unknown"),
        region=region,
    )


# A bulk import parses a million numbers, most of them already E.164, so `parse` does for them what
# phonenumbers.parse, region_code_for_number, is_valid_number and number_type do, in one pass and
# with the steps that leave such text unchanged left out (docs/decisions/0025-bulk-import.md):
# 9 µs a number instead of 22. tests/unit/domain/test_numbers.py holds every step to the public
# functions, over numbers of every country code and shape.
if hasattr(phonenumbers, "enable_pattern_cache"):  # phonenumbers 9: keep its metadata's compiled patterns,
    phonenumbers.enable_pattern_cache()  # which overflow re's own cache (2 µs a number)


def _from_e164(text: str) -> PhoneNumber | None:
    """phonenumbers.parse(text) for text that is "+" and ASCII digits only, as parse itself does it
    after its steps that change nothing in such text (finding the number in the text, an extension,
    normalising digits); None where parse might refuse it, which then decides why."""
    country_code, national = _extract_country_code(text[1:])
    if country_code == 0:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, phonenumbers.region_code_for_country_code(country_code))
    if metadata is not None:
        _, stripped, _ = _maybe_strip_national_prefix_carrier_code(national, metadata)
        if _test_number_length(stripped, metadata) not in _TOO_SHORT_TO_STRIP:
            national = stripped
    if not _MIN_LENGTH_FOR_NSN <= len(national) <= _MAX_LENGTH_FOR_NSN:
        return None
    parsed = PhoneNumber(country_code=country_code)
    _set_italian_leading_zeros_for_phone_number(national, parsed)
    parsed.national_number = int(national)
    return parsed


_TOO_SHORT_TO_STRIP = (ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                       ValidationResult.INVALID_LENGTH)


def _region_and_type(parsed: PhoneNumber) -> tuple[str | None, int]:
    """(region_code_for_number(parsed), number_type(parsed) if is_valid_number(parsed) else UNKNOWN),
    each worked out once: those functions work out the region three times, and finding the region of
    a number whose country code several regions share tells its type on the way."""
    country_code = parsed.country_code
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country_code)
    if regions is None:
        return None, PhoneNumberType.UNKNOWN
    national = phonenumbers.national_significant_number(parsed)
    if len(regions) == 1:
        return regions[0], _type_in_region(national, country_code, regions[0])
    for region in regions:  # as region_code_for_number goes through them
        metadata = PhoneMetadata.metadata_for_region(region.upper(), None)
        if metadata is None:
            continue
        if metadata.leading_digits is not None:
            if re_compile(metadata.leading_digits).match(national):
                return region, _type_in_region(national, country_code, region)
        elif (code := _number_type_helper(national, metadata)) != PhoneNumberType.UNKNOWN:
            return region, code  # what _type_in_region would find again: the same metadata, the same number
    return None, PhoneNumberType.UNKNOWN


def _type_in_region(national: str, country_code: int, region: str) -> int:
    """phonenumbers.number_type if phonenumbers.is_valid_number, else UNKNOWN, for a number whose
    region is known."""
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None or (region != REGION_CODE_FOR_NON_GEO_ENTITY
                            and country_code != phonenumbers.country_code_for_valid_region(region)):
        return PhoneNumberType.UNKNOWN
    return _number_type_helper(national, metadata)


@functools.cache
def _short_lengths(country_code: int) -> frozenset[int] | None:
    """The lengths a short code of the country code can have in any of its regions (None: any)."""
    lengths: set[int] = set()
    for region in phonenumbers.region_codes_for_country_code(country_code):
        metadata = PhoneMetadata.short_metadata_for_region(region)
        if metadata is None or metadata.short_code is None:
            continue
        if not metadata.short_code.possible_length:
            return None
        lengths.update(metadata.short_code.possible_length)
    return frozenset(lengths)


def _may_be_short(parsed: phonenumbers.PhoneNumber) -> bool:
    """False when no region of the number's country code has short codes of its length: then
    is_valid_short_number is False without matching every region's patterns (NANPA has 25)."""
    lengths = _short_lengths(parsed.country_code)
    return lengths is None or len(phonenumbers.national_significant_number(parsed)) in lengths


def is_e164(text: object) -> bool:
    """Whether `text` is already an E.164 number, exactly: anything else goes through `parse`."""
    return isinstance(text, str) and _E164.fullmatch(text) is not None


def mask(e164: str | None) -> str:
    """'+14155552671' → '+1415***2671': enough to correlate log lines, not enough to dial."""
    if not e164:
        return "<none>"
    if len(e164) <= 8:
        return e164[:2] + "***"
    return e164[:5] + "***" + e164[-4:]
