"""Engine and transactions. Domain code takes a Session; only adapters open transactions."""

from __future__ import annotations

import json
import re
import select as select_module
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Protocol

import psycopg
from sqlalchemy import (
    JSON,
    Table,
    Text,
    bindparam,
    cast,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import Executable

from gateway.store import dialect

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_SNAPSHOT_ID = re.compile(r"^[0-9A-F]+-[0-9A-F]+(-[0-9]+)?$")


def _make_engine(url: str, isolation_level: str | None = None, *, read_only: bool = False) -> Engine:
    """The engine for `url`. SQLite: `read_only` gives connections that cannot write and whose
    transactions take no lock (Database.reads_beside_writers)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets the web and worker processes read while one writes; we issue BEGIN ourselves.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if read_only:
                cursor.execute("PRAGMA query_only=ON")
            else:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can fail
        # with "database is locked" instead of waiting, which would drop an opt-out. A reader's
        # deferred BEGIN takes no lock and reads one snapshot (WAL) across its statements.
        begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            connection.exec_driver_sql(begin)

        return engine
    # An autocommit connection has no transaction to roll back when it returns to the pool.
    reset = None if isolation_level == "AUTOCOMMIT" else "rollback"
    engine = create_engine(url, pool_size=10, max_overflow=10, isolation_level=isolation_level,
                           pool_reset_on_return=reset, hide_parameters=True)
    event.listen(engine, "checkout", _refuse_ended_connection)
    event.listen(engine, "handle_error", _error_without_row_values)
    return engine


# Errors must not carry what the rows hold into a log line or a traceback: `hide_parameters` keeps
# the bound values (numbers, message bodies, evidence with addresses and user agents) out of every
# engine's exceptions, and these two keep out what PostgreSQL quotes from the rows itself.

def _without_row_values(error: BaseException) -> bool:
    """Cut a PostgreSQL error down to its primary message; True if there was more.

    The server adds a DETAIL or CONTEXT that quotes values ("Key (e164)=(+1…) already exists",
    "Failing row contains (…, the message body, …)"). What went wrong stays: the primary message,
    and the SQLSTATE and constraint name in `error.diag`.
    """
    primary = getattr(getattr(error, "diag", None), "message_primary", None)
    if not primary or not error.args or error.args == (primary,):
        return False
    error.args = (primary,)
    return True


def _error_without_row_values(context):
    """handle_error: the same exception, built again from the shortened driver error."""
    original, built = context.original_exception, context.sqlalchemy_exception
    if built is None or not isinstance(built, DBAPIError) or not _without_row_values(original):
        return None
    return DBAPIError.instance(context.statement, context.parameters, original, context.dialect.loaded_dbapi.Error,
                               hide_parameters=True, connection_invalidated=built.connection_invalidated,
                               dialect=context.dialect, ismulti=built.ismulti)


def _refuse_ended_connection(dbapi_connection, _record, _proxy) -> None:
    """Hand out no connection the server has ended, without a round trip to find out.

    pool_pre_ping would send a query on every checkout: on these machines that round trip cost a
    quarter of a millisecond of CPU, a tenth of a webhook. An idle connection has nothing to read
    unless the server ended it: a shutdown, a restart, pg_terminate_backend or an idle timeout each
    send a FATAL message or close the socket. Then DisconnectionError makes the pool connect again.
    What no check at checkout can see (a host gone without closing the socket) fails the statement;
    SQLAlchemy then invalidates the pool, as it would after a ping.
    """
    if dbapi_connection.closed or _readable(dbapi_connection.pgconn.socket):
        raise DisconnectionError("the server ended this pooled connection")


def _readable(fd: int) -> bool:
    poller = select_module.poll()
    poller.register(fd, select_module.POLLIN)
    return bool(poller.poll(0))


class Database:
    """One engine per process and the session factory over it."""

    def __init__(self, url: str):
        self.url = url
        self.engine = _make_engine(url)
        # statements() on PostgreSQL: a pool of its own whose connections stay in autocommit, rather
        # than switching a pooled connection to autocommit and back on every use.
        self._autocommit = _make_engine(url, "AUTOCOMMIT") if dialect.is_postgresql(self.engine) else None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_reader: sessionmaker | None = None

    @property
    def dialect(self) -> str:
        return dialect.name(self.engine)

    # The three ways to work on the store: `statements` (Core, for the prebuilt SQL of the hot
    # paths), `transaction` (the ORM) and `snapshot` (a consistent read of many batches).

    @contextmanager
    def statements(self, *, atomic: bool = False) -> Iterator[Connection]:
        """A Core connection for work done as a few prebuilt statements, where a Session's unit of
        work would cost more than the SQL.

        On PostgreSQL each statement is its own transaction (autocommit): no BEGIN and COMMIT round
        trips, so work that reads once and then writes everything in one statement (`Writes`) costs
        two round trips. Elsewhere (SQLite) the block is one transaction, as `transaction` is.
        `atomic`: the block is one transaction everywhere (committed at its end, rolled back if it
        raises), for statements that must stand or fall together.
        """
        if self._autocommit is not None and not atomic:
            with self._autocommit.connect() as connection:
                yield connection
        else:
            with self.engine.begin() as connection:
                yield connection

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed when the block ends, rolled back if it raises."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A session that reads the store as of one moment across all its statements (work that reads
        in many batches, such as `ledger verify`). PostgreSQL: REPEATABLE READ; SQLite's transaction
        is one snapshot already."""
        with self.sessions() as session:
            if dialect.is_postgresql(self.engine):
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    @contextmanager
    def shared_snapshot(self) -> Iterator[tuple[Session, str | None]]:
        """`snapshot` for work split across processes (the ledger check's jobs): the session, and a
        token with which `joined_snapshot` reads the very same moment in another process.

        PostgreSQL: the REPEATABLE READ snapshot exported (pg_export_snapshot), as pg_dump --jobs
        does; it can be joined while this block runs. SQLite: a deferred read transaction on a
        read-only connection, which takes no lock, so writers go on beside it (WAL); there is no
        token: each process reads its own moment.
        """
        if not dialect.is_postgresql(self.engine):
            with self.reads_beside_writers()() as session:
                yield session, None
            return
        with self.snapshot() as session:
            yield session, self.exported(session)

    @staticmethod
    def exported(session: Session) -> str | None:
        """A token with which `joined_snapshot` reads what `session`'s transaction read at its start
        (PostgreSQL; None on SQLite, where each process reads its own moment)."""
        if not dialect.is_postgresql(session):
            return None
        return session.execute(text("SELECT pg_export_snapshot()")).scalar_one()

    @contextmanager
    def joined_snapshot(self, token: str | None) -> Iterator[Session]:
        """A read session at the moment `shared_snapshot` gave `token` for (SQLite: a moment of its own)."""
        if not dialect.is_postgresql(self.engine):
            with self.reads_beside_writers()() as session:
                yield session
            return
        if token is None or not _SNAPSHOT_ID.match(token):
            raise ValueError(f"not an exported snapshot: {token!r}")
        with self.snapshot() as session:
            # Must be the transaction's first statement; a utility statement takes no parameters.
            session.execute(text(f"SET TRANSACTION SNAPSHOT '{token}'"))
            yield session

    def reads_beside_writers(self) -> sessionmaker:
        """Sessions for reads only, which never wait for a writer.

        On SQLite every transaction of `sessions` begins IMMEDIATE, which takes the database's write
        lock. Reads that must go on beside a writer (the ledger check's batches, the sandbox answering
        a fetch the sweeper makes from inside its own transaction) go through a read-only engine of
        their own (_make_engine). PostgreSQL needs nothing of the kind.
        """
        if dialect.is_postgresql(self.engine):
            return self.sessions
        if self._sqlite_reader is None:
            self._sqlite_reader = sessionmaker(_make_engine(self.url, read_only=True), expire_on_commit=False)
        return self._sqlite_reader

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def revisions(self) -> tuple[str, ...]:
        """The migrations the store is at; () for a store no migration has run on (a new one)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))

    def upgrade(self, revision: str = "heads") -> None:
        """Apply Alembic migrations up to revision."""
        from alembic import command

        command.upgrade(alembic_config(self.url), revision)

    def dispose(self) -> None:
        self.engine.dispose()
        if self._sqlite_reader is not None:
            self._sqlite_reader.kw["bind"].dispose()
        if self._autocommit is not None:
            self._autocommit.dispose()


class Part(Protocol):
    """A write that is not rows by id (an UPDATE of whatever rows match a condition), riding along a
    `Writes`: on PostgreSQL as WITH clauses of its one statement, elsewhere as statements run in order
    after the guard matched. Its parameters come with it (`Writes.part`); `name` names its shape."""

    name: str

    def ctes(self, gate, prefix: str) -> list:
        """The WITH clauses, each gated on `gate` (None: no guard), parameters named `prefix` + key."""

    def run(self, connection: Connection, params: dict) -> None:
        """The same write as statements, in the caller's transaction (SQLite)."""


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
        self.parts: list[tuple[Part, dict]] = []

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

    def part(self, part: Part, params: dict) -> Writes:
        self.parts.append((part, params))
        return self

    def execute(self, connection: Connection) -> bool:
        if dialect.is_postgresql(connection):
            sql, params = _one_statement(self)
            return on_driver(connection, sql, params)[0][0] > 0
        return _in_order(self, connection)


# The driver path. SQLAlchemy's work on each execution (binding, result metadata, rows as objects)
# costs more than a one-row statement's round trip: the statements every request runs are compiled
# once (`driver_sql`) and run on psycopg's own cursor (`on_driver`) on PostgreSQL. Values go in and
# come out as psycopg has them: datetimes must be aware going in, and come back aware.

# Where the driver path reads: an ORM session, or a Core connection (one message in the send API, the
# worker's claim, a webhook: a session's unit of work would cost more than the query).
Store = Session | Connection


def driver_sql(statement: Executable) -> str:
    """`statement` as SQLAlchemy compiles it for psycopg (named %(name)s parameters, none preset)."""
    compiled = statement.compile(dialect=_POSTGRESQL)
    preset = [name for name, value in compiled.params.items() if value is not None]
    if preset:
        raise ValueError(f"driver SQL takes every value from its caller; render these in the SQL: {preset}")
    return str(compiled)


_POSTGRESQL = postgresql_psycopg.dialect()


def on_driver(store: Store, sql: str, params: dict, *, returns_rows: bool = True) -> list[tuple]:
    """Run `sql` (from `driver_sql`) on the psycopg connection under `store`, in its transaction if
    it has one; its rows if `returns_rows` (asking psycopg whether there are any builds their
    descriptions). Errors come out as SQLAlchemy's, and a connection found dead is invalidated, as
    `Connection.execute` would."""
    if isinstance(store, Session):
        store.flush()  # the driver's cursor must see what the session holds, as session.execute would
        store = store.connection()
    driver = store.connection.driver_connection
    cursor = driver.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall() if returns_rows else []
    except store.dialect.loaded_dbapi.Error as error:
        dead = store.dialect.is_disconnect(error, driver, cursor)
        if dead:
            store.invalidate(error)
        _without_row_values(error)
        raise DBAPIError.instance(sql, params, error, store.dialect.loaded_dbapi.Error, hide_parameters=True,
                                  connection_invalidated=dead, dialect=store.dialect) from error
    finally:
        cursor.close()


def rows(store: Store, statement: Executable, params: dict, sql: str | None = None) -> list[tuple]:
    """The rows of `statement` as tuples: on the driver on PostgreSQL (`sql`: its `driver_sql`, kept
    by the caller), through SQLAlchemy elsewhere."""
    if dialect.is_postgresql(store):
        return on_driver(store, sql or driver_sql(statement), params)
    return [tuple(row) for row in store.execute(statement, params)]


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
    for part, params in writes.parts:
        part.run(connection, params)
    return True


_STATEMENTS: dict[tuple, str] = {}  # shape -> driver SQL


def _groups(writes: Writes) -> tuple[dict, dict]:
    """Inserts and updates by (table, columns), rows in the order given."""
    inserts: dict[tuple, list[dict]] = {}
    for table, row in writes.inserts:
        inserts.setdefault((table, tuple(row)), []).append(row)
    updates: dict[tuple, list[dict]] = {}
    for table, row_id, values in writes.updates:
        updates.setdefault((table, tuple(values)), []).append({"id": row_id, **values})
    return inserts, updates


def _one_statement(writes: Writes) -> tuple[str, dict]:
    """The PostgreSQL statement for this shape of writes (built once per shape) and its parameters.

    Each table's rows travel as ONE JSON parameter (json_populate_recordset turns it back into rows
    of that table's type), so the statement's text and its parameter count stay small whatever the
    number of rows: psycopg re-parses, on every execution, a statement with more than 50 parameters,
    which cost more than the rest of a STOP. Only an update's ids add a parameter a row (see `_build`):
    the consents of one number, a handful.
    """
    inserts, updates = _groups(writes)
    guard = writes.guard
    counted = [(table, columns, len(rows)) for (table, columns), rows in updates.items()]
    shape = (
        None if guard is None else (guard[0].name, tuple(guard[2]), tuple(guard[3])),
        tuple((table.name, columns) for table, columns in inserts),
        tuple((table.name, columns, count) for table, columns, count in counted),
        tuple(table.name for table, _ in writes.deletes),
        tuple(part.name for part, _ in writes.parts),
    )
    statement = _STATEMENTS.get(shape)
    if statement is None:
        statement = _STATEMENTS[shape] = driver_sql(_build(guard, list(inserts), counted, writes.deletes,
                                                           [part for part, _ in writes.parts]))
    params: dict = {}
    if guard is not None:
        _, row_id, expected, values = guard
        params["g_id"] = row_id
        params.update({f"g_old_{key}": value for key, value in expected.items()})
        params.update({f"g_new_{key}": value for key, value in values.items()})
    for index, rows in enumerate(inserts.values()):
        params[f"i{index}"] = _json_rows(rows)
    for index, rows in enumerate(updates.values()):
        params[f"u{index}"] = _json_rows(rows)
        params.update({f"u{index}_id{position}": row["id"] for position, row in enumerate(rows)})
    for index, (_, row_id) in enumerate(writes.deletes):
        params[f"d{index}_id"] = row_id
    for index, (_, values) in enumerate(writes.parts):
        params.update({f"p{index}_{key}": value for key, value in values.items()})
    return statement, params


class Ids(list):
    """Row ids for an `= ANY(CAST(:ids AS BIGINT[]))` parameter: sent to PostgreSQL as one int8[]
    literal written here. psycopg's own list adapter inspects the elements on every execution to choose
    the array's type, which cost more than the rest of the parameters of an opt-out's write together."""


class _IdsDumper(psycopg.adapt.Dumper):
    oid = psycopg.postgres.types["int8"].array_oid

    def dump(self, obj: Ids) -> bytes:
        return f"{{{','.join(str(int(value)) for value in obj)}}}".encode()


psycopg.adapters.register_dumper(Ids, _IdsDumper)  # every connection made after this takes it


class Encoded(dict):
    """A row that comes with its JSON text already written, which `Writes` sends as is on PostgreSQL
    (a ledger event: its evidence as the very text its digest covers). Elsewhere, a row like any other."""

    __slots__ = ("json",)

    def __init__(self, row: dict, json: str):
        super().__init__(row)
        self.json = json


def _json_rows(rows: list[dict]) -> str:
    if all(type(row) is Encoded for row in rows):
        return f"[{','.join(row.json for row in rows)}]"
    # Keys sorted: a JSON column's text is stored as written, and canonical JSON is what a digest over
    # it covers (a ledger event's evidence: `ledger verify` checks it in SQL, store/ledger.py). The
    # order of a row's own keys does not matter to json_populate_recordset.
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=_json_value)


def _json_value(value):
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use aware UTC")
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _recordset(table: Table, name: str, columns: tuple[str, ...]):
    """FROM json_populate_recordset(NULL::table, :name) AS name: the rows of one JSON parameter."""
    rows = cast(bindparam(name, type_=Text), JSON)
    return (func.json_populate_recordset(literal_column(f"NULL::{table.name}"), rows)
            .table_valued(*columns).alias(f"{name}_rows"))


def _build(guard, inserts: list[tuple], updates: list[tuple], deletes: list, parts: list) -> Executable:
    ctes = []
    if guard is None:
        gate = None
        outcome = select(literal_column("1"))
    else:
        table, _, expected, values = guard
        moved = (update(table)
                 .where(table.c.id == bindparam("g_id"),
                        *(table.c[key] == bindparam(f"g_old_{key}") for key in expected))
                 .values({key: bindparam(f"g_new_{key}") for key in values})
                 .returning(table.c.id).cte("guard"))
        gate = exists(select(moved.c.id))
        outcome = select(func.count()).select_from(moved)
    # One INSERT per table, its rows in the order given: they take their ids in that order (the
    # ledger's order of insertion is part of what `ledger.verify` checks).
    for index, (table, columns) in enumerate(inserts):
        rows = _recordset(table, f"i{index}", columns)
        chosen = select(*(rows.c[column] for column in columns))
        ctes.append(insert(table).from_select(list(columns), chosen if gate is None else chosen.where(gate))
                    .cte(f"insert_{index}"))
    for index, (table, columns, count) in enumerate(updates):
        rows = _recordset(table, f"u{index}", ("id", *columns))
        # The ids again, each a parameter of its own: the planner guesses 100 rows for any set-returning
        # function, and joined on that guess alone it scanned the whole table to update two rows. Not
        # one array parameter: PostgreSQL guesses ten elements for an array it plans for in general and
        # knows the count of one it is given, so it judged its generic plan dearer than one made for
        # the values at hand and planned the whole statement again on every execution (a YES: 0.3 ms
        # of the server's CPU). A list of `count` parameters counts the same either way.
        ids = [bindparam(f"u{index}_id{position}") for position in range(count)]
        changed = (update(table).where(table.c.id.in_(ids), table.c.id == rows.c.id)
                   .values({column: rows.c[column] for column in columns}))
        ctes.append((changed if gate is None else changed.where(gate)).cte(f"update_{index}"))
    for index, (table, _) in enumerate(deletes):
        gone = delete(table).where(table.c.id == bindparam(f"d{index}_id"))
        ctes.append((gone if gate is None else gone.where(gate)).cte(f"delete_{index}"))
    for index, part in enumerate(parts):
        ctes.extend(part.ctes(gate, f"p{index}_"))
    return outcome.add_cte(*ctes) if ctes else outcome


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
