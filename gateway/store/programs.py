"""Programs in the store: stored by slug from their definitions, read back, and ONE per-process cache.

What a program may define, and its texts, is gateway/domain/programs.py. Programs change when someone
runs `smsgate programs load`, not between two requests: each process keeps the rows it read for a few
seconds (`cached_by_slug` for the send API, `cached_on_senders` for inbound texts), sparing every
request a query and the JSON of the definitions. `store` drops them all in its own process at once
(`generation`); other processes' copies expire within CACHE_SECONDS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, make_transient_to_detached

from gateway.domain.programs import ProgramSpec, spec_of
from gateway.domain.twilio_filter import Filtering
from gateway.store.database import Database, Store
from gateway.store.models import Program

# Counts store() calls in this process: the cache below drops what it holds when it changes.
generation = 0


def store(session: Session, specs: list[ProgramSpec]) -> list[Program]:
    """Insert or update programs by slug. Programs missing from the file are kept (the ledger cites them)."""
    global generation
    generation += 1
    rows = []
    for spec in specs:
        program = session.scalars(select(Program).where(Program.slug == spec.slug)).one_or_none()
        if program is None:
            program = Program(slug=spec.slug)
            session.add(program)
        program.name = spec.name
        program.sender = spec.sender
        program.messaging_service_sid = spec.messaging_service
        program.category = spec.category
        program.frequency = spec.frequency
        program.help_text = spec.help
        program.terms_url = spec.terms_url
        program.privacy_url = spec.privacy_url
        program.join_keywords = list(spec.join_keywords)
        program.double_opt_in = spec.double_opt_in
        program.settings = {"spec": asdict(spec)}
        program.version = spec.version
        rows.append(program)
    session.flush()
    return rows


def by_slug(session: Session, slug: str) -> Program | None:
    if "\x00" in slug:  # no slug has one, and PostgreSQL would refuse the query rather than find nothing
        return None
    return session.scalars(select(Program).where(Program.slug == slug)).one_or_none()


def on_sender(session: Session, sender: str) -> list[Program]:
    """Every program that sends from `sender` (a number or a Messaging Service)."""
    return list(
        session.scalars(
            select(Program)
            .where((Program.sender == sender) | (Program.messaging_service_sid == sender))
            .order_by(Program.id)
        )
    )


def all_programs(session: Session) -> list[Program]:
    return list(session.scalars(select(Program).order_by(Program.id)))


def own_numbers(session: Session) -> set[str]:
    """Every number we send from, as the programs know them: each program's sender and the numbers
    listed for its Messaging Service."""
    numbers: set[str] = set()
    for program in all_programs(session):
        if program.sender:
            numbers.add(program.sender)
        numbers.update(program.settings.get("spec", {}).get("service_numbers", ()))
    return numbers


# --- the one cache of program rows -----------------------------------------------------------------

CACHE_SECONDS = 5.0
_CACHE_LIMIT = 1000  # keys come from requests (slugs, senders): bound it
EVERY_PROGRAM = ("*",)  # for cached_on_senders: every program (STOPALL ends them all)
_PROGRAMS = Program.__table__
T = TypeVar("T")
_cache: dict[tuple, tuple[float, int, object]] = {}  # key -> (expires, generation, value)


def _cached(key: tuple, load: Callable[[], T]) -> T:
    clock = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[0] > clock and hit[1] == generation:
        return hit[2]
    loaded_at = generation  # before the read: a store() during it leaves the value stale, not current
    value = load()
    if len(_cache) >= _CACHE_LIMIT:
        _cache.clear()
    _cache[key] = (clock + CACHE_SECONDS, loaded_at, value)
    return value


def _detached(row) -> Program:
    """A Program from a plain row, in no session: read, never written, and what merge(load=False) accepts."""
    program = Program(**row._mapping)
    make_transient_to_detached(program)
    return program


def cached_by_slug(database: Database, slug: str) -> Program | None:
    """The program (a detached copy), read in a connection of its own: a program is configuration, not
    part of the caller's transaction (and on SQLite a second connection could not begin while it writes)."""
    def load() -> Program | None:
        if "\x00" in slug:  # see by_slug
            return None
        with database.statements() as connection:
            row = connection.execute(select(_PROGRAMS).where(_PROGRAMS.c.slug == slug)).one_or_none()
        return None if row is None else _detached(row)

    return _cached(("slug", slug), load)


@dataclass(frozen=True)
class OnSenders:
    """The programs on some senders, and their join keywords."""

    programs: list[Program]  # detached copies: merge them into a session before use there
    join_keywords: dict[str, str]  # keyword -> program slug
    # sender (our number or Messaging Service) -> Twilio's opt-out filtering there, as its programs declare
    filtering: dict[str, Filtering] = field(default_factory=dict)


def cached_on_senders(store: Store, senders: tuple[str, ...]) -> OnSenders:
    """Programs on our numbers or Messaging Services (`on_sender` for several), or every program for
    EVERY_PROGRAM, by id."""
    def load() -> OnSenders:
        query = select(_PROGRAMS).order_by(_PROGRAMS.c.id)
        if senders != EVERY_PROGRAM:
            query = query.where(or_(_PROGRAMS.c.sender.in_(senders), _PROGRAMS.c.messaging_service_sid.in_(senders)))
        copies = [_detached(row) for row in store.execute(query)]
        return OnSenders(copies, {keyword: p.slug for p in copies for keyword in p.join_keywords},
                         {p.sender_key: spec_of(p).filtering for p in reversed(copies)})

    return _cached(("senders", senders), load)
