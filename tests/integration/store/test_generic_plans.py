"""The webhook's statements run on plans PostgreSQL keeps, not on plans it makes again for every text.

psycopg prepares a statement it has run five times on a connection; PostgreSQL then plans the next
five executions for their values and, from the sixth, keeps one generic plan unless that looks dearer.
A statement whose generic plan looks dearer is planned anew on every execution: the write of a YES
(four WITH clauses) cost 0.3 ms of the server's CPU that way, more than its execution. These tests
run every kind of text, and sends through the API, a dozen times on a pool of their own and ask the
server, for each statement prepared on that connection, how it was planned.
"""

import itertools

from sqlalchemy import text

from gateway.services import inbound
from tests.sandbox_support import confirmed

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


def others(db, count: int) -> None:
    """`count` other people, each opted in to every program and sent three texts of each: a store the
    size of a small deployment."""
    with db.statements() as connection:
        connection.execute(text("""
            INSERT INTO numbers (e164, kind, reachability, ledger_seq, ledger_head, created_at)
            SELECT '+1415600' || lpad(i::text, 4, '0'), 'mobile', 'ok', 0, repeat('0', 64), now()
            FROM generate_series(1, :count) i"""), {"count": count})
        connection.execute(text("""
            INSERT INTO consents (number_id, program_id, status, restorable, updated_at)
            SELECT numbers.id, programs.id, 'opted_in', false, now()
            FROM numbers CROSS JOIN programs WHERE numbers.e164 LIKE '+1415600%'"""))
        # and a few texts of every program sent to each (an opt-out looks for waiting ones among them)
        connection.execute(text("""
            INSERT INTO messages (id, number_id, program_id, kind, sender, body, segments, encoding, status,
                                  attempts, created_at, updated_at)
            SELECT md5(numbers.id || '-' || programs.id || '-' || n), numbers.id, programs.id, 'marketing',
                   programs.sender, 'Hello', 1, 'GSM-7', 'delivered', 1, now(), now()
            FROM numbers CROSS JOIN programs CROSS JOIN generate_series(1, 3) n
            WHERE numbers.e164 LIKE '+1415600%'"""))


def planned(gateway) -> list:
    """(statement, generic plans, custom plans) of every statement prepared on the pool's connection."""
    with gateway.db.statements() as connection:
        return connection.execute(text(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")).all()


def replanned(prepared: list) -> list:
    """The statements PostgreSQL went on planning for their values after its first five plans."""
    return [(row.statement[:200], row.custom_plans) for row in prepared
            if row.generic_plans + row.custom_plans > 5 and row.custom_plans > 5]


def test_every_statement_of_the_webhook_settles_on_a_generic_plan(own_pools, db):
    others(db, 1000)
    for person in PEOPLE:
        confirmed(db, person, "deals", "alerts", "orders")
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


def test_every_statement_of_the_send_api_settles_on_a_generic_plan(own_pools, app, client, make_key, db,
                                                                    monkeypatch):
    others(db, 1000)
    for person in PEOPLE:
        confirmed(db, person, "deals", "alerts", "orders")
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
