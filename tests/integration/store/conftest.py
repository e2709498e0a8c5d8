"""Fixtures of the store's integration tests."""

import dataclasses

import pytest

from gateway.store.database import Database


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
