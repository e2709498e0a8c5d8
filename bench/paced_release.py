"""Paced release: 100,000 deferred messages across senders of different rates, released at 08:00.

Stores the messages as quiet hours leave them (deferred until one opening), runs the release pass
(`gateway.services.release.release`, what every sweep runs first) and then reads the slots back from
the store, per sender:
- the most slots within one whole clock second (the per-second histogram's max), and within any
  one-second window wherever it starts; both must be <= the sender's MPS;
- how long the schedule runs (first to last slot) against count / MPS;
- how long the release pass itself took (reading the due messages, working out the slots, writing
  them with their history steps), and how long a sweep's pass takes with nothing to release.
Exit status 0 only when every sender stayed within its rate and every message got a slot.

    .venv/bin/python bench/paced_release.py [--messages 100000] [--database-url URL]

Recreates the database named by --database-url (default postgresql://postgres@127.0.0.1/bench_paced;
a sqlite:/// URL works too). Loopback only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import select, text  # noqa: E402

from bench.support import empty_store  # noqa: E402
from gateway import bootstrap  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.programs import load_file  # noqa: E402
from gateway.services import release  # noqa: E402
from gateway.store import bulk, programs  # noqa: E402
from gateway.store.models import MessageEvent, OutboundMessage, PhoneNumber, new_message_id  # noqa: E402

# (sender, MPS, share of the messages): a long code, a toll-free number, a short code, a Messaging Service.
SENDERS = (("+15005550006", 1, 0.02), ("+18885550100", 10, 0.18), ("+18885550101", 30, 0.30),
           ("MG" + "a" * 32, 100, 0.50))
OPENING = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)  # 08:00 in New York
NUMBERS = 20_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_paced")
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()

    settings = load_settings(env={"DATABASE_URL": args.database_url, "SUPPRESSION_KEY": "bench-" + "k" * 40,
                                  "VAR_DIR": str(ROOT / "var" / "bench"), "SANDBOX": "off", "REDIS_URL": "",
                                  "TWILIO_AUTH_TOKEN": "bench", "TWILIO_ACCOUNT_SID": "AC" + "2" * 32})
    empty_store(settings.database_url).dispose()
    gateway = bootstrap.build(settings)
    try:
        counts = _prepare(gateway, settings, args.messages)
        started = time.perf_counter()
        released = release.release(gateway, OPENING, jitter=random.Random(1))
        took = time.perf_counter() - started
        started = time.perf_counter()
        again = release.release(gateway, OPENING + timedelta(seconds=10))
        idle = time.perf_counter() - started
        ok = _report(gateway, counts, released.paced, took, again.paced, idle, args.database_url)
    finally:
        gateway.db.dispose()
    return 0 if ok else 1


def _prepare(gateway, settings, total: int) -> dict[str, int]:
    database = gateway.db
    started = time.perf_counter()
    deals = next(p for p in load_file(settings.programs_file) if p.slug == "deals")
    specs = []
    for index, (sender, mps, _) in enumerate(SENDERS):
        where = {"sender": None, "messaging_service": sender} if sender.startswith("MG") else {"sender": sender}
        specs.append(replace(deals, slug=f"paced{index}", join_keywords=(f"PACED{index}",), mps=mps, **where))
    night = OPENING - timedelta(hours=10)
    with database.transaction() as session:
        stored = programs.store(session, specs)
        bulk.insert_rows(session, PhoneNumber.__table__,
                         ("e164", "kind", "region", "reachability", "ledger_seq", "ledger_head", "created_at"),
                         [(f"+1212{2_000_000 + i:07d}", "mobile", "US", "ok", 0, "0" * 64, night)
                          for i in range(NUMBERS)])
        number_ids = list(session.scalars(select(PhoneNumber.id)))
    counts, messages, events = {}, [], []
    rng = random.Random(3)
    for (sender, _, share), program in zip(SENDERS, stored):
        counts[sender] = round(total * share)
        for index in range(counts[sender]):
            message_id = new_message_id()
            created = night + timedelta(microseconds=index)  # accepted one after the other
            messages.append((message_id, rng.choice(number_ids), program.id, "marketing", sender, "Sale today", 1,
                             "GSM-7", "deferred", "quiet_hours", OPENING, 0, created, created, OPENING))
            events.append((message_id, "deferred", "quiet_hours", created))
    with database.transaction() as session:
        bulk.insert_rows(session, OutboundMessage.__table__,
                         ("id", "number_id", "program_id", "kind", "sender", "body", "segments", "encoding", "status",
                          "reason", "not_before", "attempts", "created_at", "updated_at", "recheck_at"), messages)
        bulk.insert_rows(session, MessageEvent.__table__, ("message_id", "status", "reason", "occurred_at"), events)
    if database.dialect == "postgresql":
        with database.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    print(f"store ({database.dialect}): {len(messages):,} deferred messages to {NUMBERS:,} numbers, opening at "
          f"{OPENING:%H:%M} UTC ({time.perf_counter() - started:.0f} s to build)")
    return counts


def _most_in_any_second(times: list[datetime]) -> int:
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= timedelta(seconds=1):
            first += 1
        most = max(most, last - first + 1)
    return most


def _report(gateway, counts, paced, took, paced_again, idle, url) -> bool:
    with gateway.db.sessions() as session:
        rows = session.execute(select(OutboundMessage.sender, OutboundMessage.not_before, OutboundMessage.reason)
                               .order_by(OutboundMessage.sender, OutboundMessage.not_before)).all()
    by_sender: dict[str, list[datetime]] = {}
    unpaced = 0
    for sender, slot, reason in rows:
        by_sender.setdefault(sender, []).append(slot)
        unpaced += reason != "paced"
    ok = unpaced == 0 and paced == sum(counts.values()) and paced_again == 0
    print()
    print("| sender | MPS | messages | max per clock second | max in any 1 s window | first slot | schedule runs "
          "| count / MPS |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for sender, mps, _ in SENDERS:
        slots = by_sender[sender]
        per_second = max(Counter(int(slot.timestamp()) for slot in slots).values())
        window = _most_in_any_second(slots)
        ok &= per_second <= mps and window <= mps
        runs = (slots[-1] - slots[0]).total_seconds()
        print(f"| `{sender[:14]}` | {mps} | {len(slots):,} | {per_second} | {window} | "
              f"+{(slots[0] - OPENING).total_seconds():.3f} s | {runs:,.1f} s | {len(slots) / mps:,.0f} s |")
    print()
    print(f"release pass: {paced:,} messages given their slots in {took:.2f} s "
          f"({paced / took:,.0f} messages/s); a later pass with nothing to release: {idle * 1000:.1f} ms")
    print(f"every sender within its rate and every message paced once: {'yes' if ok else 'NO'}")
    print(f"(database: {urlsplit(url).scheme})")
    return ok


if __name__ == "__main__":
    sys.exit(main())
