"""Programs in the store: stored by slug and read back, and the one per-process cache of them.

Validating a programs file is tests/unit/domain/test_programs.py.
"""

from dataclasses import replace

from sqlalchemy import inspect, text

from gateway.domain.programs import load_file, spec_of
from gateway.store import programs
from gateway.store.programs import own_numbers, store
from tests.unit.domain.test_programs import VALID, write


def test_store_round_trips_the_definition(db, tmp_path):
    (spec,) = load_file(write(tmp_path, VALID))
    with db.transaction() as session:
        (program,) = store(session, [spec])
        assert spec_of(program) == spec
        assert program.version == spec.version and len(program.version) == 64


def test_a_messaging_service_programs_numbers_are_ours(db, tmp_path):
    text = VALID.replace('sender = "+15005550006"', 'messaging_service = "MG' + "a" * 32 + '"\n'
                         'service_numbers = ["+14155550199", "+14155550198"]\nallowed_countries = ["US"]')
    (spec,) = load_file(write(tmp_path, text))
    with db.transaction() as session:
        (program,) = store(session, [spec])
        assert spec_of(program) == spec
        assert {"+14155550199", "+14155550198"} <= own_numbers(session)


# --- the one cache ---------------------------------------------------------------------------------


def rename_elsewhere(db, slug, name):
    """What another process's `smsgate programs load` does, as far as this process can tell: the row changes."""
    with db.transaction() as session:
        session.execute(text("UPDATE programs SET name = :name WHERE slug = :slug"), {"name": name, "slug": slug})


def test_a_program_by_slug_is_read_once_then_kept_until_programs_are_stored(db, example_programs):
    first = programs.cached_by_slug(db, "deals")
    assert (first.slug, first.name, spec_of(first).slug) == ("deals", "Acme Deals", "deals")
    assert inspect(first).detached  # a copy in no session: the send path reads it, never writes it
    rename_elsewhere(db, "deals", "Renamed")
    assert programs.cached_by_slug(db, "deals") is first  # within CACHE_SECONDS another process's change waits
    with db.transaction() as session:
        store(session, example_programs)  # storing programs in this process drops what it keeps at once
    assert programs.cached_by_slug(db, "deals").name == "Acme Deals"
    assert programs.cached_by_slug(db, "deals") is not first


def test_no_program_is_none_on_any_database(db):
    assert programs.cached_by_slug(db, "nope") is None
    assert programs.cached_by_slug(db, "ord\x00ers") is None  # PostgreSQL would refuse the query


def test_programs_on_senders_come_with_their_join_keywords(db, example_programs):
    with db.sessions() as session:
        on_sender = programs.cached_on_senders(session.connection(), ("+15005550006",))
        every = programs.cached_on_senders(session.connection(), programs.EVERY_PROGRAM)
        assert [p.slug for p in on_sender.programs] == [p.slug for p in programs.on_sender(session, "+15005550006")]
        assert on_sender.join_keywords == {"DEALS": "deals", "ALERTS": "alerts"}
        assert [p.slug for p in every.programs] == [p.slug for p in programs.all_programs(session)]
        assert programs.cached_on_senders(session.connection(), ("+15005550006",)) is on_sender
    news = replace(example_programs[0], slug="news", join_keywords=("NEWS",))
    with db.transaction() as session:
        store(session, [news])
    with db.sessions() as session:
        again = programs.cached_on_senders(session.connection(), ("+15005550006",))
    assert again.join_keywords["NEWS"] == "news" and "news" in [p.slug for p in again.programs]
