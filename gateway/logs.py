"""Logging with phone numbers masked: nothing personal reaches stdout in full."""

from __future__ import annotations

import logging
import re
import sys

from gateway.numbers import mask

# "+" as is, or URL-encoded as it appears in logged request URLs (the twilio client logs them).
_NUMBER = re.compile(r"(\+|%2[Bb])([1-9]\d{6,14})")


class MaskNumbers(logging.Filter):
    """Rewrites any E.164 number in a record to its masked form ('+1415***2671')."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _NUMBER.sub(lambda match: match.group(1) + mask("+" + match.group(2))[1:], message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_handlers(logger: logging.Logger) -> None:
    """Put the mask on every handler of `logger` that lacks it (Celery's worker installs its own)."""
    for handler in logger.handlers:
        if not any(isinstance(existing, MaskNumbers) for existing in handler.filters):
            handler.addFilter(MaskNumbers())


def configure(level: str) -> None:
    root = logging.getLogger()
    if any(getattr(handler, "_smsgate", False) for handler in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._smsgate = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MaskNumbers())
    root.addHandler(handler)
    root.setLevel(level)
