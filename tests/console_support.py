"""Helpers for the console's tests: accounts, and a number with a whole history (asked on the web
form, confirmed with YES, stopped with STOP) made through the real paths."""

from __future__ import annotations

import re
from datetime import timedelta

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents, console, subscriptions, unit_of_work
from gateway.store.models import utcnow

PERSON = "+14155550147"
SENDER = "+15005550006"
PASSWORD = "correct horse battery staple"
DISCLOSURE_MARK = "Acme Deals"  # the example program's name, in its disclosure text
USER_AGENT = "Mozilla/5.0 (TestPhone) console-test"


def make_user(db, name: str, role: str, password: str = PASSWORD) -> console.Staff:
    with db.transaction() as session:
        return console.create_user(session, name, role, password)


def web_request(gateway, number: str = PERSON, program: str = "deals") -> None:
    """The hosted form's request, as gateway/web/forms.py records it."""
    from gateway.domain.programs import spec_of
    from gateway.store import programs

    settings = gateway.settings
    with gateway.db.transaction() as session:
        spec = spec_of(programs.by_slug(session, program))
    disclosure = subscriptions.disclosure(spec)
    evidence = consents.Evidence(Source.WEB, actor="hosted_form", reference="req_console_test", details={
        "disclosure_text": disclosure.text, "consent_label": disclosure.label,
        "disclosure_version": disclosure.version, "consent_checkbox": "ticked",
        "page_url": settings.public_url(f"/subscribe/{program}"), "ip": "203.0.113.7", "user_agent": USER_AGENT,
        "submitted_at": utcnow().isoformat()})
    with unit_of_work.transaction(gateway) as (session, outgoing):
        _, started = subscriptions.request(
            session, number=parse(number), program_slug=program, input=Input.WEB_REQUEST, evidence=evidence,
            now=utcnow(), ttl=timedelta(hours=settings.pending_ttl_hours), suppression_key=settings.suppression_key,
            rules=gateway.quiet_hours, guard=None)
        if started.confirmation:
            outgoing.send_messages([started.confirmation.id])


def text_in(twilio_post, body: str, sid: str, number: str = PERSON) -> None:
    response = twilio_post("/webhooks/twilio/sms", {"MessageSid": sid, "From": number, "To": SENDER, "Body": body})
    assert response.status_code == 200, response.data


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" (?:type="hidden" )?value="([^"]+)"', html).group(1)
