"""The suppression list's digests: a number kept only as a keyed SHA-256 (HMAC, RFC 2104) once erased.

Keyed, so a leaked list cannot be reversed by hashing every possible number. Pure: the key comes
from the settings (SUPPRESSION_KEY), the numbers from the caller.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable


@functools.lru_cache(maxsize=4)  # one key in use (two while it is rotated): its pads hashed once per process
def digester(key: bytes) -> Callable[[str], str]:
    """HMAC-SHA256 of an E.164 number under `key`, as hex. The key's inner and outer pads are hashed
    once here, not once per number: half the cost for the many numbers of a batch or an import."""
    block = hashlib.sha256().block_size
    padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def digest(e164: str) -> str:
        first, second = inner.copy(), outer.copy()
        first.update(e164.encode())
        second.update(first.digest())
        return second.hexdigest()

    return digest
