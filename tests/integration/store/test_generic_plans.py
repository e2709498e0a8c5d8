"""The webhook's statements run on plans PostgreSQL keeps, not on plans it makes again for every text.

psycopg prepares a statement it has run five times on a connection; PostgreSQL then plans the next
five executions for their values and, from the sixth, keeps one generic plan unless that looks dearer.
A statement whose generic plan looks dearer is planned anew on every execution: the write of a YES
(four WITH clauses) cost 0.3 ms of the server's CPU that way, more than its execution. These tests
run every kind of text, and sends through the API, a dozen times on a pool of their own and ask the
server, for each statement prepared on that connection, how it was planned.
"""

import itertools

import pytest
from sqlalchemy import text

from gateway.services import inbound
from tests.sandbox_support import confirmed, other_people

SHARED_SENDER = "+15005550006"  # deals and alerts
ORDERS_SENDER = "+18885550199"  # orders alone: an opt-out there ends one program
PEOPLE = ("+14155552671", "+14155552672")
# What each person texts, round after round: every path of the webhook, each leaving the number where
# the next round starts again (STOP ends both programs, DEALS asks anew, YES confirms it, START
# restores alerts; orders is ended and restored on its own sender).
ROUND = ((SHARED_SENDER, "STOP"), (SHARED_SENDER, "DEALS"), (SHARED_SENDER, "YES"), (SHARED_SENDER, "HELP"),
         (SHARED_SENDER, "what time do you open tomorrow?"), (SHARED_SENDER, "START"),
         (ORDERS_SENDER, "STOP"), (ORDERS_SENDER, "START"))
ROUNDS = 12  # 5 unprepared, 5 planned for their values, then the generic plan if PostgreSQL keeps it


@pytest.fixture
def store(db):
    """Two people opted in to every program, among a thousand others who were sent three texts of each
    (an opt-out looks for waiting messages among them): a store the size of a small deployment."""
    other_people(db, 1000, texts=3)
    for person in PEOPLE:
        confirmed(db, person, "deals", "alerts", "orders")


def planned(gateway) -> list:
    """(statement, generic plans, custom plans) of every statement prepared on the pool's connection."""
    with gateway.db.statements() as connection:
        return connection.execute(text(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")).all()


def replanned(prepared: list) -> list:
    """The statements PostgreSQL went on planning for their values after its first five plans."""
    return [(row.statement[:200], row.custom_plans) for row in prepared if row.custom_plans > 5]


def test_every_statement_of_the_webhook_settles_on_a_generic_plan(own_pools, store):
    sids = itertools.count(1)
    for _ in range(ROUNDS):
        for person in PEOPLE:
            for sender, body in ROUND:
                inbound.handle(own_pools, inbound.InboundText(f"SM{next(sids):032x}", person, sender, body))
    prepared = planned(own_pools)
    # Every statement the webhook runs for these texts was prepared: the read, and the write of each path.
    decided = [row for row in prepared if row.generic_plans + row.custom_plans > 5]
    assert len(decided) >= 8, [row.statement[:60] for row in prepared]
    assert replanned(prepared) == []
    assert all(row.generic_plans > 0 for row in decided)


def test_every_statement_of_the_send_api_settles_on_a_generic_plan(own_pools, store, app, client, make_key,
                                                                    monkeypatch):
    monkeypatch.setitem(app.extensions, "gateway", own_pools)  # the views use the pool of this test
    headers = {"Authorization": f"Bearer {make_key('send')}"}
    for round_ in range(ROUNDS):
        for person in PEOPLE:
            for program in ("alerts", "orders"):
                answer = client.post("/v1/messages", headers=headers,
                                     json={"to": person, "program": program, "body": f"Update {round_}"})
                assert answer.status_code == 202, answer.get_json()
    prepared = planned(own_pools)
    # The gate's read of the number and the write of the message with its first step, at least.
    assert len([row for row in prepared if row.generic_plans > 0]) >= 2, [row.statement[:60] for row in prepared]
    assert replanned(prepared) == []
