"""Limits on confirmation texts, so the hosted form and the API cannot be used to pump SMS.

Each confirmation text costs money and lands on someone's phone, so a request that would send one
takes a slot on three limits: the destination number (across programs), the client address that
asked, and the program. The counters live in gateway.ratelimit (Redis when REDIS_URL is set).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.ratelimit import Limiter


@dataclass(frozen=True)
class ConfirmationLimits:
    """Rules in `limits` notation ("3 per 24 hours"); see config/settings.toml."""

    per_number: str
    per_client: str
    per_program: str

    @classmethod
    def from_settings(cls, settings) -> ConfirmationLimits:
        return cls(settings.confirmation_limit_per_number, settings.confirmation_limit_per_client,
                   settings.confirmation_limit_per_program)


class RateLimited(Exception):
    """Too many confirmation texts; nothing was sent or recorded. `scope` says which limit."""

    def __init__(self, scope: str, retry_after: float):
        super().__init__(f"too many confirmation texts for this {scope}; try again in {int(retry_after) + 1} s")
        self.scope = scope
        self.retry_after = retry_after


@dataclass(frozen=True)
class Guard:
    """The limits for one incoming request; `client` is the address that asked (None: not counted)."""

    limiter: Limiter
    limits: ConfirmationLimits
    client: str | None = None

    def take(self, *, number: str, program: str) -> None:
        """Take one slot on every limit, or raise RateLimited having taken none."""
        checks = [("number", self.limits.per_number, ("confirm", "number", number))]
        if self.client:
            checks.append(("client", self.limits.per_client, ("confirm", "client", self.client)))
        checks.append(("program", self.limits.per_program, ("confirm", "program", program)))
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
