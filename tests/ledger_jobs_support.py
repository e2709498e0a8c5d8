"""A job of the parallel ledger check that dies, for tests/integration/store/test_ledger_check.py: jobs
run in processes of their own, so the stand-in must be importable by name."""

from __future__ import annotations

import os

from gateway.store import ledger

_real = ledger._verify_piece


def dying_piece(task):
    """The job's process exits abruptly on any piece but the first (as a killed or crashed one would)."""
    first = task[3]
    if first is not None and first > 2:
        os._exit(9)
    return _real(task)
