"""The one table of Twilio's error codes: what each means for us, on a refused send and in a callback."""

import pytest

from gateway.domain.outbound import ErrorKind, Reachability
from gateway.twilio.errors import ERROR_KINDS, error_kind


def test_every_error_kind_has_a_code_in_the_table():
    assert set(ERROR_KINDS.values()) == set(ErrorKind)


@pytest.mark.parametrize(("code", "kind", "reachability", "reason"), [
    (21610, ErrorKind.OPTED_OUT, None, "opted_out"),
    (21211, ErrorKind.INVALID_NUMBER, Reachability.UNREACHABLE, "invalid_number"),
    (30003, ErrorKind.UNREACHABLE, Reachability.UNREACHABLE, "unreachable"),
    (30005, ErrorKind.UNREACHABLE, Reachability.UNREACHABLE, "unreachable"),
    (21614, ErrorKind.NOT_MOBILE, Reachability.LANDLINE, "landline"),
    (21635, ErrorKind.NOT_MOBILE, Reachability.LANDLINE, "landline"),
    (30006, ErrorKind.NOT_MOBILE, Reachability.LANDLINE, "landline"),
    (21407, ErrorKind.PERMANENT, None, None),  # this message refused: nothing learnt about the number
    (20429, ErrorKind.RETRYABLE, None, None),
    (30001, ErrorKind.RETRYABLE, None, None),
    (30008, ErrorKind.PERMANENT, None, None),  # not in the table
])
def test_what_a_code_means_and_teaches_about_the_number(code, kind, reachability, reason):
    assert error_kind(code) is kind
    assert (kind.reachability, kind.reason) == (reachability, reason)


@pytest.mark.parametrize(("code", "http_status", "kind"), [
    (None, 500, ErrorKind.RETRYABLE), (None, 503, ErrorKind.RETRYABLE), (None, 429, ErrorKind.RETRYABLE),
    (None, 404, ErrorKind.PERMANENT), (None, None, ErrorKind.PERMANENT),
    (21610, 500, ErrorKind.OPTED_OUT),  # the code wins over the HTTP status
    (99999, 502, ErrorKind.RETRYABLE),
])
def test_without_a_known_code_the_http_status_decides(code, http_status, kind):
    assert error_kind(code, http_status) is kind
