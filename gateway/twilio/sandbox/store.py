"""How the sandbox reads the store without taking the gateway's write lock."""

from __future__ import annotations

from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker

from gateway.store.database import Database


def read_sessions(db: Database) -> sessionmaker:
    """Sessions for reads only.

    On SQLite the gateway begins every transaction IMMEDIATE, which takes the database's write lock.
    Twilio answers a fetch or a list whatever the caller's own transaction holds (the sweeper asks
    the provider from inside one), so the sandbox reads through an engine of its own whose deferred
    transactions WAL lets run beside a writer. PostgreSQL needs nothing of the kind.
    """
    if db.dialect != "sqlite":
        return db.sessions
    engine = create_engine(db.url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return sessionmaker(engine, expire_on_commit=False)
