"""Outbound messages: their statuses and the moves between them, and what a provider can tell us.

Pure: no database, no Twilio. The outbox stores what this allows; the services speak of sends and
delivery reports in these types, so only gateway.twilio knows Twilio's own words and codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"  # stored, its task on the way (or lost: the sweeper enqueues it again)
    DEFERRED = "deferred"  # held until `not_before` (quiet hours)
    SENDING = "sending"  # claimed by one worker, which is calling the provider
    BLOCKED = "blocked"  # the gate refused it at the last moment, or the provider said opted out
    SENT = "sent"  # the provider has it
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # the provider tried; the carrier did not deliver it
    FAILED = "failed"  # never left the provider, or we gave up on it


WAITING = frozenset({Status.QUEUED, Status.DEFERRED})
FINAL = frozenset({Status.DELIVERED, Status.UNDELIVERED, Status.FAILED, Status.BLOCKED})

# Forward only: a late "sent" callback must not undo "delivered". The steps back are both from a
# claim that has not reached the provider (or was refused by it): a retry puts the message back in
# the queue, and the worker's gate, asked again at the last moment, may defer it (quiet hours).
# A callback can overtake every step before it (Twilio may report "delivered" before the worker
# stores "sent"), so each status may jump straight to any later one.
MOVES: Mapping[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.DEFERRED, Status.SENDING, Status.SENT} | FINAL),
    Status.DEFERRED: frozenset({Status.QUEUED, Status.SENDING, Status.SENT} | FINAL),
    Status.SENDING: frozenset({Status.QUEUED, Status.DEFERRED, Status.SENT} | FINAL),
    Status.SENT: FINAL,
    **{status: frozenset() for status in FINAL},
}


def may_move(current: str, new: str) -> bool:
    """The one rule for status moves (see MOVES)."""
    return new in MOVES[Status(current)]


def accepted_status(deferred: bool) -> Status:
    """The status a message the gate allowed is stored with."""
    return Status.DEFERRED if deferred else Status.QUEUED


class Reachability(StrEnum):
    """What we know of a number's handset from the provider's answers; the send gate refuses the last two."""

    OK = "ok"
    UNREACHABLE = "unreachable"  # off, out of coverage or out of service: often transient
    LANDLINE = "landline"  # cannot take SMS at all: the stronger fact


def reachability_after(current: str, heard: Reachability) -> Reachability:
    """A number's reachability once we hear `heard` about it.

    A landline stays a landline when a message to it is also reported unreachable, and when it
    texts us (landlines that text do so through a service, not a handset we can reach); any text
    from an unreachable handset proves it reachable again.
    """
    if heard is Reachability.LANDLINE:
        return heard
    if current == Reachability.LANDLINE:
        return Reachability.LANDLINE
    return heard


class ErrorKind(StrEnum):
    """What a provider's refusal or failure means for us."""

    RETRYABLE = "retryable"  # try again later: timeouts, refused connections, 5xx, rate limits
    OPTED_OUT = "opted_out"  # the person opted out at the provider (Twilio's 21610)
    INVALID_NUMBER = "invalid_number"  # the number cannot exist or be reached at all
    UNREACHABLE = "unreachable"  # the handset could not be reached: off, out of service, unknown
    NOT_MOBILE = "not_mobile"  # a landline or other number that cannot take SMS
    PERMANENT = "permanent"  # anything else: this message will not go, the number is not to blame

    @property
    def reachability(self) -> Reachability | None:
        """What this kind of failure teaches about the number, if anything."""
        return _REACHABILITY.get(self)

    @property
    def reason(self) -> str | None:
        """The reason a message that failed so is stored with, when it says something about the recipient."""
        return _REASONS.get(self)


_REACHABILITY = {
    ErrorKind.INVALID_NUMBER: Reachability.UNREACHABLE,
    ErrorKind.UNREACHABLE: Reachability.UNREACHABLE,
    ErrorKind.NOT_MOBILE: Reachability.LANDLINE,
}
# Named as the send gate names its refusals, so a message's reason and the gate's later refusal agree.
_REASONS = {
    ErrorKind.OPTED_OUT: "opted_out",
    ErrorKind.INVALID_NUMBER: "invalid_number",
    ErrorKind.UNREACHABLE: "unreachable",
    ErrorKind.NOT_MOBILE: "landline",
}


class ProviderError(Exception):
    """A send that did not happen, with what it means for us and the provider's code and text."""

    def __init__(self, kind: ErrorKind, code: int | None, message: str):
        super().__init__(f"{kind.value}: {code or '-'} {message}")
        self.kind, self.code, self.message = kind, code, message


@dataclass(frozen=True)
class SentMessage:
    """The provider's view of one message."""

    sid: str
    status: Status
    provider_status: str  # the provider's own word for it, e.g. Twilio's "accepted"
    error_code: int | None = None
    date_created: datetime | None = None
    to: str | None = None
    sender: str | None = None
    body: str | None = None


@dataclass(frozen=True)
class DeliveryReport:
    """What the provider tells us became of a message: a status callback, or a status we fetched."""

    sid: str
    status: Status | None  # None: a status we do not track (e.g. Twilio's "receiving")
    error_code: int | None = None
    error_message: str | None = None
    error_kind: ErrorKind | None = None  # what error_code means, when there is one
    provider_status: str = ""  # the provider's own word, for the metrics
    fields: Mapping[str, str] | None = None  # everything the provider sent: the evidence of an opt-out
    message_id: str | None = None  # ours, from the callback URL we gave the provider
