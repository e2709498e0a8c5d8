"""Alembic environment: the URL comes from the gateway's settings, never from an ini file."""

from alembic import context
from sqlalchemy import create_engine

import gateway.twilio.sandbox.models  # noqa: E402,F401  (its tables exist whether or not SANDBOX is on)
from gateway.store import dialect
from gateway.store.models import Base

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    connectable = create_engine(url)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=dialect.name(connection) == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


run_migrations()
