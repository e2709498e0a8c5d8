"""Inbound reconciliation: texts Twilio received whose webhook never reached us, found in its message
log and applied as the webhook would have applied them.

Twilio sends an inbound text's webhook once. When it never arrives (our web process down, a deploy, a
network fault, a wrong webhook URL), nothing else tells us of the text; but Twilio keeps every inbound
message in its log, which its Messages API lists. So every INBOUND_RECONCILE_SECONDS, for each of our
senders (a program's number, or its Messaging Service), `reconcile` lists the inbound texts sent since
the sender's watermark less an overlap, and applies, oldest first, each MessageSid the store does not
hold, through the same `inbound.handle` as the webhook: keywords, consent moves, ledger events with
Twilio's date_sent as their time and `origin: reconciled` in the evidence. No reply goes out late, for
the journal's reasons (docs/decisions/0013-inbound-journal.md); a join keyword's confirmation is an
outbound message like any other and still goes through the gate.

A consent text that a later change of the same consents overtook (a START whose webhook was lost,
followed by a STOP that reached us) is stored as known but not applied: see `_record_if_overtaken`.

Texts younger than SETTLE are left for the next run: their webhook may be on its way, and applying
one first would leave the person without the reply the webhook gives. The overlap re-reads the last
minutes of each sender's log every run, so a text Twilio indexed late, or a clock that disagrees with
Twilio's, is still seen; what is re-read and already stored costs one look-up. A sender's watermark
moves only when every text before it was applied or refused for good: after a store failure it stays,
and the next run reads the same span again. See docs/decisions/0014-inbound-reconcile.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from gateway import metrics
from gateway.domain import storable
from gateway.domain.keywords import Intent
from gateway.domain.message_log import LoggedText
from gateway.domain.numbers import mask
from gateway.domain.outbound import ProviderError
from gateway.services import inbound
from gateway.services.ports import Gateway, Provider
from gateway.store import programs, reconciliation
from gateway.store.models import utcnow
from gateway.store.reconciliation import Sender

log = logging.getLogger(__name__)

ORIGIN = "reconciled"
# How far back before the watermark each run reads again: texts Twilio lists late, clocks that differ.
OVERLAP = timedelta(minutes=10)
# A sender never read before is read this far back, not from the beginning of its log.
FIRST_LOOK_BACK = timedelta(hours=24)
# A text younger than this may still have its webhook in flight: the next run takes it.
SETTLE = timedelta(seconds=30)


@dataclass
class Reconciled:
    """One run's counts, over every sender."""

    listed: int = 0  # inbound texts the log holds in the spans read
    applied: int = 0  # not in the store: applied now
    stored: int = 0  # in the store already (their webhook came, or an earlier run applied them)
    young: int = 0  # younger than SETTLE: left for the next run
    refused: int = 0  # not a text we can apply (From is no phone number): counted, never applied
    overtaken: int = 0  # a later word of the person's decided already: stored, not applied
    failed: list[str] = field(default_factory=list)  # senders whose run stopped (provider or store): retried next run


def reconcile(gateway: Gateway, message_log: Provider | None = None, *, now: datetime | None = None) -> Reconciled:
    """Read every sender's message log since its watermark and apply what the store lacks (through
    the gateway's provider, or `message_log`: anything with its `inbound_messages`)."""
    message_log = message_log or gateway.provider
    now = now or utcnow()
    with gateway.db.statements() as connection:
        senders = reconciliation.senders(connection)
        marks = reconciliation.watermarks(connection, [sender.key for sender in senders])
    counts = Reconciled()
    for sender in senders:
        try:
            _reconcile_sender(gateway, message_log, sender, marks.get(sender.key), now, counts)
        except ProviderError as error:
            log.warning("inbound reconciliation of %s: the provider did not answer (%s); next run", sender.key, error)
            counts.failed.append(sender.key)
        except Exception:
            # A store fault, or a bug: the watermark stays, so the next run reads the same span again.
            log.exception("inbound reconciliation of %s stopped; next run", sender.key)
            counts.failed.append(sender.key)
    if counts.applied or counts.refused or counts.overtaken or counts.failed:
        log.info("inbound reconciliation: %d applied, %d already stored, %d overtaken, %d left for the next run, "
                 "%d refused, failed: %s", counts.applied, counts.stored, counts.overtaken, counts.young,
                 counts.refused, counts.failed or "none")
    return counts


def _reconcile_sender(gateway: Gateway, message_log: Provider, sender: Sender, watermark: datetime | None,
                      now: datetime, counts: Reconciled) -> None:
    since = watermark - OVERLAP if watermark else now - FIRST_LOOK_BACK
    settled = now - SETTLE
    logged = _listed(message_log, sender, since)
    counts.listed += len(logged)
    ready = [text for text in logged if text.date_sent <= settled]
    counts.young += len(logged) - len(ready)
    with gateway.db.statements() as connection:
        known = reconciliation.known_message_sids(connection, [text.sid for text in ready])
    counts.stored += len(known)
    for text in _oldest_first(t for t in ready if t.sid not in known):
        if _record_if_overtaken(gateway, text):
            counts.overtaken += 1
            continue
        try:
            handled = inbound.handle(gateway, _inbound_text(text), now=text.date_sent)
        except inbound.BadInbound as refused:
            # Not a text we could ever apply (a WhatsApp or short-code sender): the webhook refuses it too.
            log.warning("inbound reconciliation: %s from %s refused (%s)", text.sid, mask(text.from_), refused.code)
            counts.refused += 1
            continue
        if handled.duplicate:
            counts.stored += 1  # its webhook arrived meanwhile
        else:
            counts.applied += 1
            metrics.INBOUND_RECONCILED.inc()
            log.info("inbound reconciliation: %s from %s to %s applied (%s), sent at %s", text.sid,
                     mask(text.from_), text.to, handled.intent, text.date_sent.isoformat())
    with gateway.db.statements() as connection:
        reconciliation.advance(connection, sender.key, settled)


_OPT_OUTS = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER})
_OPT_INS = frozenset({Intent.OPT_IN, Intent.CONFIRM, Intent.JOIN})
_CONSENT_WORDS = frozenset(intent.value for intent in _OPT_OUTS | _OPT_INS)


def _record_if_overtaken(gateway: Gateway, text: LoggedText) -> bool:
    """Store, without applying it, a consent text that the person's later word overtook.

    Applied now, it would be the newest event of the number's ledger although it is not the person's
    latest word: a START whose webhook was lost, applied after a STOP that reached us later, would opt
    them back in against it. So a START, YES or join keyword yields to any later change of the
    sender's consents (a STOP, an opt-out by API or form). An opt-out yields only to a later consent
    word the person texted to the same sender (START, YES, a join keyword, another STOP), stored
    whether it changed anything or not (a START to a number our store still had opted in, its STOP
    lost, changes nothing): no import or API call, which may not come from them, undoes an opt-out
    that arrived late.
    """
    senders = (text.to,) + ((text.messaging_service_sid,) if text.messaging_service_sid else ())
    with gateway.db.statements() as connection:
        on_sender = programs.cached_on_senders(connection, senders)
        if not on_sender.programs:
            return False  # not ours: `inbound.handle` refuses it
        intent = gateway.keywords.classify(storable.without_unstorable(text.body), on_sender.join_keywords).intent
        if intent in _OPT_OUTS:
            to = None if intent in (Intent.OPT_OUT_ALL, Intent.WRONG_NUMBER) else senders
            moved = bool(reconciliation.intents_texted_after(connection, text.from_, to, text.date_sent)
                         & _CONSENT_WORDS)
        elif intent in _OPT_INS:
            moved = reconciliation.consent_moved_after(connection, text.from_, [p.id for p in on_sender.programs],
                                                       text.date_sent)
        else:
            return False
        if not moved:
            return False
        try:
            reconciliation.record_overtaken(
                connection, message_sid=text.sid, account_sid=text.account_sid, e164=text.from_, to=text.to,
                messaging_service_sid=text.messaging_service_sid, body=storable.storable_text(text.body),
                intent=intent.value, received_at=text.date_sent)
        except IntegrityError:
            return True  # its webhook arrived meanwhile and was applied as it came
    log.warning("inbound reconciliation: %s from %s (%s, sent at %s) not applied: the person's later word on "
                "that sender stands", text.sid, mask(text.from_), intent.value, text.date_sent.isoformat())
    return True


def _listed(message_log: Provider, sender: Sender, since: datetime) -> list[LoggedText]:
    if sender.numbers:
        listed = [text for number in sender.numbers for text in message_log.inbound_messages(to=number, since=since)]
        # A number of the service's: its texts are the service's even where the log does not say so.
        return [text if text.messaging_service_sid or not sender.messaging_service_sid
                else replace(text, messaging_service_sid=sender.messaging_service_sid) for text in listed]
    # A Messaging Service whose numbers we were not told: its texts are among the whole account's.
    return [text for text in message_log.inbound_messages(to=None, since=since)
            if text.messaging_service_sid == sender.messaging_service_sid]


def _oldest_first(texts: Iterable[LoggedText]) -> list[LoggedText]:
    # Twilio lists newest first; reversed, a stable sort keeps its order among texts of the same second.
    return sorted(reversed(list(texts)), key=lambda text: text.date_sent)


def _inbound_text(text: LoggedText) -> inbound.InboundText:
    """The text as the webhook would have read it (what the store cannot hold replaced, as there)."""
    body = storable.storable_text(text.body)
    return inbound.InboundText(
        message_sid=text.sid, from_=text.from_, to=text.to, body=body,
        messaging_service_sid=text.messaging_service_sid, account_sid=text.account_sid,
        body_as_sent=None if body is text.body else text.body, origin=ORIGIN,
    )


__all__ = ["FIRST_LOOK_BACK", "ORIGIN", "OVERLAP", "SETTLE", "Reconciled", "reconcile"]
