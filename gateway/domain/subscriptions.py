"""Double opt-in as rules: what a request to join and a YES do to the consents a number holds.

Pure: the callers read what the number holds, ask these, and write the answer as one change
(gateway/services/subscriptions.py for the API and the hosted form, gateway/services/inbound.py for
join keywords and YES).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from gateway.domain.consent import IllegalTransition, Input, State, Status, allowed

REQUEST_INPUTS = (Input.API_REQUEST, Input.WEB_REQUEST, Input.KEYWORD_JOIN)


def plan_start(current: State, input: Input, *, double_opt_in: bool) -> Input | None:
    """The input a request to join applies to a consent in `current`; None: it is opted in already
    (a repeat request changes nothing and texts nobody). Raise IllegalTransition when it cannot apply.

    Requests made anywhere but the handset always ask for the person's YES: only a text from the phone
    proves that its holder asked (CTIA). A join keyword of a single opt-in program confirms at once.
    """
    if input not in REQUEST_INPUTS:
        raise ValueError(f"{input} does not start a subscription")
    if current.status is Status.OPTED_IN:
        return None
    if input is Input.KEYWORD_JOIN and not double_opt_in:
        return Input.KEYWORD_JOIN_DIRECT
    if not allowed(current, input):
        raise IllegalTransition(current.status, input)
    return input


class HeldConsent(Protocol):
    """What `plan_confirm` reads of a consent."""

    program_id: int
    status: str
    expires_at: datetime | None


def plan_confirm(held: Iterable[HeldConsent], now: datetime) -> list[int]:
    """The programs a YES at `now` confirms, in the order held: every request still pending and not
    yet expired (an expired one needs a new request; its YES is plain text)."""
    return [consent.program_id for consent in held
            if consent.status == Status.PENDING and consent.expires_at is not None and consent.expires_at > now]
