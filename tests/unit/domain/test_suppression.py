"""The suppression digest is HMAC-SHA256 of the number under the key, whatever the key's length."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from gateway.domain import suppression


@pytest.mark.parametrize("key", [b"", b"short", b"k" * 64, b"longer than a SHA-256 block " * 4])
def test_the_digest_is_rfc_2104_hmac_sha256_of_the_number(key):
    digest = suppression.digester(key)
    for e164 in ("+14155550101", "+447700900123", "+8613800138000"):
        assert digest(e164) == hmac.new(key, e164.encode(), hashlib.sha256).hexdigest()


def test_one_digester_gives_each_number_its_own_digest():
    digest = suppression.digester(b"test-suppression-key")
    assert digest("+14155550101") != digest("+14155550102")
    assert digest("+14155550101") == digest("+14155550101")  # its pads are copied, never consumed
