"""Moving many rows at once: COPY on PostgreSQL, one executemany elsewhere.

The batch API filters up to 100,000 numbers and inserts as many messages in one request; row-at-a-
time statements would spend the request in round trips, and long IN lists hit parameter limits
(65,535 on PostgreSQL). Rows go into a temporary table once and the database joins.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Table, insert, text
from sqlalchemy.orm import Session

from gateway.store import dialect

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
COPY_FROM = 20  # rows


def _postgres(session: Session) -> bool:
    return dialect.is_postgresql(session)


def _copy(session: Session, table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    # The psycopg connection under this session's transaction: COPY joins the same transaction,
    # after what the session holds (as session.execute would flush it first).
    session.flush()
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Sequence[Sequence], *,
                copy_from: int = COPY_FROM) -> None:
    """Insert `rows` (tuples in the order of `columns`) into `table` in the session's transaction.

    Through COPY, values go in as the database takes them (no SQLAlchemy type processing): datetimes
    must be aware, JSON already a string. `copy_from=0`: always COPY on PostgreSQL (the caller gives
    JSON as a string there, as a value elsewhere).
    """
    if not rows:
        return
    # COPY pays a few round trips of its own; for a handful of rows a plain INSERT is quicker.
    if _postgres(session) and len(rows) > copy_from:
        _copy(session, table.name, columns, rows)
    else:
        session.execute(insert(table), [dict(zip(columns, row)) for row in rows])


@contextmanager
def temp_table(session: Session, name: str, columns: dict[str, str], rows: Iterable[Sequence]) -> Iterator[str]:
    """A temporary table `name` (column -> SQL type) holding `rows` for the block, then dropped."""
    if not _NAME.match(name) or not all(_NAME.match(column) for column in columns):
        raise ValueError("temporary table and column names are plain identifiers")
    definition = ", ".join(f"{column} {kind}" for column, kind in columns.items())
    session.execute(text(f"DROP TABLE IF EXISTS {name}"))
    if _postgres(session):
        session.execute(text(f"CREATE TEMPORARY TABLE {name} ({definition}) ON COMMIT DROP"))
        _copy(session, name, list(columns), rows)
        # Autovacuum never sees temporary tables: without statistics the planner guesses their size
        # from their pages and hashes a million-row table to join 100,000 rows (a third slower). Their
        # size and distinct values are all it needs: a tenth of the usual sample finds them as well and
        # takes 20 ms of 100,000 rows, not 80-150 (bench/README.md, batch filtering).
        session.execute(text("SET LOCAL default_statistics_target = 10"))
        session.execute(text(f"ANALYZE {name}"))
        session.execute(text("SET LOCAL default_statistics_target TO DEFAULT"))
    else:
        session.execute(text(f"CREATE TEMPORARY TABLE {name} ({definition})"))
        placeholders = ", ".join(f":{column}" for column in columns)
        values = [dict(zip(columns, row)) for row in rows]
        if values:
            session.execute(text(f"INSERT INTO {name} VALUES ({placeholders})"), values)
    yield name
    # Phone numbers should not linger in a pooled connection's temporary schema. (If the block
    # raised, the rollback takes the table with it: DDL is transactional on both databases.)
    session.execute(text(f"DROP TABLE IF EXISTS {name}"))


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in the block: building 100,000 small objects (facts, decisions)
    otherwise sets it off over and over, though none of them forms a cycle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
