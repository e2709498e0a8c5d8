"""The pure rules of the review list: which later events settle a reply kept for review, what a
resolution records, and the words of a refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.domain.consent import OPT_OUT_INPUTS, OWN_OPT_INS, Input
from gateway.domain.review import (
    SETTLING_INPUTS,
    Resolution,
    reference,
    resolution_evidence,
    why_settled,
)

T0 = datetime(2026, 3, 1, 14, 5, tzinfo=UTC)


@dataclass
class E:
    id: int
    seq: int
    type: str
    input: str
    occurred_at: datetime = T0
    actor: str | None = None
    reference: str | None = None
    evidence: dict = field(default_factory=dict)


def test_what_settles_a_reply_without_staff():
    # Any end of the consent (nothing left to revoke) and the person's own opt-in by text (their newer word).
    assert {Input(value) for value in SETTLING_INPUTS} == OPT_OUT_INPUTS | OWN_OPT_INS
    for settles in ("keyword_stop", "wrong_number", "review_opt_out", "carrier_deactivation", "api_opt_out",
                    "keyword_start", "confirm_yes", "keyword_join", "keyword_join_direct"):
        assert settles in SETTLING_INPUTS, settles
    # A business's new request or an import of consent does not: a "no" said before them matters more after.
    for waits in ("api_request", "web_request", "import_opt_in", "doi_expired", "review", "help", "erase"):
        assert waits not in SETTLING_INPUTS, waits  # an erasure settles by its event type, for every program


def test_a_resolution_records_the_review_event_the_text_and_the_decision():
    reviewed = E(41, 3, "review", "review", evidence={"body": "No thanks", "class": "ambiguous", "language": "en",
                                                     "to": "+15005550006", "keyword": "no thanks"})
    assert reference(41) == "review:41"
    assert resolution_evidence(reviewed, Resolution.OPT_OUT, via="console", note="asked to be left alone") == {
        "review_event": 41, "review_seq": 3, "decision": "opt-out", "via": "console", "body": "No thanks",
        "language": "en", "to": "+15005550006", "note": "asked to be left alone"}
    # No note, no key; and the class stays with the reply's own event (the timeline's "read as").
    assert resolution_evidence(reviewed, Resolution.NOT_REVOCATION, via="cli", note=None) == {
        "review_event": 41, "review_seq": 3, "decision": "not-revocation", "via": "cli", "body": "No thanks",
        "language": "en", "to": "+15005550006"}
    assert [each.value for each in Resolution] == ["opt-out", "not-revocation"]  # what --as takes


def test_a_refusal_says_what_settled_the_reply():
    opted_out = E(50, 4, "opt_out", "review_opt_out", actor="console:ada", reference="review:41")
    assert why_settled(41, opted_out) == \
        "review event 41 was resolved already, as an opt-out, by console:ada on 2026-03-01 14:05 UTC"
    kept = E(50, 4, "review_not_revocation", "review_not_revocation", actor="cli:bo", reference="review:41")
    assert why_settled(41, kept).startswith("review event 41 was resolved already, as not a revocation, by cli:bo")
    # An opt-out through review of another reply of the same program ended the consent: settled, not resolved.
    assert why_settled(40, opted_out) == \
        "review event 40 is settled: the consent ended (review_opt_out) on 2026-03-01 14:05 UTC, event 50 (seq 4)"
    assert "the person opted in again (keyword_start)" in why_settled(41, E(51, 5, "opt_in", "keyword_start"))
    assert "the number was erased" in why_settled(41, E(52, 6, "erasure", "erasure"))
    assert "the consent ended (keyword_stop)" in why_settled(41, E(53, 7, "opt_out", "keyword_stop"))
