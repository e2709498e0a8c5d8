"""Limits on confirmation texts, so the hosted form and the API cannot be used to pump SMS.

Each confirmation text costs money and lands on someone's phone, so a request that sends one takes a
slot on each limit that applies: the destination number (across programs), the client that asked
(its address, IPv6 grouped by network), the API key that asked, and the program. A slot is taken only
once the text is sure to go out; a refused or failed request takes none. The counters live in
gateway.queue.ratelimit (Redis when REDIS_URL is set), keyed by keyed hashes: the store of counters holds
no number and no address (docs/decisions/0010-anti-pumping-limits.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from gateway.services.ports import Limiter

SCOPES = ("number", "client", "key", "program")


@dataclass(frozen=True)
class ConfirmationLimits:
    """Rules in `limits` notation ("3 per 24 hours"); see config/settings.toml."""

    per_number: str
    per_client: str
    per_program: str
    per_key: str = "100 per hour"
    ipv6_prefix: int = 64  # IPv6 clients are counted by their network of this length

    @classmethod
    def from_settings(cls, settings) -> ConfirmationLimits:
        return cls(settings.confirmation_limit_per_number, settings.confirmation_limit_per_client,
                   settings.confirmation_limit_per_program, settings.confirmation_limit_per_key,
                   settings.confirmation_client_ipv6_prefix)


class RateLimited(Exception):
    """Too many confirmation texts; nothing was sent or recorded. `scope` says which limit."""

    def __init__(self, scope: str, retry_after: float):
        super().__init__(f"too many confirmation texts for this {scope}; try again in {int(retry_after) + 1} s")
        self.scope = scope
        self.retry_after = retry_after


def client_of(address: str, ipv6_prefix: int) -> str:
    """What the per-client limit counts for an address: an IPv4 address as it is (an IPv4-mapped IPv6
    address as its IPv4), an IPv6 address as its network, since one subscriber line gets a whole /64
    and can rotate through it at will."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address  # not an address (a test client, a unix socket): counted as written
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))
    return str(ip)


def pseudonym_key(suppression_key: bytes) -> bytes:
    """The key the counters' names are hashed under: derived, so the suppression key is never reused."""
    return hmac.new(suppression_key, b"rate-limit-keys", hashlib.sha256).digest()


def pseudonym(key: bytes, scope: str, value: str) -> str:
    """A counter's name for `value`: stable for the key's life, useless to whoever reads Redis."""
    return hmac.new(key, f"{scope}:{value}".encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class Guard:
    """The limits for one incoming request.

    `client` is the address that asked and `api_key` the key it used (None: not counted). `scopes`
    says which limits this guard takes: the hosted form takes the client and program slots for every
    submission, up front, and the number's slot only when a text goes out (`only`).
    """

    limiter: Limiter
    limits: ConfirmationLimits
    key: bytes  # pseudonym_key(SUPPRESSION_KEY)
    client: str | None = None
    api_key: str | None = None
    scopes: tuple[str, ...] = SCOPES

    @classmethod
    def for_request(cls, limiter: Limiter, settings, *, client: str | None = None,
                    api_key: str | None = None) -> Guard:
        return cls(limiter, ConfirmationLimits.from_settings(settings), pseudonym_key(settings.suppression_key),
                   client=client, api_key=api_key)

    def only(self, *scopes: str) -> Guard:
        """This guard, taking only the slots of `scopes`."""
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown limit scope(s): {sorted(unknown)}")
        return dataclasses.replace(self, scopes=tuple(scopes))

    def _checks(self, number: str | None, program: str) -> list[tuple[str, str, tuple[str, ...]]]:
        checks = []
        if "number" in self.scopes and number:
            checks.append(("number", self.limits.per_number,
                           ("confirm", "number", pseudonym(self.key, "number", number))))
        if "client" in self.scopes and self.client:
            client = client_of(self.client, self.limits.ipv6_prefix)
            checks.append(("client", self.limits.per_client,
                           ("confirm", "client", pseudonym(self.key, "client", client))))
        if "key" in self.scopes and self.api_key:
            checks.append(("key", self.limits.per_key, ("confirm", "key", pseudonym(self.key, "key", self.api_key))))
        if "program" in self.scopes:
            checks.append(("program", self.limits.per_program, ("confirm", "program", program)))
        return checks

    def take(self, *, number: str | None, program: str) -> None:
        """Take one slot on every limit of this guard, or raise RateLimited having taken none."""
        checks = self._checks(number, program)
        # Test all before taking any: an attacker who exhausted their own address must not also
        # use up the victim number's slots (which would lock its owner out of subscribing).
        for scope, rule, keys in checks:
            if not self.limiter.test(rule, *keys):
                # A hit on a full window takes nothing and tells how long until a slot frees.
                raise RateLimited(scope, self.limiter.hit(rule, *keys).retry_after)
        for scope, rule, keys in checks:
            verdict = self.limiter.hit(rule, *keys)
            if not verdict.allowed:  # lost a race for the last slot
                raise RateLimited(scope, verdict.retry_after)
