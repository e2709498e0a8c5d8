"""Fixtures of the store's integration tests."""

import dataclasses

import pytest
from sqlalchemy import text

from gateway.store.database import Database


@pytest.fixture
def query_plan(db):
    """The plan the store would run `sql` with (EXPLAIN, or SQLite's EXPLAIN QUERY PLAN), as text."""
    explain = "EXPLAIN " if db.dialect == "postgresql" else "EXPLAIN QUERY PLAN "

    def plan(sql: str, params: dict | None = None) -> str:
        with db.statements() as connection:
            found = connection.execute(text(explain + sql), params or {})
            # PostgreSQL's plan is its one column; SQLite's detail is the last of four.
            return "\n".join(str(row[-1]) for row in found)
    return plan


@pytest.fixture
def own_pools(gateway, settings):
    """A Gateway whose Database has pools of its own: what the test does to their connections (ends
    them, asks the server what they prepared) touches nothing else. Only on a database server: the
    embedded SQLite store has no server-side connections."""
    if gateway.db.dialect != "postgresql":
        pytest.skip("asks a database server about its connections; the embedded SQLite store has none")
    database = Database(settings.database_url)
    yield dataclasses.replace(gateway, db=database)
    database.dispose()
