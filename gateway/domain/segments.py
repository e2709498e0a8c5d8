"""SMS segment counting: which encoding a body needs and how many message parts it takes.

GSM-7 (3GPP TS 23.038 default alphabet) packs 160 septets into one SMS; a concatenated message
gives up 7 septets per part to the user data header, leaving 153. Any character outside the
alphabet forces the whole body to UCS-2: 70 UTF-16 code units in one SMS, 67 per part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_BODY_CHARS", "Segments", "count"]

# Twilio rejects longer bodies (Message resource and TwiML docs: "up to 1600 characters").
MAX_BODY_CHARS = 1600

Encoding = Literal["GSM-7", "UCS-2"]

# The default alphabet in code-point order 0x00-0x7F; 0x1B is the escape to the extension table
# and is not a character of its own, so it is left out.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Reached through the escape, so each costs two septets. \f is the spec's page break.
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

# The same alphabets as patterns: every body sent is checked, and a regular expression walks a
# 160-character body several times faster than a Python loop over its characters.
_GSM7_ONLY = re.compile("[" + re.escape("".join(sorted(_GSM7_BASIC | _GSM7_EXTENSION))) + "]*")
_GSM7_ESCAPED = re.compile("[" + re.escape("".join(sorted(_GSM7_EXTENSION))) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")  # beyond the BMP: a surrogate pair in UTF-16

_LIMITS: dict[Encoding, tuple[int, int]] = {
    # encoding: (units in a single SMS, units per part of a concatenated SMS)
    "GSM-7": (160, 153),
    "UCS-2": (70, 67),
}


@dataclass(frozen=True)
class Segments:
    """How a body travels: its encoding, its length in encoding units, and its part count."""

    encoding: Encoding
    units: int  # GSM-7 septets, or UTF-16 code units for UCS-2
    segments: int


def count(body: str) -> Segments:
    """Encoding, length in units and number of SMS parts needed to send `body`."""
    if _GSM7_ONLY.fullmatch(body):
        encoding: Encoding = "GSM-7"
        doubled = _GSM7_ESCAPED
    else:
        encoding = "UCS-2"
        doubled = _ASTRAL  # most emoji
    units = len(body) + len(doubled.findall(body))
    single, per_part = _LIMITS[encoding]
    # An empty body still occupies one SMS, and counting it as one never under-counts a cap.
    if units <= single:
        return Segments(encoding, units, 1)
    return Segments(encoding, units, _pack([2 if doubled.match(char) else 1 for char in body], per_part))


def _pack(costs: list[int], capacity: int) -> int:
    # Encoders do not split an escape sequence or a surrogate pair across two parts, so a
    # two-unit character that does not fit moves whole to the next part. That can cost one more
    # part than units / capacity suggests.
    parts, used = 1, 0
    for cost in costs:
        if used + cost > capacity:
            parts, used = parts + 1, 0
        used += cost
    return parts
