"""The compliance console, /console: staff sign in, find a number in any form, read its whole consent
record, and (by role) download its certificate, proof bundle and export, or erase it; and read the
replies kept for review and (by role) resolve them.

Thin: the use cases and the access log are gateway/services/console.py, the words and the PDF
gateway/services/certificates.py. Sessions are server-side (ConsoleSessionInterface below): the cookie
holds a random token, path /console, HttpOnly, SameSite=Strict, Secure when the public URL is https.
Every POST carries flask-wtf's CSRF token, kept in that server-side session.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import wraps
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, g, redirect, render_template, request, session, url_for
from flask.sessions import SessionInterface, SessionMixin
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from werkzeug.datastructures import CallbackDict
from wtforms import PasswordField, StringField

from gateway.domain import certificates as words
from gateway.domain import decisions
from gateway.domain.numbers import InvalidNumber, parse
from gateway.services import certificates, console, review
from gateway.store.models import utcnow
from gateway.web.auth import declare
from gateway.web.context import current

bp = Blueprint("console", __name__, url_prefix="/console")
COOKIE = "smsgate_console"
PREFIX = "/console"


# Server-side sessions.

class ConsoleSession(CallbackDict, SessionMixin):
    """The session of one browser on /console: `data` lives in the store, the cookie only names it."""

    def __init__(self, opened: console.Opened | None):
        def changed(_):
            self.modified = True

        super().__init__(dict(opened.data) if opened else {}, changed)
        self.token = opened.token if opened else None
        self.staff = opened.staff if opened else None
        self.modified = False
        self.sign_in_as: console.Staff | None = None
        self.ended = False


class ConsoleSessionInterface(SessionInterface):
    """Loads the session row named by the cookie; writes it back, starts one, or ends it."""

    def open_session(self, app, request):
        token = request.cookies.get(COOKIE)
        return ConsoleSession(console.open_session(current(), token) if token else None)

    def save_session(self, app, session: ConsoleSession, response):
        gateway = current()
        secure = gateway.settings.public_base_url.startswith("https://")
        if session.ended:
            if session.token:
                console.end_session(gateway, session.token)
            response.delete_cookie(COOKIE, path=PREFIX, secure=secure, httponly=True, samesite="Strict")
            return
        if session.sign_in_as is not None:
            # A new token at sign-in: one planted or seen before it is worth nothing after.
            if session.token:
                console.end_session(gateway, session.token)
            token = console.start_session(gateway, dict(session), session.sign_in_as)
        elif session.token is None:
            if not session.modified:
                return  # nothing to keep (a redirect to the sign-in page)
            token = console.start_session(gateway, dict(session), None)
        else:
            console.keep_session(gateway, session.token, dict(session) if session.modified else None)
            return
        response.set_cookie(COOKIE, token, path=PREFIX, secure=secure, httponly=True, samesite="Strict")


def is_console_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


# Auth: declared on every route, like the rest of the app (gateway/web/auth.py).

def staff(role: str):
    """Require a signed-in member of staff with at least `role`; others get the sign-in page or 403."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            who = getattr(session, "staff", None)
            if who is None:
                if request.method == "GET":
                    return redirect(url_for("console.login", next=request.full_path.rstrip("?")), 303)
                return _page("console/error.html", 401, title="Please sign in",
                             message="Your session ended. Sign in again; nothing was changed.")
            g.staff = who
            if not who.may(role):
                return _page("console/error.html", 403, title="Not allowed",
                             message=f"Your role ({who.role}) cannot do this; it needs the {role} role. "
                                     "Nothing was changed.")
            return view(*args, **kwargs)

        return declare(wrapper, f"console:{role}")

    return decorate


def signed_out(view):
    """Pages for someone not signed in yet (the sign-in form)."""
    return declare(view, "public")


@bp.context_processor
def _csrf_in_templates():
    return {"csrf_token": generate_csrf}


@bp.after_request
def _no_caching(response: Response) -> Response:
    # Personal data: no copy in a shared or back-button cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def _page(template: str, status: int = 200, **context):
    return render_template(template, staff_member=getattr(session, "staff", None), **context), status


def _csrf_refused():
    return _page("console/error.html", 400, title="Form expired",
                 message="This form expired or did not come from the console. Go back, reload the page and "
                         "try again. Nothing was changed.")


def _csrf_valid() -> bool:
    try:
        validate_csrf(request.form.get("csrf_token"))
        return True
    except (CSRFError, Exception):  # flask-wtf raises wtforms' ValidationError for a missing or bad token
        return False


def _zone() -> str:
    zone = request.args.get("tz") or "UTC"
    if zone not in certificates.ZONES:
        raise _Refused(400, "Unknown time zone", f"{zone!r} is not one of the time zones offered.")
    return zone


class _Refused(Exception):
    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


@bp.errorhandler(_Refused)
def _refused(error: _Refused):
    return _page("console/error.html", error.status, title=error.title, message=error.message)


# Signing in and out.

class LoginForm(FlaskForm):
    name = StringField()
    password = PasswordField()


def _next_page() -> str:
    target = request.args.get("next") or ""
    # Only a path inside the console: never an open redirect.
    return target if target.startswith(PREFIX) and not target.startswith("//") else url_for("console.home")


@bp.get("/login")
@signed_out
def login():
    return _page("console/login.html", form=LoginForm(formdata=None))


@bp.post("/login")
@signed_out
def login_submit():
    form = LoginForm()
    form.validate()
    if "csrf_token" in form.errors:
        return _page("console/login.html", 400, form=form,
                     error="This page expired or was not sent from the console. Please sign in again.")
    try:
        who = console.sign_in(current(), form.name.data or "", form.password.data or "", client=request.remote_addr)
    except console.ConsoleError as refusal:
        status = {"rate_limited": 429, "locked": 429}.get(refusal.code, 401)
        headers = {"Retry-After": str(int(refusal.retry_after) + 1)} if refusal.retry_after else {}
        page, _ = _page("console/login.html", status, form=form, error=refusal.message)
        return page, status, headers
    session.clear()
    session.sign_in_as = who
    return redirect(_next_page(), 303)


@bp.post("/logout")
@staff("viewer")
def logout():
    if not _csrf_valid():
        return _csrf_refused()
    session.ended = True
    return redirect(url_for("console.login"), 303)


# Finding a number and reading its record.

@bp.get("")
@staff("viewer")
def home():
    return _page("console/search.html", zones=certificates.ZONES, zone="UTC")


@bp.post("/search")
@staff("viewer")
def search():
    # A POST, so the number never stands in a URL (browser history, a proxy's log, a Referer).
    form = request.form
    zone, raw = form.get("tz") or "UTC", form.get("number", "")
    if zone not in certificates.ZONES:
        zone = "UTC"
    if not _csrf_valid():
        return _csrf_refused()
    try:
        number = parse(raw, current().settings.default_region)
    except InvalidNumber as invalid:
        return _page("console/search.html", 422, zones=certificates.ZONES, zone=zone, raw=raw,
                     error=f"That is not a phone number we can look up: {invalid}.")
    found = console.search(current(), g.staff, number, address=request.remote_addr)
    if found is None:
        return _page("console/search.html", 404, zones=certificates.ZONES, zone=zone, raw=raw,
                     error="Nothing is held about that number: it never opted in or out here, or it was erased "
                           "without ever opting out.")
    if found.number_id is None:
        return _page("console/suppressed.html", zones=certificates.ZONES, zone=zone, number=number.e164,
                     since=certificates.local_time(found.suppressed_since, zone))
    return redirect(url_for("console.number", number_id=found.number_id, tz=zone), 303)


def _as_of(zone: str) -> datetime | None:
    raw = (request.args.get("as_of") or "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _Refused(400, "Unreadable date", f"{raw!r} is not a date and time (for example 2026-03-01T14:30)."
                       ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.astimezone(UTC)


@bp.get("/numbers/<int:number_id>")
@staff("viewer")
def number(number_id: int):
    zone = _zone()
    as_of = _as_of(zone)
    record = console.record(current(), g.staff, number_id, action="view" if as_of is None else "view_as_of",
                            detail=None if as_of is None else f"as of {as_of.isoformat()}",
                            address=request.remote_addr)
    if record is None:
        raise _Refused(404, "No such number", "The console holds no number with that id.")
    then = None
    if as_of is not None:
        then = sorted(words.consent_as_of(record.events, as_of).values(), key=lambda each: each.program_id)
    when = lambda moment: certificates.local_time(moment, zone)
    return _page("console/number.html", record=record, zone=zone, zones=certificates.ZONES, when=when,
                 as_of=as_of, as_of_raw=request.args.get("as_of", ""), then=then, status_words=words.STATUS_WORDS,
                 json=lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True),
                 why=lambda step: decisions.explain(decisions.load(step.decision), when) if step.decision else [])


def _certificate(number_id: int, action: str) -> certificates.Certificate:
    zone, program = _zone(), request.args.get("program") or None
    record = console.record(current(), g.staff, number_id, action=action, detail=program, address=request.remote_addr,
                            with_proof=True)
    if record is None:
        raise _Refused(404, "No such number", "The console holds no number with that id.")
    if program is not None and program not in {each.slug for each in record.programs.values()}:
        raise _Refused(404, "No such program", f"There is no program {program!r}.")
    return certificates.build(record, zone=zone, program_slug=program, made_by=g.staff.name, now=utcnow())


@bp.get("/numbers/<int:number_id>/certificate")
@staff("compliance")
def certificate(number_id: int):
    made = _certificate(number_id, "certificate")
    return _page("console/certificate.html", certificate=made, proof_lines=certificates.proof_lines(made),
                 program=request.args.get("program") or None)


@bp.get("/numbers/<int:number_id>/certificate.pdf")
@staff("compliance")
def certificate_pdf(number_id: int):
    made = _certificate(number_id, "certificate_pdf")
    return Response(certificates.pdf(made), mimetype="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="{certificates.file_stem(made)}.pdf"'})


def _json_download(document: dict, name: str) -> Response:
    return Response(json.dumps(document, indent=2, ensure_ascii=False) + "\n", mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/numbers/<int:number_id>/proof.json")
@staff("compliance")
def proof(number_id: int):
    bundle = console.proof_bundle(current(), g.staff, number_id, address=request.remote_addr)
    if bundle is None:
        raise _Refused(404, "No such number", "The console holds no number with that id.")
    return _json_download(bundle, f"proof-{number_id}.json")


@bp.get("/numbers/<int:number_id>/export.json")
@staff("compliance")
def export(number_id: int):
    document = console.export(current(), g.staff, number_id, address=request.remote_addr)
    if document is None:
        raise _Refused(404, "No such number", "The console holds no number with that id.")
    return _json_download(document, f"export-{number_id}.json")


@bp.post("/numbers/<int:number_id>/erase")
@staff("admin")
def erase(number_id: int):
    if not _csrf_valid():
        return _csrf_refused()
    if request.form.get("confirm") != "yes":
        return _page("console/error.html", 422, title="Not confirmed",
                     message="Tick the box to confirm the erasure. Nothing was changed.")
    try:
        erased = console.erase(current(), g.staff, number_id, address=request.remote_addr)
    except console.ConsoleError as refusal:
        raise _Refused(409, "Already erased", refusal.message) from None
    if erased is None:
        raise _Refused(404, "No such number", "The console holds no number with that id.")
    return redirect(url_for("console.number", number_id=number_id, tz=request.args.get("tz") or "UTC"), 303)


@bp.get("/access-log")
@staff("admin")
def access_log():
    zone = _zone()
    entries = console.access_log(current(), g.staff, address=request.remote_addr)
    return _page("console/access_log.html", entries=entries, zone=zone, zones=certificates.ZONES,
                 when=lambda moment: certificates.local_time(moment, zone))


# Replies kept for review ("no thanks" on a program with ambiguous_replies = "review": services/review.py).

# A refusal's HTTP status by ReviewError code; its words say what to do, and that nothing was changed.
_REVIEW_REFUSALS = {"unknown_event": (404, "No such reply"), "not_a_review": (404, "No such reply"),
                    "settled": (409, "Already settled"), "unknown_program": (404, "No such program")}


def _review_refused(error: review.ReviewError) -> _Refused:
    status, title = _REVIEW_REFUSALS.get(error.code, (422, "Cannot do that"))
    return _Refused(status, title, f"{error.message[0].upper()}{error.message[1:]}. Nothing was changed.")


def _event_id(raw: str | None, what: str) -> int | None:
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise _Refused(400, "Unreadable page", f"{what} must be an event id (digits), not {raw!r}.")
    return int(raw)


@bp.get("/review")
@staff("viewer")
def review_list():
    zone = _zone()
    program = request.args.get("program") or None
    try:
        found = console.review_list(current(), g.staff, program=program,
                                    before=_event_id(request.args.get("before"), "before"), address=request.remote_addr)
    except review.ReviewError as error:
        raise _review_refused(error) from None
    return _page("console/review.html", found=found, program=program, zone=zone, zones=certificates.ZONES,
                 when=lambda moment: certificates.local_time(moment, zone), status_words=words.STATUS_WORDS,
                 resolved=_event_id(request.args.get("resolved"), "resolved"), decided=request.args.get("as"))


@bp.post("/review/<int:event_id>")
@staff(console.REVIEW_ROLE)
def review_resolve(event_id: int):
    if not _csrf_valid():
        return _csrf_refused()
    try:
        done = console.resolve_review(current(), g.staff, event_id, request.form.get("as", ""),
                                      note=request.form.get("note"), address=request.remote_addr)
    except review.ReviewError as error:
        raise _review_refused(error) from None
    return redirect(url_for("console.review_list", tz=request.args.get("tz") or "UTC", resolved=event_id,
                            **{"as": done.decision.value}), 303)
