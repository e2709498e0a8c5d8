"""Engine and transactions. Domain code takes a Session; only adapters open transactions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import (
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Executable
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets the web and worker processes read while one writes; we issue BEGIN ourselves.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can
            # fail with "database is locked" instead of waiting, which would drop an opt-out.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """One engine per process and the session factory over it."""

    def __init__(self, url: str):
        self.url = url
        self.engine = _make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def statements(self) -> Iterator[Connection]:
        """A connection for work done as a few statements, each complete by itself.

        On PostgreSQL each statement is its own transaction (autocommit): no BEGIN and COMMIT round
        trips, so work that reads once and then writes everything in one statement (`Writes`) costs
        two round trips. Elsewhere (SQLite) the block is one transaction, as `transaction` is.
        """
        if self.dialect == "postgresql":
            with self.engine.connect() as connection:
                yield connection.execution_options(isolation_level="AUTOCOMMIT")
        else:
            with self.engine.begin() as connection:
                yield connection

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed when the block ends, rolled back if it raises."""
        with self.sessions() as session, session.begin():
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def upgrade(self, revision: str = "heads") -> None:
        """Apply Alembic migrations up to revision."""
        from alembic import command

        command.upgrade(alembic_config(self.url), revision)

    def dispose(self) -> None:
        self.engine.dispose()


class Writes:
    """Rows to write together, all or nothing, optionally only if a guard row is still as it was read.

    The guard is a compare-and-set: an UPDATE of one row WHERE its columns still hold what was read.
    On PostgreSQL everything goes out as ONE statement (data-modifying WITH clauses, each gated on the
    guard having matched), which is atomic by itself; elsewhere the statements run in order inside the
    caller's transaction. `execute` says whether anything was written (False: the guard had moved).
    """

    def __init__(self) -> None:
        self.guard: tuple[Table, int, dict, dict] | None = None
        self.inserts: list[tuple[Table, dict]] = []
        self.updates: list[tuple[Table, int, dict]] = []
        self.deletes: list[tuple[Table, int]] = []

    def guarded_by(self, table: Table, row_id: int, expected: dict, values: dict) -> Writes:
        self.guard = (table, row_id, expected, values)
        return self

    def insert(self, table: Table, row: dict) -> Writes:
        self.inserts.append((table, row))
        return self

    def update(self, table: Table, row_id: int, values: dict) -> Writes:
        guard = self.guard
        if guard is not None and guard[0] is table and guard[1] == row_id:
            # One statement may change a row only once: the guard's own row takes the values with it.
            guard[3].update(values)
        else:
            self.updates.append((table, row_id, values))
        return self

    def delete(self, table: Table, row_id: int) -> Writes:
        self.deletes.append((table, row_id))
        return self

    def execute(self, connection: Connection) -> bool:
        if connection.dialect.name == "postgresql":
            statement, params = _one_statement(self)
            return connection.execute(statement, params).scalar_one() > 0
        return _in_order(self, connection)

    def _shape(self) -> tuple:
        guard = self.guard
        return (
            None if guard is None else (guard[0].name, tuple(guard[2]), tuple(guard[3])),
            tuple((table.name, tuple(row)) for table, row in self.inserts),
            tuple((table.name, tuple(values)) for table, _, values in self.updates),
            tuple(table.name for table, _ in self.deletes),
        )


def _in_order(writes: Writes, connection: Connection) -> bool:
    if writes.guard is not None:
        table, row_id, expected, values = writes.guard
        moved = connection.execute(
            update(table).where(table.c.id == row_id, *(table.c[k] == v for k, v in expected.items())).values(values))
        if moved.rowcount != 1:
            return False
    for table, row in writes.inserts:
        connection.execute(table.insert(), row)
    for table, row_id, values in writes.updates:
        connection.execute(update(table).where(table.c.id == row_id).values(values))
    for table, row_id in writes.deletes:
        connection.execute(delete(table).where(table.c.id == row_id))
    return True


_STATEMENTS: dict[tuple, Executable] = {}


def _one_statement(writes: Writes) -> tuple[Executable, dict]:
    """The PostgreSQL statement for this shape of writes (built once per shape) and its parameters."""
    shape = writes._shape()
    statement = _STATEMENTS.get(shape)
    if statement is None:
        statement = _STATEMENTS[shape] = _build(writes)
    params: dict = {}
    if writes.guard is not None:
        _, row_id, expected, values = writes.guard
        params["g_id"] = row_id
        params.update({f"g_old_{key}": value for key, value in expected.items()})
        params.update({f"g_new_{key}": value for key, value in values.items()})
    for index, (_, row) in enumerate(writes.inserts):
        params.update({f"i{index}_{key}": value for key, value in row.items()})
    for index, (_, row_id, values) in enumerate(writes.updates):
        params[f"u{index}_id"] = row_id
        params.update({f"u{index}_{key}": value for key, value in values.items()})
    for index, (_, row_id) in enumerate(writes.deletes):
        params[f"d{index}_id"] = row_id
    return statement, params


def _build(writes: Writes) -> Executable:
    ctes = []
    if writes.guard is None:
        gate = None
        outcome = select(literal(1))
    else:
        table, _, expected, values = writes.guard
        guard = (update(table)
                 .where(table.c.id == bindparam("g_id"),
                        *(table.c[key] == bindparam(f"g_old_{key}") for key in expected))
                 .values({key: bindparam(f"g_new_{key}") for key in values})
                 .returning(table.c.id).cte("guard"))
        gate = exists(select(guard.c.id))
        outcome = select(func.count()).select_from(guard)
    # One INSERT per table, its rows in the order given: they take their ids in that order (the
    # ledger's order of insertion is part of what `ledger.verify` checks). Separate WITH clauses
    # would run in no defined order.
    by_table: dict[tuple, list[tuple[int, Table, dict]]] = {}
    for index, (table, row) in enumerate(writes.inserts):
        by_table.setdefault((table.name, tuple(row)), []).append((index, table, row))
    for number, rows in enumerate(by_table.values()):
        table, columns = rows[0][1], list(rows[0][2])
        # Typed parameters: the psycopg dialect casts each (::JSON, ::TIMESTAMP…), which INSERT … SELECT
        # needs (PostgreSQL would take an unadorned parameter there for text).
        selects = [select(*(bindparam(f"i{index}_{key}", type_=table.c[key].type) for key in columns))
                   for index, _, _ in rows]
        if gate is not None:
            selects = [each.where(gate) for each in selects]
        source = selects[0] if len(selects) == 1 else union_all(*selects)
        ctes.append(insert(table).from_select(columns, source).cte(f"i{number}"))
    for index, (table, _, values) in enumerate(writes.updates):
        changed = update(table).where(table.c.id == bindparam(f"u{index}_id"))
        changed = changed if gate is None else changed.where(gate)
        ctes.append(changed.values({key: bindparam(f"u{index}_{key}") for key in values}).cte(f"u{index}"))
    for index, (table, _) in enumerate(writes.deletes):
        gone = delete(table).where(table.c.id == bindparam(f"d{index}_id"))
        ctes.append((gone if gate is None else gone.where(gate)).cte(f"d{index}"))
    return outcome.add_cte(*ctes) if ctes else outcome


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
