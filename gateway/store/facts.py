"""The send gate's reads: the `Facts` about numbers for one program, in one query whatever their number.

The rules that judge them are gateway/domain/gate.py; gateway/services/policy.py joins the two. The
caller gives each number's suppression digest (it holds the key), so this module knows the tables,
not the secrets.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import TextualSelect, bindparam, text

from gateway.domain.gate import Facts, Kind
from gateway.domain.outbound import Reachability, Status
from gateway.store import bulk, dialect
from gateway.store.database import Store, driver_sql, rows
from gateway.store.models import Program, UTCDateTime

# Messages that count against frequency caps: everything not refused.
COUNTED = (Status.QUEUED, Status.DEFERRED, Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNDELIVERED)
_COUNTED_SQL = ", ".join(f"'{status.value}'" for status in COUNTED)  # constants, written into the SQL


class Known(NamedTuple):
    """A number of ours, as `by_e164` found it (a tuple: a batch makes 100,000)."""

    id: int
    kind: str


def _recent(count_recent: bool, exclude_message: str | None, numbers: str) -> tuple[str, str]:
    """SQL joining `r`: each number's marketing texts of the last day, all programs (for state caps).

    `numbers` is a FROM clause giving the numbers' ids as `number_id`.
    """
    if not count_recent:
        return "", "0"
    exclude = " AND m.id <> :exclude" if exclude_message else ""
    join = f"""
        LEFT JOIN (
            SELECT m.number_id, COUNT(*) AS total
            FROM {numbers} JOIN messages m ON m.number_id = wanted.number_id
            WHERE m.kind = '{Kind.MARKETING.value}' AND m.status IN ({_COUNTED_SQL}) AND m.created_at > :since{exclude}
            GROUP BY m.number_id
        ) r ON r.number_id = n.id"""
    return join, "r.total"


# The program's own texts that count against its cap: its kind (not the double opt-in question), not
# refused. With `exclude` (the worker's second look at a queued message), the texts accepted before
# that one count, so when two were accepted at once past the cap the earlier goes, not neither; and
# every text already handed to the provider counts, whenever it was accepted: a web process that
# stalled between stamping a text and committing it must not send it past one that went out
# meanwhile (claims of one number take turns, store/outbox.py, so a send under way is seen).
HANDED_OVER = (Status.SENDING, Status.SENT, Status.DELIVERED, Status.UNDELIVERED)
_HANDED_OVER_SQL = ", ".join(f"'{status.value}'" for status in HANDED_OVER)


def _cap_filter(exclude_message: bool) -> str:
    exclude = (" AND m.id <> :exclude AND (m.created_at <= (SELECT e.created_at FROM messages e WHERE e.id = :exclude)"
               f" OR m.status IN ({_HANDED_OVER_SQL}))" if exclude_message else "")
    return (f"m.program_id = :program AND m.kind = :cap_kind AND m.status IN ({_COUNTED_SQL})"
            f" AND m.created_at >= :cap_since{exclude}")


def _cap_reached_one(capped: bool, exclude_message: bool) -> str:
    """A column: the number's `cap_nth` newest text of the program since `cap_since` (the index on
    (number_id, created_at) reads them newest first)."""
    if not capped:
        return "NULL"
    return f"""(SELECT m.created_at FROM messages m WHERE m.number_id = n.id AND {_cap_filter(exclude_message)}
                ORDER BY m.created_at DESC LIMIT 1 OFFSET :cap_offset)"""


def _cap_reached_many(capped: bool, exclude_message: bool, numbers: str) -> tuple[str, str]:
    """`_cap_reached_one` for many numbers: one ranked scan of their texts, joined as `cap`."""
    if not capped:
        return "", "NULL"
    join = f"""
        LEFT JOIN (
            SELECT ranked.number_id, ranked.created_at FROM (
                SELECT m.number_id, m.created_at,
                       ROW_NUMBER() OVER (PARTITION BY m.number_id ORDER BY m.created_at DESC) AS nth
                FROM {numbers} JOIN messages m ON m.number_id = capped.number_id
                WHERE {_cap_filter(exclude_message)}
            ) ranked WHERE ranked.nth = :cap_nth
        ) cap ON cap.number_id = n.id"""
    return join, "cap.created_at"


# The ledger event that made the consent what it is: the number's newest event of the program (its
# chain's (number_id, seq) index, read newest first). Only where a consent row exists (a number
# without one has no event of the program that counts), or, with `of_status`, only where the
# consent has that status. PostgreSQL reads it as a LATERAL join, one backward index probe a number;
# its planner took the portable form for a hash of the whole ledger plus a MAX per row, which cost a
# 100,000-number batch about a second (bench/README.md). SQLite has no LATERAL.
def _consent_event(postgresql: bool, of_status: bool = False) -> str:
    held = "k.status = :event_status" if of_status else "k.id IS NOT NULL"
    if postgresql:
        return f"""
    LEFT JOIN LATERAL (
        SELECT x.id, x.seq, x.hash FROM ledger_events x
        WHERE {held} AND x.number_id = n.id AND x.program_id = :program
        ORDER BY x.seq DESC LIMIT 1) le ON true"""
    return f"""
    LEFT JOIN ledger_events le ON {held} AND le.number_id = n.id AND le.seq = (
        SELECT MAX(x.seq) FROM ledger_events x WHERE x.number_id = n.id AND x.program_id = :program)"""


def by_e164(
    session: Store,
    e164s: Sequence[str],
    digests: Sequence[str],
    program: Program,
    now: datetime,
    *,
    count_recent: bool = True,
    exclude_message: str | None = None,
    cap: tuple[int, datetime] | None = None,
    events_of: str | None = None,
) -> dict[str, tuple[Known | None, Facts]]:
    """Facts for E.164 numbers, ours or not yet (`Known` is None then), in one query.

    `cap` (max_messages, since): also find when each number reached the program's cap
    (`Facts.cap_reached_at`), looking at its texts of the program since `since`. `events_of`: read
    the consent's ledger event (`Facts.consent_event`) only for consents of this status, for a
    caller that records no other (many numbers only).

    `digests` are the numbers' suppression digests, in the same order. One number is looked up
    directly (the send API, the worker); many go into a temporary table (COPY on PostgreSQL) that
    one query joins to numbers, consents, suppressions and the last day's messages, so a batch of
    100,000 costs a handful of statements, not one per number. Many numbers need a Session; one can
    be read through a Core connection too.
    """
    if not e164s:
        return {}
    params: dict = {"program": program.id}
    if count_recent:
        params["since"] = now - timedelta(hours=24)
    if exclude_message and (count_recent or cap):
        params["exclude"] = exclude_message
    if cap:
        params.update(cap_kind=program.category, cap_since=cap[1], cap_nth=cap[0], cap_offset=cap[0] - 1)
    if events_of:
        params["event_status"] = events_of
    postgresql = dialect.is_postgresql(session)
    if len(e164s) == 1:
        params.update(e164=e164s[0], digest=digests[0])
        return _facts(session, *_one_number_query(count_recent, bool(exclude_message), bool(cap), postgresql),
                      params, postgresql)
    with bulk.temp_table(session, "gate_candidates", {"e164": "VARCHAR(20)", "digest": "VARCHAR(64)"},
                         zip(e164s, digests)) as candidates:
        ours = f"(SELECT n2.id AS number_id FROM {candidates} c2 JOIN numbers n2 ON n2.e164 = c2.e164)"
        recent, counts = _recent(count_recent, exclude_message, f"{ours} wanted")
        capped, cap_reached = _cap_reached_many(bool(cap), bool(exclude_message), f"{ours} capped")
        if postgresql:
            # Hash joins over a million numbers in memory rather than in batches on disk; and no JIT:
            # the plan's cost passes its thresholds, and compiling it took ~0.5 s of a ~1.3 s query
            # that runs once. This transaction only.
            session.execute(text("SET LOCAL work_mem = '64MB'"))
            session.execute(text("SET LOCAL jit = off"))
        # The suppression list is looked at first, so the joins after it carry a flag rather than a digest.
        # "OFFSET 0" keeps PostgreSQL from merging the two steps again (~5% of the query); SQLite has
        # no OFFSET without LIMIT.
        query = _facts_query(f"""
            SELECT c.e164, n.id, n.kind, n.region, n.reachability, k.status, k.expires_at, c.suppressed,
                   {counts}, {cap_reached} AS cap_reached_at, le.id, le.seq, le.hash
            FROM (SELECT c1.e164, CASE WHEN s.digest IS NULL THEN 0 ELSE 1 END AS suppressed
                  FROM {candidates} c1 LEFT JOIN suppressions s ON s.digest = c1.digest
                  {"OFFSET 0" if postgresql else ""}) c
            LEFT JOIN numbers n ON n.e164 = c.e164
            LEFT JOIN consents k ON k.number_id = n.id AND k.program_id = :program
            {_consent_event(postgresql, bool(events_of))}
            {recent}
            {capped}
        """, count_recent, bool(cap))
        return _facts(session, query, None, params, postgresql)


def _facts_query(sql: str, count_recent: bool, capped: bool = False) -> TextualSelect:
    query = text(sql)
    if capped:
        query = query.bindparams(bindparam("cap_since", type_=UTCDateTime()))
        query = query.columns(expires_at=UTCDateTime(), cap_reached_at=UTCDateTime())
    else:
        query = query.columns(expires_at=UTCDateTime())
    if count_recent:
        query = query.bindparams(bindparam("since", type_=UTCDateTime()))
    return query


@functools.cache
def _one_number_query(count_recent: bool, exclude_message: bool, capped: bool,
                      postgresql: bool) -> tuple[TextualSelect, str]:
    """The query for one number (built once per variant) and its SQL as psycopg takes it."""
    recent, counts = _recent(count_recent, exclude_message,
                             "(SELECT id AS number_id FROM numbers WHERE e164 = :e164) wanted")
    query = _facts_query(f"""
        SELECT :e164 AS e164, n.id, n.kind, n.region, n.reachability, k.status, k.expires_at,
               CASE WHEN EXISTS (SELECT 1 FROM suppressions s WHERE s.digest = :digest) THEN 1 ELSE 0 END,
               {counts}, {_cap_reached_one(capped, exclude_message)} AS cap_reached_at, le.id, le.seq, le.hash
        FROM (SELECT 1 AS probe) probe
        LEFT JOIN numbers n ON n.e164 = :e164
        LEFT JOIN consents k ON k.number_id = n.id AND k.program_id = :program
        {_consent_event(postgresql)}
        {recent}
    """, count_recent, capped)
    return query, driver_sql(query)


def _facts(session: Store, query: TextualSelect, sql: str | None, params: dict,
           on_postgresql: bool) -> dict[str, tuple[Known | None, Facts]]:
    """Run a facts query: `sql` is its SQL for the driver when known already (one number)."""
    found: dict[str, tuple[Known | None, Facts]] = {}
    with bulk.collector_paused():
        for (e164, number_id, kind, region, reachability, status, expires_at, suppressed, total,
             cap_reached_at, event_id, event_seq, event_hash) in rows(session, query, params, sql):
            if on_postgresql:
                # psycopg gives the server's zone
                if expires_at is not None:
                    expires_at = expires_at.astimezone(UTC)
                if cap_reached_at is not None:
                    cap_reached_at = cap_reached_at.astimezone(UTC)
            found[e164] = (
                None if number_id is None else Known(number_id, kind),
                Facts(e164, reachability or Reachability.OK, status, expires_at, suppressed == 1, total or 0,
                      region, kind, cap_reached_at,
                      None if event_id is None else (event_id, event_seq, event_hash)),
            )
    return found
