"""What a carrier look-up answer means for a number: its line type, whether it was reassigned, and
whether a number on the carriers' Deactivations list was given up or only moved to another carrier.

Pure: the answers come in as the provider gave them (Lookup v2's JSON, as a dict) and the rules
answer in our words. docs/decisions/0027-lookups-and-deactivations.md has the reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

# Lookup v2's line types (line_type_intelligence.type).
LANDLINE = "landline"
NON_FIXED_VOIP = "nonFixedVoip"
UNKNOWN = "unknown"


class LineVerdict(StrEnum):
    OK = "ok"  # send
    REFUSE = "landline"  # cannot take SMS: refused, reason landline
    FLAG = "flagged_non_fixed_voip"  # sent, and flagged: a virtual number anyone can get online


@dataclass(frozen=True)
class Line:
    """The line-type part of a Lookup answer."""

    type: str  # one of Lookup's types, or "unknown" when it gave none
    carrier: str | None
    network: str | None  # "MCC-MNC" when Lookup gave both
    error_code: int | None  # Lookup's own code when it could not tell (60600: unprovisioned or out of coverage)

    @property
    def verdict(self) -> LineVerdict:
        if self.type == LANDLINE:
            return LineVerdict.REFUSE
        if self.type == NON_FIXED_VOIP:
            return LineVerdict.FLAG
        return LineVerdict.OK

    @property
    def in_service(self) -> bool:
        """Lookup places the number on a carrier's network, as a line that can take texts."""
        return self.error_code is None and self.type not in (UNKNOWN, LANDLINE) and bool(self.carrier or self.network)

    @property
    def carrier_key(self) -> str | None:
        """What two answers are compared by to tell whether the number changed carrier."""
        return self.network or (self.carrier.strip().lower() if self.carrier else None)


def line_of(answer: Mapping | None) -> Line | None:
    """The line type Lookup reported, or None when the answer has no line_type_intelligence."""
    part = (answer or {}).get("line_type_intelligence")
    if not isinstance(part, Mapping):
        return None
    mcc, mnc = part.get("mobile_country_code"), part.get("mobile_network_code")
    error = part.get("error_code")
    return Line(type=str(part.get("type") or UNKNOWN), carrier=part.get("carrier_name") or None,
                network=f"{mcc}-{mnc}" if mcc and mnc else None,
                error_code=int(error) if isinstance(error, int | str) and str(error).isdigit() else None)


class Reassigned(StrEnum):
    YES = "yes"
    NO = "no"
    NO_DATA = "no_data"


def reassigned_of(answer: Mapping | None) -> Reassigned | None:
    """Lookup's reassigned-number answer, or None when the answer has none (or an error instead)."""
    part = (answer or {}).get("reassigned_number")
    if not isinstance(part, Mapping):
        return None
    try:
        return Reassigned(str(part.get("is_number_reassigned")))
    except ValueError:
        return None


def line_check_due(checked_at: datetime | None, now: datetime, ttl: timedelta) -> bool:
    """A number's line type is looked up once per `ttl` (lines are ported, and Lookup costs money)."""
    return checked_at is None or checked_at <= now - ttl


def reassigned_check_due(consent_date: date | None, checked_since: date | None, checked_at: datetime | None,
                         now: datetime, ttl: timedelta) -> bool:
    """Whether to ask if the number was reassigned since `consent_date`.

    A "no" for a date answers every later date too (not reassigned since D means not since any day
    after D), so an earlier answer covers a consent given on or after the date it was asked about,
    while it is fresh. Without a consent date there is nothing to ask about.
    """
    if consent_date is None:
        return False
    if checked_at is None or checked_since is None or checked_at <= now - ttl:
        return True
    return consent_date < checked_since


class Deactivation(StrEnum):
    DEACTIVATED = "deactivated"  # the subscriber gave the number up: its consents end
    PORTED = "ported"  # the same subscriber moved it to another carrier: its consents stand


@dataclass(frozen=True)
class DeactivationVerdict:
    verdict: Deactivation
    why: str  # said in the evidence


def deactivation_verdict(line: Line | None, known_carrier: str | None) -> DeactivationVerdict:
    """Whether a number on the Deactivations list was given up or only ported.

    The list also carries numbers ported to another carrier (the losing carrier reports them). A
    Lookup cannot tell a disconnection by itself (a carrier's records may still show the number for
    days), so a port is believed only on positive proof: the number is in service on a carrier other
    than the one an earlier look-up of ours recorded. Anything less ends the consents: a ported
    person re-joins with one text, while a text to a number given up and reassigned is a TCPA claim.
    """
    if line is None:
        return DeactivationVerdict(Deactivation.DEACTIVATED, "no line-type look-up was made")
    if not line.in_service:
        return DeactivationVerdict(Deactivation.DEACTIVATED, "the look-up found the number out of service"
                                   + (f" (error {line.error_code})" if line.error_code else ""))
    if known_carrier is None:
        return DeactivationVerdict(Deactivation.DEACTIVATED,
                                   "no earlier carrier on record to tell a port from a disconnection")
    if line.carrier_key == known_carrier:
        return DeactivationVerdict(Deactivation.DEACTIVATED, "still on the carrier that reported it")
    return DeactivationVerdict(Deactivation.PORTED, "in service on another carrier than the one on record")


def listed_number(line: str) -> str | None:
    """One line of a Deactivations file as E.164, or None for a blank or unreadable line.

    The file lists United States numbers one per line; E.164, 11 digits with the country code and 10
    digits are all read, so a change of Twilio's formatting does not silently drop numbers.
    """
    digits = line.strip().removeprefix("+")
    if not digits.isdigit():
        return None
    if len(digits) == 10:
        digits = "1" + digits
    return f"+{digits}" if len(digits) == 11 and digits.startswith("1") else None
