"""The one send gate: may this text go out now, and if not, why.

Every path asks the same Gate: the API when it accepts a message, the worker right before the
provider call, the confirmation sender, the batch API. The Gate is built once from what the rules
need besides the facts (the suppression key, the quiet-hours rules) and composes the reads
(gateway/store/facts.py) with the pure rules (gateway/domain/gate.py), so every path applies the
same rules in the same order. If the store cannot be read, the error propagates: the gate fails closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from gateway.domain import gate as gate_rules
from gateway.domain.decisions import Recorder, Stage
from gateway.domain.gate import CAP_LOOKBACK, Decision, Facts, Kind, Reason
from gateway.domain.numbers import Number, parse
from gateway.domain.quiet_hours import QuietHours
from gateway.services.consents import suppression_digests
from gateway.store import bulk, facts
from gateway.store.database import Store
from gateway.store.facts import Known
from gateway.store.models import PhoneNumber, Program

if TYPE_CHECKING:
    from gateway.services.ports import Gateway

K = TypeVar("K")


@dataclass(frozen=True)
class Gate:
    """The send gate with what it is built from: the key of the suppression list and the quiet-hours rules."""

    suppression_key: bytes
    rules: QuietHours

    def facts_by_e164(self, store: Store, e164s: Sequence[str], program: Program, now: datetime, *,
                      count_recent: bool = True, exclude_message: str | None = None, events_of: str | None = None,
                      ) -> dict[str, tuple[Known | None, Facts]]:
        """Facts for E.164 numbers, ours or not yet (`Known` is None then), in one query. `events_of`:
        the consents whose ledger event to read, by status, for a caller that records no others."""
        digests = suppression_digests(self.suppression_key, list(e164s))
        return facts.by_e164(store, e164s, digests, program, now, count_recent=count_recent,
                             exclude_message=exclude_message, cap=program_cap(program, now), events_of=events_of)

    def facts(self, store: Store, numbers: Iterable[PhoneNumber], program: Program, now: datetime, *,
              count_recent: bool = True, exclude_message: str | None = None) -> dict[int, Facts]:
        """Facts for numbers of ours (rows with id and e164), by id: one query, whatever their number."""
        by_id = {n.id: n for n in numbers}
        by_e164 = {n.e164: n.id for n in by_id.values() if n.e164}
        found = self.facts_by_e164(store, list(by_e164), program, now, count_recent=count_recent,
                                   exclude_message=exclude_message)
        known = {by_e164[e164]: one for e164, (_, one) in found.items()}
        # An erased number is nothing but its suppression hash now.
        known.update({n.id: Facts(e164="", suppressed=True) for n in by_id.values() if not n.e164})
        return known

    def decide(self, facts: Facts, program: Program, kind: Kind, now: datetime, *,
               stage: Stage | None = None) -> Decision:
        """The rules' answer; with `stage`, carrying its record (Decision.record) for the message's history."""
        decision = gate_rules.decide(facts, program, kind, now, self.rules)
        return decision if stage is None else self.recorded(decision, facts, program, kind, now, stage)

    def recorded(self, decision: Decision, facts: Facts, program: Program, kind: Kind, now: datetime,
                 stage: Stage) -> Decision:
        """`decision` on `facts` carrying its record, as made at `stage` (for a caller that learns only
        after deciding whether a message will keep it)."""
        return replace(decision, record=Recorder(program, kind, now, self.rules, stage).record(facts, decision))

    def decide_many(self, facts: Mapping[K, Facts], program: Program, kind: Kind, now: datetime, *,
                    stage: Stage | None = None) -> dict[K, Decision]:
        """`decide` for many numbers at one moment (a batch: up to 100,000 facts and decisions). With
        `stage`, the decisions that store a message (allowed or deferred) carry their records."""
        with bulk.collector_paused():
            places = gate_rules.Places(self.rules, now)
            if stage is None:
                return gate_rules.decide_many(facts, program, kind, now, self.rules, places)
            recorder = Recorder(program, kind, now, self.rules, stage, places)
            decided = {}
            for key, one in facts.items():
                decision = gate_rules.decide(one, program, kind, now, self.rules, places)
                if decision.allowed or decision.deferred:
                    # Decision(...) rather than dataclasses.replace: a batch makes 100,000 of them.
                    decision = Decision(decision.allowed, decision.reason, decision.not_before, decision.rule,
                                        recorder.record(one, decision))
                decided[key] = decision
            return decided

    def may_send(self, store: Store, number: PhoneNumber, program: Program, kind: Kind, now: datetime, *,
                 message_id: str | None = None, stage: Stage | None = None) -> Decision:
        """May `program` text `number` now? `message_id`: the message asking, not counted against its own cap.
        `stage`: record the decision (Decision.record) as made there."""
        if not number.e164:
            # Erased: only its suppression hash is left, and the record knows nothing else of it.
            known = Facts(e164="", suppressed=True)
            decision = Decision(False, Reason.SUPPRESSED)
            return decision if stage is None else self.recorded(decision, known, program, kind, now, stage)
        known = self.facts(store, [number], program, now, count_recent=kind is Kind.MARKETING,
                           exclude_message=message_id)[number.id]
        return self.decide(known, program, kind, now, stage=stage)

    def may_send_to(self, store: Store, to: Number | str, program: Program, kind: Kind, now: datetime, *,
                    default_region: str = "US", stage: Stage | None = None) -> tuple[Known | None, Number, Decision]:
        """`may_send` for a number as a caller gave it, which we may not hold yet (then: no consent).

        `to` is a parsed Number, or E.164 text (numbers.is_e164): a number we hold was validated when
        its row was made, so its stored type and region stand and phonenumbers (dearer than the rest
        of the gate, bench/README.md) is asked only about a number new to us. Raises InvalidNumber as
        numbers.parse does.
        """
        e164 = to.e164 if isinstance(to, Number) else to
        known, found = self.facts_by_e164(store, [e164], program, now, count_recent=kind is Kind.MARKETING)[e164]
        if known is not None and found.region is not None:
            number = to if isinstance(to, Number) else Number(e164, known.kind, found.region)
        else:
            # New to us, or kept from an inbound text without a known region: as the caller gave it.
            number = to if isinstance(to, Number) else parse(to, default_region)
            if known is None:
                found = replace(found, region=number.region, kind=number.kind)
        return known, number, self.decide(found, program, kind, now, stage=stage)


def program_cap(program: Program, now: datetime) -> tuple[int, datetime] | None:
    """The program's cap as the store counts it: (max_messages, how far back to look), or None."""
    spec = program.settings.get("spec", {})
    if not spec.get("max_messages"):
        return None
    return spec["max_messages"], now - CAP_LOOKBACK[spec["per"]]


def gate_of(gateway: Gateway) -> Gate:
    """The Gateway's one Gate, built on first use (kept with the Gateway, as its other parts are)."""
    built = gateway.extras.get("gate")
    if built is None:
        built = gateway.extras["gate"] = Gate(gateway.settings.suppression_key, gateway.quiet_hours)
    return built
