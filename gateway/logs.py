"""Logging with phone numbers masked: nothing personal reaches a log line in full.

A record is masked as a whole, once: its message with the arguments filled in, its traceback and its
stack are rendered to text, masked, and stored back, so every handler and formatter after that prints
the masked text (a traceback re-rendered from `exc_info` would print exception messages in full).

`install` masks every record the process creates, whoever logs it and whichever handler prints it
(ours, Celery's, gunicorn's error log, pytest's capture). `MaskNumbers` does the same as a handler
filter, for records made without the record factory (`logging.makeLogRecord`, records from another
process); masking a record twice costs nothing.
"""

from __future__ import annotations

import logging
import re
import sys

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

from gateway.domain.numbers import mask

_MASKED = "_smsgate_masked"

# E.164, with "+" as is or URL-encoded as it appears in logged request URLs (the twilio client logs them).
_E164 = re.compile(r"(\+|%2[Bb])([1-9]\d{6,14})")
# North American numbers as people and forms write them: (415) 555-0147, 415-555-0147, 415.555.0147,
# 415 555 0147, with or without a leading 1 or +1. Area code and exchange never start with 0 or 1, and
# nothing may touch it on either side but spaces and punctuation, so dates (2026-12-05), times,
# versions, addresses (192.168.100.200) and decimals are left alone.
_NANP = re.compile(
    r"(?<![\w.+%-])(?:\+?1[ .-]?)?(?:\(([2-9]\d\d)\) ?|([2-9]\d\d)[ .-])([2-9]\d\d)[ .-](\d{4})(?![\w]|[.-]\d)")
# A quick look for what might still be a number in another form (a bare run of digits, another
# country's national format): seven digits or more with at most separators between them, not part of
# a word (a Twilio SID's hex is not worth asking phonenumbers about).
# The lookbehind comes after the first digit (a digit not preceded by a letter or digit), so the
# pattern starts with \d and re skips to the digits instead of trying the whole pattern at every
# character: masking is most of what a log line costs.
_DIGIT_RUN = re.compile(r"\d(?<![^\W_]\d)(?:[ ().-]{0,2}\d){6,}(?![^\W_])")
# Every North American number written as above holds a digit, a separator and four digits: a text
# without them is not searched with _NANP (whose lookbehind is tried at every character).
_NANP_HINT = re.compile(r"\d[ .-]\d{4}")

_ANY_DIGIT = re.compile(r"\d")

_region = "US"


def set_region(region: str) -> None:
    """The region numbers written without a country code belong to (DEFAULT_REGION)."""
    global _region
    _region = region


def mask_text(text: str) -> str:
    """`text` with every phone number in it masked ('+1415***0147')."""
    if not text or not _ANY_DIGIT.search(text):
        return text
    text = _E164.sub(lambda match: match.group(1) + mask("+" + match.group(2))[1:], text)
    if _NANP_HINT.search(text):
        text = _NANP.sub(lambda m: mask(f"+1{m.group(1) or m.group(2)}{m.group(3)}{m.group(4)}"), text)
    if not _DIGIT_RUN.search(text):
        return text
    # Anything else phonenumbers finds valid in the default region: bare national numbers
    # (4155550147), other countries' formats. Only valid numbers: ids, timestamps (1733412345),
    # ports and durations are not.
    found = list(PhoneNumberMatcher(text, _region, leniency=Leniency.VALID))
    for match in reversed(found):
        e164 = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        text = text[:match.start] + mask(e164) + text[match.end:]
    return text


def mask_record(record: logging.LogRecord) -> logging.LogRecord:
    """Render the message, traceback and stack of `record` once, mask them, and store them back."""
    if getattr(record, _MASKED, None) is record.msg and not record.args and not record.exc_info:
        return record  # masked already (a record rebuilt by makeLogRecord has another msg: done again)
    try:
        message = record.getMessage()
    except Exception:  # arguments that do not fit the format: keep both, as text, masked
        message = f"{record.msg!r} % {record.args!r}"
    record.msg, record.args = mask_text(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = mask_text(record.exc_text)
    # The traceback now lives as masked text only: no formatter can render the exception again.
    record.exc_info = None
    if record.stack_info:
        record.stack_info = mask_text(record.stack_info)
    setattr(record, _MASKED, record.msg)
    return record


_FORMATTER = logging.Formatter()


class MaskNumbers(logging.Filter):
    """Masks every phone number in a record: message, traceback and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


def mask_handlers(logger: logging.Logger) -> None:
    """Put the mask on every handler of `logger` that lacks it (Celery's worker installs its own)."""
    for handler in logger.handlers:
        if not any(isinstance(existing, MaskNumbers) for existing in handler.filters):
            handler.addFilter(MaskNumbers())


def install() -> None:
    """Mask every log record this process creates, before any handler sees it (once per process)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _MASKED, False):
        return

    def masked_record(*args, **kwargs) -> logging.LogRecord:
        return mask_record(previous(*args, **kwargs))

    setattr(masked_record, _MASKED, True)
    logging.setLogRecordFactory(masked_record)


_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The twilio client logs every request and response at INFO (URLs, form fields): only when debugging.
_CHATTY = ("twilio.http_client",)


def formatter(log_format: str) -> logging.Formatter:
    """LOG_FORMAT's formatter: `text`, one line per record, or `json`, one JSON object per line with
    the event fields of `event` as keys of their own."""
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                             rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return logging.Formatter(_TEXT)


def configure(level: str, region: str = "US", log_format: str = "text") -> None:
    set_region(region)
    install()
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if getattr(handler, "_smsgate", False)]
    if ours:
        for handler in ours:
            handler.setFormatter(formatter(log_format))
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler._smsgate = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter(log_format))
    handler.addFilter(MaskNumbers())
    root.addHandler(handler)
    root.setLevel(level)


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: object) -> None:
    """One INFO line for a compliance-relevant event (an opt-out, a carrier opt-out, a blocked send, a
    journaled text): `event=NAME key=value ...`, and with LOG_FORMAT=json the same fields as keys.
    A field named `number` is masked here; the rest are ids and reasons."""
    shown = {key: (mask(str(value)) if key == "number" else value) for key, value in fields.items()
             if value is not None}
    logger.log(level, "event=%s %s", name, " ".join(f"{key}={value}" for key, value in shown.items()),
               extra={"event": name, **shown})
