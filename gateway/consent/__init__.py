"""The consent core: state machine, ledger, and the service functions every adapter calls."""

from gateway.consent.machine import IllegalTransition, Input, Source, State, Status
from gateway.consent.service import Evidence

__all__ = ["Evidence", "IllegalTransition", "Input", "Source", "State", "Status"]
