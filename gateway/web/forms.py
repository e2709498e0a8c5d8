"""The hosted opt-in form: GET/POST /subscribe/<program>.

It shows the program's disclosure, records exactly that text (and its version) with the request's
evidence, and starts double opt-in; the person is subscribed only once they reply YES.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, StringField

from gateway.domain.consent import Input, Source
from gateway.domain.numbers import InvalidNumber, mask, parse
from gateway.domain.programs import spec_of
from gateway.services import abuse, consents, subscriptions, unit_of_work
from gateway.store import programs
from gateway.store.models import utcnow
from gateway.web.auth import public
from gateway.web.context import current

bp = Blueprint("forms", __name__)

_SENT = "subscribe_sent"  # session key: what the "check your phone" page shows after the redirect


class SubscribeForm(FlaskForm):
    # Labels live in the template; validation is done in `submit` so each error gets its own words.
    phone = StringField()
    consent = BooleanField(default=False)
    disclosure_version = HiddenField()


def _program(slug: str):
    with current().db.transaction() as db_session:
        program = programs.by_slug(db_session, slug)
        return (program, spec_of(program)) if program else (None, None)


def _not_found(slug: str):
    return render_template("subscribe/not_found.html", slug=slug), 404


def _render(form: SubscribeForm, spec, disclosure, status: int = 200, error: str | None = None,
            field: str | None = None, headers: dict | None = None):
    page = render_template("subscribe/form.html", form=form, spec=spec, disclosure=disclosure, error=error,
                           field=field, ttl_hours=current().settings.pending_ttl_hours)
    return page, status, headers or {}


@bp.get("/subscribe/<slug>")
@public
def show(slug: str):
    program, spec = _program(slug)
    if program is None:
        return _not_found(slug)
    disclosure = subscriptions.disclosure(spec)
    form = SubscribeForm(formdata=None, disclosure_version=disclosure.version)
    return _render(form, spec, disclosure)


@bp.post("/subscribe/<slug>")
@public
def submit(slug: str):
    program, spec = _program(slug)
    if program is None:
        return _not_found(slug)
    gateway, settings = current(), current().settings
    disclosure = subscriptions.disclosure(spec)
    form = SubscribeForm()
    form.validate()  # checks the CSRF token; the other fields are checked below
    if "csrf_token" in form.errors:
        form.disclosure_version.data = disclosure.version
        return _render(form, spec, disclosure, 400,
                       "This page expired or was not sent from our form. Please check the details and submit again.")
    if form.disclosure_version.data != disclosure.version:
        # The program's wording changed after the page was loaded: the person must see what we record.
        form.disclosure_version.data = disclosure.version
        return _render(form, spec, disclosure, 422,
                       "The terms of this program changed while the page was open. Please read them again.")
    if not form.consent.data:
        return _render(form, spec, disclosure, 422,
                       f"Tick the box to agree to receive texts from {spec.name}.", "consent")
    try:
        number = parse(form.phone.data, settings.default_region)
    except InvalidNumber as invalid:
        return _render(form, spec, disclosure, 422, f"Please enter a mobile phone number: {invalid}.", "phone")

    now = utcnow()
    address = request.remote_addr  # proxy headers count only when TRUSTED_PROXIES says so (ProxyFix)
    evidence = consents.Evidence(Source.WEB, actor="hosted_form", reference=f"req_{uuid.uuid4().hex[:16]}", details={
        "disclosure_text": disclosure.text,
        "consent_label": disclosure.label,
        "disclosure_version": disclosure.version,
        "consent_checkbox": "ticked",
        "page_url": settings.public_url(request.path),
        "ip": address,
        "user_agent": request.user_agent.string,
        "submitted_at": now.isoformat(),
    })
    guard = abuse.Guard.for_request(gateway.limiter, settings, client=address)
    try:
        # Every submission takes the client's and the program's slot before the number is looked at:
        # when 429 starts then depends on who submits, never on the number's state.
        guard.only("client", "program").take(number=None, program=slug)
    except abuse.RateLimited as limited:
        minutes = max(1, math.ceil(limited.retry_after / 60))
        return _render(form, spec, disclosure, 429,
                       f"Too many requests. Please try again in {minutes} minute{'s' if minutes > 1 else ''}.",
                       headers={"Retry-After": str(max(1, math.ceil(limited.retry_after)))})
    try:
        with unit_of_work.transaction(gateway) as (db_session, outgoing):
            _, started = subscriptions.request(
                db_session, number=number, program_slug=slug, input=Input.WEB_REQUEST, evidence=evidence, now=now,
                ttl=timedelta(hours=settings.pending_ttl_hours), suppression_key=settings.suppression_key,
                rules=gateway.quiet_hours, guard=guard.only("number"))
            if started.confirmation:
                outgoing.send_messages([started.confirmation.id])
    except abuse.RateLimited:
        # The number has had its confirmation texts for now. A 429 here would tell a stranger that
        # someone asked for this number before: the same page as every other outcome, and no text.
        pass
    except subscriptions.Refused as refusal:
        # An opted-out or suppressed number gets the same page as any other: the form must not tell a
        # stranger whether a number is subscribed. That page says how to rejoin by text.
        if refusal.code not in ("opted_out", "suppressed", subscriptions.STOP_BINDING):
            return _render(form, spec, disclosure, 422, refusal.message + ".", "phone")
    session[_SENT] = {"number": mask(number.e164), "program": slug}
    return redirect(url_for("forms.sent", slug=slug), 303)


@bp.get("/subscribe/<slug>/sent")
@public
def sent(slug: str):
    """Reply YES to confirm: the page after a request (never "subscribed": nothing is, yet)."""
    program, spec = _program(slug)
    if program is None:
        return _not_found(slug)
    shown = session.get(_SENT)
    if not shown or shown.get("program") != slug:
        return redirect(url_for("forms.show", slug=slug), 303)
    return render_template("subscribe/sent.html", spec=spec, number=shown["number"],
                           ttl_hours=current().settings.pending_ttl_hours)
