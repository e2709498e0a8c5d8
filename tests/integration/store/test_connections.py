"""Pooled connections the database server has ended are never handed out.

The pools do not ping on checkout (a round trip per request); they look at the socket instead
(gateway.db._refuse_ended_connection). These tests end the server side of every pooled connection,
as a restart or pg_terminate_backend does, and check that the next text and the next API-style
transaction still land. Only a database server can end a connection: SQLite has none.
"""

from sqlalchemy import func, select, text

from gateway.services import inbound
from gateway.store.models import InboundMessage

SENDER = "+15005550006"


def backend_pid(connection) -> int:
    return connection.connection.driver_connection.info.backend_pid


def end_on_the_server(db, pid: int) -> None:
    """pg_terminate_backend, as an administrator or a restart would; it waits until the backend is gone."""
    with db.statements() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar()


def stored_texts(db) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage))


def test_a_text_after_the_server_ended_the_pooled_connection_is_still_recorded(own_pools, db):
    handled = inbound.handle(own_pools, inbound.InboundText("SM" + "a" * 32, "+14155552671", SENDER, "HELP"))
    assert handled.intent == "help"
    with own_pools.db.statements() as connection:
        pooled = backend_pid(connection)
    end_on_the_server(db, pooled)

    handled = inbound.handle(own_pools, inbound.InboundText("SM" + "b" * 32, "+14155552671", SENDER, "STOP"))

    assert handled.intent == "opt_out"
    with own_pools.db.statements() as connection:
        assert backend_pid(connection) != pooled  # a new connection, not the ended one
    assert stored_texts(db) == 2


def test_a_transaction_after_the_server_ended_the_pooled_connection_still_commits(own_pools, db):
    with own_pools.db.transaction() as session:
        pooled = backend_pid(session.connection())
    end_on_the_server(db, pooled)

    with own_pools.db.transaction() as session:
        assert backend_pid(session.connection()) != pooled
        session.execute(text("SELECT 1"))
