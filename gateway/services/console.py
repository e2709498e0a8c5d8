"""The compliance console's use cases: staff accounts, signing in, sessions, and every look at a
person's data, each written to the access log in the same transaction as the read (no log, no view).

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended set); the
session cookie carries a random token of which only a SHA-256 is stored. Sign-in is limited per client
address (the shared limiter, so every web process counts together) and each account is locked for a
while after consecutive failures (in the store, so a restart does not reset it). The limits are
settings (CONSOLE_*: gateway/config.py). A disabled account cannot sign in, and its sessions end at
once: each request reads the account with its session.
See docs/decisions/0021-compliance-console.md.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.orm import Session

from gateway.domain.numbers import Number
from gateway.domain.programs import spec_of
from gateway.services import abuse, consents, review
from gateway.services.ports import Gateway
from gateway.store import consents as store_consents
from gateway.store import console as store
from gateway.store import programs
from gateway.store.models import utcnow

ROLES = ("viewer", "compliance", "admin")  # each role may do all that the ones before it may
# viewer: sees, the replies awaiting review included; compliance: also downloads certificates, proof
# bundles and exports, and resolves replies kept for review; admin: also reads the access log and erases.
REVIEW_ROLE = "compliance"  # resolving a reply changes consent: the role that answers complaints

MIN_PASSWORD_LENGTH = 12
_NAME = re.compile(r"[A-Za-z0-9._@-]{1,120}")

_hasher = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs what a wrong password costs and
# the time taken does not tell which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class ConsoleError(Exception):
    """A request the console refuses, with words for the person; nothing was changed."""

    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


@dataclass(frozen=True)
class Staff:
    """Who is signed in."""

    id: int
    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def generate_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConsoleError("weak_password", f"a password has at least {MIN_PASSWORD_LENGTH} characters")


def create_user(session: Session, name: str, role: str, password: str) -> Staff:
    """Make an account; raise ConsoleError for a bad name, role or password, or a name in use."""
    if not _NAME.fullmatch(name or ""):
        raise ConsoleError("invalid_name", "a user name is 1 to 120 letters, digits or . _ @ -")
    if role not in ROLES:
        raise ConsoleError("invalid_role", f"the role must be one of {', '.join(ROLES)}")
    _check_password(password)
    if store.user_by_name(session, name) is not None:
        raise ConsoleError("name_taken", f"a user named {name!r} exists already")
    user = store.add_user(session, name, role, _hasher.hash(password))
    return Staff(user.id, user.name, user.role)


# Looking after accounts (`smsgate users …`). Each raises ConsoleError for an unknown name, and changes nothing then.

def _user(session: Session, name: str):
    user = store.user_by_name_locked(session, name) if _NAME.fullmatch(name or "") else None
    if user is None:
        raise ConsoleError("unknown_user", f"there is no console user named {name!r}")
    return user


def list_users(session: Session) -> list:
    """Every account, by name (never a password hash)."""
    return store.all_users(session)


def disable_user(session: Session, name: str, now: datetime | None = None) -> int:
    """Stop an account: it cannot sign in, and every session it has ends now. Returns how many ended."""
    user = _user(session, name)
    if user.disabled_at is None:
        user.disabled_at = now or utcnow()
    return store.delete_sessions_of(session, user.id)


def enable_user(session: Session, name: str) -> None:
    """Let a disabled account sign in again (with its password as it was)."""
    _user(session, name).disabled_at = None


def unlock_user(session: Session, name: str) -> bool:
    """End a lockout and forget the failed sign-ins; returns whether the account was locked."""
    user = _user(session, name)
    was_locked = user.locked_until is not None and user.locked_until > utcnow()
    user.failed_logins, user.locked_until = 0, None
    return was_locked


def set_password(session: Session, name: str, password: str) -> int:
    """Give an account a new password (a reset). It also ends a lockout, and every session the account
    has: whoever held the old password is signed out. Returns how many sessions ended."""
    _check_password(password)
    user = _user(session, name)
    user.password_hash = _hasher.hash(password)
    user.failed_logins, user.locked_until = 0, None
    return store.delete_sessions_of(session, user.id)


def _client_counter(gateway: Gateway, client: str | None) -> tuple[str, str, str]:
    key = abuse.pseudonym_key(gateway.settings.suppression_key)
    return ("console-login", "client", abuse.pseudonym(key, "console-login", abuse.client_of(client or "-", 64)))


def sign_in(gateway: Gateway, name: str, password: str, *, client: str | None, now: datetime | None = None) -> Staff:
    """The member of staff whose name and password these are; ConsoleError otherwise (wrong name or
    password alike, a locked account, too many attempts from this address)."""
    now = now or utcnow()
    settings = gateway.settings
    counter = _client_counter(gateway, client)
    verdict = gateway.limiter.hit(settings.console_login_limit_per_client, *counter)
    if not verdict.allowed:
        raise ConsoleError("rate_limited", "Too many sign-in attempts from this address. Try again later.",
                           verdict.retry_after)
    refusal = None
    with gateway.db.transaction() as session:
        user = store.user_by_name_locked(session, name) if _NAME.fullmatch(name or "") else None
        if user is None:
            _matches(_DUMMY_HASH, password)
            refusal = ConsoleError("wrong_credentials", "Wrong name or password.")
        elif user.locked_until is not None and user.locked_until > now:
            left = (user.locked_until - now).total_seconds()
            refusal = ConsoleError("locked", f"This account is locked after {settings.console_max_failed_logins} "
                                             f"failed sign-ins. Try again in {int(left // 60) + 1} minutes.", left)
        elif not _matches(user.password_hash, password):
            # Committed, then refused: the count must survive the refusal.
            user.failed_logins += 1
            if user.failed_logins >= settings.console_max_failed_logins:
                user.failed_logins = 0
                user.locked_until = now + timedelta(seconds=settings.console_lockout_seconds)
            refusal = ConsoleError("wrong_credentials", "Wrong name or password.")
        elif user.disabled_at is not None:
            # Said only to whoever knows the password: a wrong one gets the same answer as any other.
            refusal = ConsoleError("disabled", "This account is disabled. Ask an administrator.")
        else:
            user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
            if _hasher.check_needs_rehash(user.password_hash):
                user.password_hash = _hasher.hash(password)
            staff = Staff(user.id, user.name, user.role)
    if refusal is not None:
        raise refusal
    return staff


def _matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# Sessions. The cookie holds `token`; the store holds sha256(token).

def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Opened:
    """A live session: what it stores (the CSRF token) and who signed in, if anyone."""

    token: str
    data: dict
    staff: Staff | None


def open_session(gateway: Gateway, token: str, now: datetime | None = None) -> Opened | None:
    """The live session of a cookie's token; None when unknown, idle too long or past its lifetime
    (an ended one is deleted)."""
    now = now or utcnow()
    if not token or len(token) > 100:
        return None
    with gateway.db.transaction() as session:
        found = store.session_with_user(session, _digest(token))
        if found is None:
            return None
        row, user = found
        idle = timedelta(seconds=gateway.settings.console_session_idle_seconds)
        if row.expires_at <= now or row.last_seen_at + idle <= now or (user is not None and user.disabled_at):
            store.delete_session(session, row.id)
            return None
        return Opened(token, dict(row.data or {}), None if user is None else Staff(user.id, user.name, user.role))


def start_session(gateway: Gateway, data: dict, staff: Staff | None, now: datetime | None = None) -> str:
    """A new session (at first visit, and again at sign-in so a token seen before it is worthless);
    returns its token. Sessions past their lifetime are cleared on the way."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    with gateway.db.transaction() as session:
        store.delete_sessions_before(session, now)
        lifetime = timedelta(seconds=gateway.settings.console_session_lifetime_seconds)
        store.add_session(session, _digest(token), staff.id if staff else None, data, now, now + lifetime)
    return token


def keep_session(gateway: Gateway, token: str, data: dict | None, now: datetime | None = None) -> None:
    """Mark the session used now (its idle clock restarts), storing `data` when it changed."""
    with gateway.db.transaction() as session:
        store.touch_session(session, _digest(token), data, now or utcnow())


def end_session(gateway: Gateway, token: str) -> None:
    with gateway.db.transaction() as session:
        store.delete_session(session, _digest(token))


# The access log.

def log_access(session: Session, staff: Staff, action: str, *, number_id: int | None = None,
               detail: str | None = None, address: str | None = None) -> None:
    """Record a look at personal data, in the caller's transaction: it commits with the read or not at all."""
    store.log_access(session, user_id=staff.id, user_name=staff.name, action=action, number_id=number_id,
                     detail=(detail or None) and detail[:200], address=address, now=utcnow())


@dataclass(frozen=True)
class Found:
    """What a search found: a number's row id, or that the number was erased and is suppressed."""

    number_id: int | None
    suppressed_since: datetime | None = None


def search(gateway: Gateway, staff: Staff, number: Number, *, address: str | None) -> Found | None:
    """Find a number as parsed; None when nothing is held. An erased number is found by its keyed
    suppression hash, when it had opted out (the gateway keeps nothing else of it); that look is logged."""
    with gateway.db.transaction() as session:
        row = store_consents.find_number(session, number.e164)
        if row is not None:
            return Found(row.id)
        suppressed = store.suppression(session, consents.suppression_digest(gateway.settings.suppression_key,
                                                                            number.e164))
        if suppressed is None:
            return None
        log_access(session, staff, "search_suppressed", detail=number.masked, address=address)
        return Found(None, suppressed.created_at)


# One number's whole record, as the console shows it.

@dataclass(frozen=True)
class Record:
    """Everything held about one number, read in one transaction with the access log entry.

    Rows are detached but complete: `programs` names each program by id, outbound messages carry
    their status history."""

    number: object  # PhoneNumber
    consents: list
    events: list
    outbound: list
    inbound: list
    programs: dict  # id -> Program
    proof: dict | None  # the proof bundle (services/proofs.py), when asked for
    awaiting_review: frozenset[int] = frozenset()  # ids of its review events no later event settled

    @property
    def had_opted_out(self) -> bool:
        """Whether the number ever opted out: what makes an erasure keep its suppression hash."""
        return any(event.status_after == "opted_out" for event in self.events)


def record(gateway: Gateway, staff: Staff, number_id: int, *, action: str, address: str | None,
           detail: str | None = None, with_proof: bool = False) -> Record | None:
    """Read one number's record and log the look (`action`) in the same transaction; None: no such number."""
    from gateway.services import proofs
    from gateway.store import programs

    with gateway.db.snapshot() as session:  # one moment across the reads
        number = store.number_by_id(session, number_id)
        if number is None:
            return None
        log_access(session, staff, action, number_id=number.id, detail=detail, address=address)
        found = Record(
            number=number, consents=consents.consents(session, number), events=consents.events(session, number),
            outbound=store.outbound_of(session, number.id), inbound=store.inbound_of(session, number.id),
            programs={program.id: program for program in programs.all_programs(session)},
            proof=proofs.bundle(session, number, gateway.settings) if with_proof else None,
            awaiting_review=frozenset(review.awaiting(session, number.id)))
        session.commit()  # the log entry: a look that cannot be logged is not shown
        return found


def export(gateway: Gateway, staff: Staff, number_id: int, *, address: str | None) -> dict | None:
    """Everything held about a number as JSON (the same document as `smsgate export`), logged."""
    from gateway.services import privacy

    with gateway.db.transaction() as session:
        number = store.number_by_id(session, number_id)
        if number is None:
            return None
        log_access(session, staff, "export", number_id=number.id, address=address)
        return privacy.export(session, number)


def proof_bundle(gateway: Gateway, staff: Staff, number_id: int, *, address: str | None) -> dict | None:
    """The number's proof bundle (docs/proofs.md), logged."""
    from gateway.services import proofs

    with gateway.db.snapshot() as session:  # one moment across the reads
        number = store.number_by_id(session, number_id)
        if number is None:
            return None
        log_access(session, staff, "proof_bundle", number_id=number.id, address=address)
        bundle = proofs.bundle(session, number, gateway.settings)
        session.commit()
        return bundle


def erase(gateway: Gateway, staff: Staff, number_id: int, *, address: str | None):
    """Erase a number's personal data as `smsgate erase` does, the console user named as the actor;
    None: no such number; ConsoleError when it is erased already."""
    from gateway.domain.consent import Source
    from gateway.services import privacy

    with gateway.db.transaction() as session:
        number = store.number_by_id(session, number_id, lock=True)
        if number is None:
            return None
        if number.e164 is None:
            raise ConsoleError("already_erased", "This number was erased already.")
        log_access(session, staff, "erase", number_id=number.id, address=address)
        evidence = consents.Evidence(Source.SYSTEM, actor=f"console:{staff.name}",
                                     details={"request": "erasure", "via": "console"})
        return privacy.erase(session, number, gateway.settings.suppression_key, evidence)


def access_log(gateway: Gateway, staff: Staff, *, limit: int = 500, address: str | None = None) -> list:
    """The newest entries of the access log, with the numbers they name (reading it is logged too)."""
    with gateway.db.transaction() as session:
        log_access(session, staff, "access_log", address=address)
        return store.access_log(session, limit=limit)


# Replies kept for review (services/review.py).

REVIEW_PAGE = 50  # replies on one page of the console's list


@dataclass(frozen=True)
class ReviewList:
    page: review.Page
    programs: list[tuple[str, str]]  # (slug, name) of every program whose replies are kept for review


def review_list(gateway: Gateway, staff: Staff, *, program: str | None, before: int | None,
                address: str | None) -> ReviewList:
    """The replies awaiting review, newest first; each reply shown is a look at a number's text, so each
    is an entry of the access log (with its number), in the same transaction as the read. An empty page
    shows nothing of anyone and is not logged. ReviewError for an unknown program."""
    with gateway.db.transaction() as session:
        page = review.pending(session, program=program, limit=REVIEW_PAGE, before=before)
        for item in page.items:
            log_access(session, staff, "review_list", number_id=item.number_id, detail=f"review event {item.event_id}",
                       address=address)
        reviewing = [(row.slug, row.name) for row in programs.all_programs(session)
                     if spec_of(row).ambiguous_replies == "review"]
        return ReviewList(page, reviewing)


def resolve_review(gateway: Gateway, staff: Staff, event_id: int, decision: str, *, note: str | None,
                   address: str | None) -> review.Resolved:
    """Resolve a reply as the signed-in member of staff (recorded as console:NAME), logged with the
    decision in the same transaction. ReviewError, and nothing changed or logged, when it is refused."""
    def audit(session: Session, done: review.Resolved) -> None:
        log_access(session, staff, "review_resolve", number_id=done.number_id,
                   detail=f"review event {event_id} as {done.decision.value}", address=address)

    return review.resolve(gateway, event_id, decision, by=staff.name, via="console", note=note, audit=audit)
