"""The one switch between PostgreSQL and SQLite. Code that words its SQL for one of them asks here,
and only code under gateway/store does: above the store, the two databases look the same.
"""

from __future__ import annotations

from sqlalchemy import Table, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

Bind = Engine | Connection | Session


def name(bind: Bind) -> str:
    """"postgresql" or "sqlite"."""
    return (bind.get_bind() if isinstance(bind, Session) else bind).dialect.name


def is_postgresql(bind: Bind) -> bool:
    return name(bind) == "postgresql"


def insert_for(bind: Bind, table: Table | type) -> Insert:
    """An INSERT into `table` (or a mapped class's) in the words of `bind`'s database: it can say ON
    CONFLICT."""
    return (postgresql_insert if is_postgresql(bind) else sqlite_insert)(table)


def give_way_to_locks(session: Session, milliseconds: int) -> None:
    """Make this transaction's waits for a lock end after `milliseconds` (an error, not a deadlock
    with whoever holds it). PostgreSQL only: SQLite has one lock, and its busy timeout already."""
    if is_postgresql(session):
        session.execute(text(f"SET LOCAL lock_timeout = '{int(milliseconds)}ms'"))
