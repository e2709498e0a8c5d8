"""What the benchmarks share: an empty store to start from, and wrk's report read the same way.

Not part of the test suite, like the rest of bench/.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from sqlalchemy import text

from gateway.store.database import Database


def create_database(url: str) -> None:
    """The database `url` names, made on its PostgreSQL server if it is missing; a SQLite file is
    removed instead (it is made again when opened). `url` may be SQLAlchemy's or libpq's form."""
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[-1]).unlink(missing_ok=True)
        return
    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://", 1))
    name = parts.path.lstrip("/")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            connection.execute(f'CREATE DATABASE "{name}"')


def empty_store(database_url: str) -> Database:
    """The gateway's schema and nothing in it, in the database `database_url` (SQLAlchemy's form, as
    settings give it) names: created if missing, emptied (the whole public schema) and migrated."""
    create_database(database_url)
    database = Database(database_url)
    if database.dialect == "postgresql":
        with database.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    database.upgrade()
    return database


def wrk_report(name: str, output: str) -> dict:
    """wrk's printed report as numbers; any failed request (non-2xx, socket error) is an error."""
    if re.search(r"Non-2xx or 3xx responses: (\d+)", output) or re.search(r"Socket errors: (.*)", output):
        raise RuntimeError(f"{name}: requests failed:\n{output}")
    percentile = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.MULTILINE))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "requests": int(re.search(r"(\d+) requests in", output).group(1)),
            "p50": percentile.get("50"), "p99": percentile.get("99")}
