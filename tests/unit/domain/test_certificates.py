"""The plain words of a certificate and the consent as of a moment, from events alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.domain.certificates import consent_as_of, statements, summaries
from gateway.domain.consent import Status

T0 = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)


@dataclass
class E:
    seq: int
    input: str
    type: str
    source: str
    occurred_at: datetime
    program_id: int | None = 1
    status_after: str | None = None
    expires_at: datetime | None = None
    actor: str | None = None
    reference: str | None = None
    evidence: dict = field(default_factory=dict)


HISTORY = [
    E(1, "web_request", "request", "web", T0, status_after="pending", actor="hosted_form",
      evidence={"disclosure_text": "Get Acme Deals texts. Reply STOP to cancel.", "consent_label": "I agree",
                "ip": "203.0.113.7", "user_agent": "TestPhone", "confirmation_text": "Reply YES to confirm"}),
    E(2, "confirm_yes", "confirmation", "sms", T0 + timedelta(minutes=2), status_after="opted_in",
      evidence={"body": "Yes!"}),
    E(3, "keyword_stop", "opt_out", "sms", T0 + timedelta(days=30), status_after="opted_out",
      evidence={"body": "STOP"}),
    E(4, "keyword_stop", "opt_out", "sms", T0 + timedelta(days=30), program_id=2, status_after="opted_out",
      evidence={"body": "STOP"}),
]


def test_consent_as_of_replays_only_what_had_happened():
    assert consent_as_of(HISTORY, T0 - timedelta(seconds=1)) == {}
    pending = consent_as_of(HISTORY, T0 + timedelta(minutes=1))
    assert pending[1].status is Status.PENDING and [e.seq for e in pending[1].events] == [1]
    agreed = consent_as_of(HISTORY, T0 + timedelta(days=1))
    assert agreed[1].status is Status.OPTED_IN and agreed[1].since == T0 + timedelta(minutes=2)
    assert [e.seq for e in agreed[1].events] == [1, 2]
    stopped = consent_as_of(HISTORY, T0 + timedelta(days=30))
    assert stopped[1].status is Status.OPTED_OUT and stopped[2].status is Status.OPTED_OUT


def test_statements_say_who_did_what_quoting_the_exact_texts():
    said = statements(HISTORY, {1: "Acme Deals", 2: "Acme Alerts"}.get, lambda moment: moment.isoformat())
    assert said[0].text == "Someone using this number on our web form asked to receive texts from Acme Deals: " \
                           "a confirmation text was due."
    assert ("The page showed", "Get Acme Deals texts. Reply STOP to cancel.") in said[0].quotes
    assert ("The box they ticked said", "I agree") in said[0].quotes
    assert ("address", "203.0.113.7") in said[0].origin and ("browser", "TestPhone") in said[0].origin
    assert said[1].text == "The person, texting from this number, replied to confirm: consent to Acme Deals was given."
    assert said[1].quotes == [("Their text read", "Yes!")]
    assert said[2].text.endswith("asked to stop: Acme Deals ended.")
    assert said[2].when == (T0 + timedelta(days=30)).isoformat()


def test_redacted_evidence_is_said_to_be_erased():
    erased = [E(1, "erase", "erasure", "system", T0, actor="console:ada", evidence={"redacted": True})]
    said = statements(erased, lambda _: "Acme Deals", str)
    assert "erased" in said[0].quotes[0][1] and "console:ada" in said[0].text


def test_summaries_give_asked_agreed_and_stopped_per_program():
    summary = summaries(HISTORY)
    assert summary[1].status is Status.OPTED_OUT
    assert (summary[1].asked_at, summary[1].agreed_at, summary[1].stopped_at) == (
        T0, T0 + timedelta(minutes=2), T0 + timedelta(days=30))
    assert summary[2].asked_at is None and summary[2].stopped_at == T0 + timedelta(days=30)


def test_a_reply_kept_for_review_and_its_resolution_are_said_in_words_and_end_like_a_stop():
    by_staff = {"review_event": 41, "review_seq": 3, "decision": "opt-out", "via": "console", "body": "No thanks"}
    reviewed = [
        E(1, "import_opt_in", "import", "import", T0, status_after="opted_in", actor="crm"),
        E(2, "review", "review", "sms", T0 + timedelta(days=1), evidence={"body": "No thanks", "class": "ambiguous"}),
        E(3, "review_not_revocation", "review_not_revocation", "system", T0 + timedelta(days=2), actor="console:ada",
          reference="review:41", evidence={**by_staff, "decision": "not-revocation"}),
        E(4, "review_opt_out", "opt_out", "system", T0 + timedelta(days=3), status_after="opted_out",
          actor="console:ada", reference="review:41", evidence=by_staff),
        E(5, "wrong_number", "opt_out", "sms", T0 + timedelta(days=4), program_id=2, status_after="opted_out"),
    ]
    said = statements(reviewed, {1: "Acme Alerts", 2: "Acme Deals"}.get, str)
    assert said[1].text.endswith("replied in words that may revoke (\"no thanks\"); Acme Alerts kept the consent "
                                 "and listed the reply for staff to review.")
    assert said[2].text == "The gateway (console:ada) read the person's reply on review as not a revocation: " \
                           "Acme Alerts kept the consent."
    assert said[3].text.endswith("read the person's reply on review as a revocation: Acme Alerts ended.")
    assert said[3].quotes == [("Their text read", "No thanks")]
    assert said[4].text.endswith("said this is a wrong number: Acme Deals ended, and START cannot restore it.")
    # Every opt-out input ends consent in the summary, those of review and wrong numbers included.
    summary = summaries(reviewed)
    assert summary[1].stopped_at == T0 + timedelta(days=3) and summary[2].stopped_at == T0 + timedelta(days=4)
