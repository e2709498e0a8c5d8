"""Twilio's error codes, once: what each means for us, on a refused send and in a status callback alike.

A code reaches us two ways, in the REST answer to a send and as ErrorCode in a status callback, and
means the same thing on both; the kind carries what the code teaches about the number (see
ErrorKind.reachability). Twilio's own meanings, in our words:

- 21610: the recipient texted STOP (or another opt-out word) to this sender or Messaging Service;
  Twilio refuses every send to them from it until they text START. A consent fact: an opt-out.
- 21211, 21217, 21401, 21421: the To number is malformed or cannot exist.
- 21614: To is not a mobile number (a landline or a line that cannot take SMS), found by Twilio's
  carrier lookup before sending. 21635 is the newer, more specific code for a landline, and 30006
  the callback's "landline or unreachable carrier": don't retry. All three: a landline, on every path.
- 30003: the destination handset is unreachable (off, no signal, roaming); often transient, so it
  marks the number unreachable, which a text from that handset undoes, and never a landline.
- 30005: the destination handset is unknown, inactive or out of service: unreachable as well.
- 21407: this kind of number is not supported for this account, e.g. not a permitted recipient for the
  account's region: a refusal of this message, not a fact about the recipient (it marks nothing).
- 20429, 20500, 20503, 30001 (queue overflow), 30450 (a temporary SMS-pumping block), 63018 (the
  channel's rate limit): Twilio's side, or too fast; try again later.

Codes not listed are permanent for this message, unless the HTTP status says the fault was Twilio's
(5xx) or a rate limit (429).
"""

from __future__ import annotations

from gateway.domain.outbound import ErrorKind

ERROR_KINDS: dict[int, ErrorKind] = {
    20429: ErrorKind.RETRYABLE,  # too many requests
    20500: ErrorKind.RETRYABLE,  # internal server error
    20503: ErrorKind.RETRYABLE,  # service unavailable
    30001: ErrorKind.RETRYABLE,  # queue overflow
    30450: ErrorKind.RETRYABLE,  # temporary SMS-pumping block
    63018: ErrorKind.RETRYABLE,  # rate limit exceeded for the channel
    21610: ErrorKind.OPTED_OUT,  # the recipient replied STOP to this sender
    21211: ErrorKind.INVALID_NUMBER,  # invalid To
    21217: ErrorKind.INVALID_NUMBER,  # phone number does not appear to be valid
    21401: ErrorKind.INVALID_NUMBER,  # invalid phone number
    21421: ErrorKind.INVALID_NUMBER,  # invalid phone number
    30003: ErrorKind.UNREACHABLE,  # unreachable destination handset
    30005: ErrorKind.UNREACHABLE,  # unknown destination handset
    21614: ErrorKind.NOT_MOBILE,  # not a mobile number
    21635: ErrorKind.NOT_MOBILE,  # landline
    30006: ErrorKind.NOT_MOBILE,  # landline or unreachable carrier
    21407: ErrorKind.PERMANENT,  # number type not supported for this account: this message only
}


def error_kind(code: int | None, http_status: int | None = None) -> ErrorKind:
    """What Twilio's `code` means for us; without a known code, what the HTTP status says."""
    kind = ERROR_KINDS.get(code or 0)
    if kind is not None:
        return kind
    return ErrorKind.RETRYABLE if http_status is not None and (http_status >= 500 or http_status == 429) \
        else ErrorKind.PERMANENT
