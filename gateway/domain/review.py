"""Replies kept for review: the rules of the list and of resolving one (docs/decisions/0029-review-list.md).

A program with `ambiguous_replies = "review"` keeps its consent when the person answers "no thanks" and
records the reply as a `review` event (services/inbound.py). That event awaits review until a later
event of the same number settles it:

* staff resolve it: as an opt-out (the consent input `review_opt_out`) or as not a revocation (a
  `review_not_revocation` event that changes no state), each naming the review event it resolves;
* the consent of its program ends by any other way (STOP, a carrier opt-out, a wrong number…): there
  is nothing left to revoke;
* the person texts an opt-in for that program (START, YES, a join keyword): their newer word wins;
* the number is erased (for every program).

Anything else leaves it waiting, a second "no" included (each reply is listed for itself), and so does a
business's new request or an import of consent: a "no" said before them matters more after them.

Pure: the SQL of the list is gateway/store/review.py, built from these sets.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from gateway.domain.consent import EVENT_TYPES, OPT_OUT_INPUTS, OWN_OPT_INS, Input

REVIEW_EVENT = "review"  # type and input of an ambiguous reply kept for review
NOT_REVOCATION_EVENT = "review_not_revocation"  # type and input of staff reading one as not a revocation
ERASURE_EVENT = EVENT_TYPES[Input.ERASE]  # an erasure settles every review of the number


class Resolution(StrEnum):
    """How staff read a reply kept for review (the values are what `--as` takes)."""

    OPT_OUT = "opt-out"
    NOT_REVOCATION = "not-revocation"


# Inputs of a later event of the same (number, program) that settle a review without staff.
SETTLING_INPUTS = frozenset(input.value for input in OPT_OUT_INPUTS | OWN_OPT_INS)

MAX_NOTE = 500  # characters of a note staff may add to a resolution
MAX_NAME = 100  # characters of the name a resolution is recorded under


REFERENCE_PREFIX = "review:"


def reference(review_event_id: int) -> str:
    """The `reference` of an event that resolves review event `review_event_id`."""
    return f"{REFERENCE_PREFIX}{review_event_id}"


def resolution_evidence(review, decision: Resolution, *, via: str, note: str | None) -> dict:
    """The evidence of a resolution: the review event it resolves (id, and seq in the number's chain,
    which the timeline and certificates name), the text as the person sent it, and the decision."""
    quoted = review.evidence or {}
    evidence = {"review_event": review.id, "review_seq": review.seq, "decision": decision.value, "via": via}
    evidence.update({key: quoted[key] for key in ("body", "language", "to") if quoted.get(key)})
    if note:
        evidence["note"] = note
    return evidence


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def why_settled(review_event_id: int, later) -> str:
    """Why review event `review_event_id` cannot be resolved now: what the settling event `later` did."""
    if later.reference == reference(review_event_id):
        read = "an opt-out" if later.input == Input.REVIEW_OPT_OUT.value else "not a revocation"
        return (f"review event {review_event_id} was resolved already, as {read}, by {later.actor} on "
                f"{_when(later.occurred_at)}")
    if later.type == ERASURE_EVENT:
        done = "the number was erased"
    elif later.input in {input.value for input in OWN_OPT_INS}:
        done = f"the person opted in again ({later.input})"
    else:
        done = f"the consent ended ({later.input})"
    return (f"review event {review_event_id} is settled: {done} on {_when(later.occurred_at)}, "
            f"event {later.id} (seq {later.seq})")
