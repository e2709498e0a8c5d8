"""The consent import as it was before the bulk import (issue 18): one row at a time, each with its
own number lock, reads and writes, all in one transaction. Kept only as `bench/import.py`'s baseline;
the gateway imports through gateway/services/imports.py.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

from sqlalchemy.orm import Session

from gateway.domain import storable
from gateway.domain.consent import IllegalTransition, Input, Source
from gateway.domain.numbers import InvalidNumber, parse
from gateway.domain.quiet_hours import QuietHours
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store import programs
from gateway.store.models import utcnow

IMPORT_STATUSES = {"opted_in": Input.IMPORT_OPT_IN, "opted_out": Input.IMPORT_OPT_OUT}
REQUIRED_COLUMNS = ("phone", "program", "status")


@dataclass
class ImportReport:
    applied: Counter = field(default_factory=Counter)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (line, why)


def import_csv(session: Session, handle: IO[str], *, region: str, actor: str, suppression_key: bytes,
               rules: QuietHours, now: datetime | None = None) -> ImportReport:
    """Import consent rows (phone, program, status, then evidence columns); refuse what cannot apply.

    Every other column is kept verbatim as evidence (collected_at, source_url, ip, disclosure…).
    An import never overrides a person's own opt-out (the state machine refuses it), nor brings back
    a number erased after it opted out: its suppression hash refuses the row, whatever its status
    (an erased number is not stored again). Where a state rule makes an opt-out bind for years
    (Virginia: 10), an opt-in row is refused while it binds, for every program (`stop_binding`).
    """
    reader = csv.DictReader(handle)
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"the CSV lacks the column(s): {', '.join(missing)}")
    for name in reader.fieldnames:
        if reason := storable.unstorable_reason(name):
            raise ValueError(f"the CSV's column name {storable.escaped(name)!r} {reason}")
    report = ImportReport()
    known = {p.slug: p for p in programs.all_programs(session)}
    for line, row in enumerate(reader, start=2):
        unstorable = next(((column, reason) for column, value in row.items() if column is not None
                           and isinstance(value, str) and (reason := storable.unstorable_reason(value))), None)
        if unstorable is not None:  # a file's stray NUL: this row is refused, the others go in
            report.refused.append((line, f"column {unstorable[0]!r} {unstorable[1]}"))
            continue
        try:
            number = parse(row["phone"] or "", region)
        except InvalidNumber as error:
            report.refused.append((line, f"invalid number ({error.reason})"))
            continue
        program = known.get((row["program"] or "").strip())
        if program is None:
            report.refused.append((line, f"unknown program {row['program']!r}"))
            continue
        input = IMPORT_STATUSES.get((row["status"] or "").strip())
        if input is None:
            report.refused.append((line, f"status must be opted_in or opted_out, not {row['status']!r}"))
            continue
        if consents.is_suppressed(session, suppression_key, number.e164):
            report.refused.append((line, "suppressed: the number was erased after it opted out, and is never "
                                         "imported again"))
            continue
        details = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS and k is not None and v not in (None, "")}
        evidence = consents.Evidence(Source.IMPORT, actor=actor, reference=f"line {line}", details=details)
        with session.begin_nested():
            row_number = store_consents.number_row(session, number)
            if input is Input.IMPORT_OPT_IN:
                binding = consents.stop_binding(session, rules, row_number, now or utcnow())
                if binding is not None:
                    report.refused.append((line, f"{consents.STOP_BINDING}: {binding.message}"))
                    continue
            try:
                consents.apply(session, row_number, program, input, evidence, now=now)
            except IllegalTransition as error:
                report.refused.append((line, str(error)))
                continue
        report.applied[input.value] += 1
    return report
