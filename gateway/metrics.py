"""Prometheus metrics. Each process counts its own: the web's /metrics (under gunicorn,
PROMETHEUS_MULTIPROC_DIR adds its workers' counts up) and the worker's own endpoint
(WORKER_METRICS_PORT, started by worker/__init__.py). The web's /metrics also carries gauges read from
the store at scrape time (`HealthGauges`): the backlog, the worker's heartbeat, the journal."""

from __future__ import annotations

import math
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

HTTP_RESPONSES = Counter("smsgate_http_responses_total", "HTTP answers of the web process, by route and status",
                         ["endpoint", "status"])
WEBHOOK_REJECTED = Counter("smsgate_webhook_rejected_total", "Webhooks refused for a bad or missing signature",
                           ["path"])
INBOUND = Counter("smsgate_inbound_messages_total", "Inbound texts by intent", ["intent"])
CONSENT_EVENTS = Counter("smsgate_consent_events_total", "Ledger events by type and source", ["type", "source"])
MESSAGES_ACCEPTED = Counter("smsgate_messages_accepted_total", "Outbound messages accepted", ["kind"])
MESSAGES_REFUSED = Counter("smsgate_messages_refused_total", "Outbound messages refused or blocked, by reason",
                           ["reason", "stage"])
MESSAGES_SENT = Counter("smsgate_messages_sent_total", "Messages handed to the provider", ["kind"])
DELIVERY_STATUS = Counter("smsgate_delivery_status_total", "Status callbacks by status", ["status"])
SUBSCRIPTION_REQUESTS = Counter("smsgate_subscription_requests_total",
                                "Double opt-in requests from the form and the API, by outcome", ["source", "outcome"])
CARRIER_OPT_OUTS = Counter("smsgate_carrier_opt_outs_total", "21610 opt-outs learnt from Twilio")
# The outbox sweeper (gateway/services/sending.py), in the worker running beat: what it recovered.
MESSAGES_RECOVERED = Counter(
    "smsgate_messages_recovered_total",
    "Messages whose task died, recovered by the sweeper: lost_task (queued, enqueued again), claim_sent "
    "(a dead worker's claim the provider had: recorded, not resent), claim_requeued (one it never saw)",
    ["how"])
for _how in ("lost_task", "claim_sent", "claim_requeued"):
    MESSAGES_RECOVERED.labels(how=_how)  # shown at 0 from the start: a recovery is a change to see
STALE_CLAIMS_UNRESOLVED = Counter("smsgate_stale_claims_unresolved_total",
                                  "Dead workers' claims left for the next sweep: the provider could not be asked")
PROVIDER_LATENCY = Histogram("smsgate_provider_seconds", "Time spent in provider calls")
# Carrier look-ups (gateway/services/lookups.py, deactivations.py): each costs money at Twilio.
LOOKUP_LATENCY = Histogram("smsgate_lookup_seconds", "Time spent in carrier look-ups (Twilio Lookup)")
LOOKUPS = Counter("smsgate_lookups_total", "Carrier look-ups before a send, by what they decided", ["result"])
DEACTIVATED_NUMBERS = Counter("smsgate_deactivated_numbers_total",
                              "Numbers of ours on the carriers' Deactivations list, by verdict", ["verdict"])
# The inbound journal (gateway/services/inbound_journal.py); its length is a gauge of HealthGauges.
INBOUND_JOURNALED = Counter("smsgate_inbound_journaled_total", "Inbound texts journaled: the store could not take them")
INBOUND_REPLAYED = Counter("smsgate_inbound_replayed_total", "Journaled texts applied to the store (or found there)")
INBOUND_HELD = Counter("smsgate_inbound_held_total", "Journaled texts (or torn lines) held: they could not be applied",
                       ["reason"])

# Inbound reconciliation from Twilio's message log (gateway/services/inbound_reconcile.py); how far
# behind its watermark is, is a gauge of HealthGauges.
INBOUND_RECONCILED = Counter("smsgate_inbound_reconciled_total",
                             "Inbound texts found in the provider's message log, not in the store, and applied")
HEARTBEATS = Counter("smsgate_worker_heartbeats_total", "Heartbeats this worker wrote")


def render(*collectors) -> tuple[bytes, str]:
    """The exposition text for /metrics: this process's counts (under gunicorn, all its workers'),
    and what `collectors` read at scrape time."""
    registry = CollectorRegistry()
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry.register(multiprocess.MultiProcessCollector(None, directory) if directory
                      else _ThisProcess())
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _ThisProcess:
    """The default registry's metrics, inside a registry of the scrape's own."""

    def collect(self):
        yield from REGISTRY.collect()


class HealthGauges:
    """Gauges read when /metrics is scraped, from `read()` (gateway/services/operations.py Health):
    ages keep growing while nothing happens, which a value set by the work itself cannot do."""

    def __init__(self, read, settings):
        self.read, self.settings = read, settings

    def collect(self):
        # The thresholds `smsgate status` judges by, so that alert rules compare with the same numbers
        # (config/prometheus/alerts.yml) instead of copies of them.
        settings = self.settings
        for name, help_text, value in (
                ("smsgate_worker_stale_threshold_seconds", "WORKER_STALE_SECONDS", settings.worker_stale_seconds),
                ("smsgate_outbox_backlog_max_seconds", "OUTBOX_BACKLOG_MAX_SECONDS",
                 settings.outbox_backlog_max_seconds),
                ("smsgate_ledger_checkpoint_interval_seconds", "LEDGER_CHECKPOINT_SECONDS",
                 settings.ledger_checkpoint_seconds)):
            yield GaugeMetricFamily(name, f"The setting {help_text}", value=value)
        health = self.read()
        store_up = health.store_error is None
        yield GaugeMetricFamily("smsgate_store_up", "1 when the store answered this scrape's reads",
                                value=int(store_up))
        yield GaugeMetricFamily("smsgate_inbound_journal_length", "Inbound texts waiting in the journal for the store",
                                value=health.journal_length)
        if health.last_checkpoint is not None:
            yield GaugeMetricFamily("smsgate_ledger_checkpoint_age_seconds", "Age of the newest ledger checkpoint",
                                    value=health.age(health.last_checkpoint))
        if not store_up:
            return
        backlog = GaugeMetricFamily("smsgate_outbox_messages",
                                    "Messages not yet with the provider, by status", labels=["status"])
        for status, count in health.backlog.by_status.items():
            backlog.add_metric([status], count)
        yield backlog
        yield GaugeMetricFamily("smsgate_outbox_oldest_queued_seconds",
                                "How long the oldest queued message has waited for a worker (0: none waits)",
                                value=health.oldest_queued_age or 0.0)
        yield GaugeMetricFamily("smsgate_outbox_deferred_due", "Deferred messages whose time has come",
                                value=health.backlog.deferred_due)
        yield GaugeMetricFamily("smsgate_pending_confirmations", "Double opt-in requests waiting for YES",
                                value=health.pending_requests)
        age = health.heartbeat_age
        yield GaugeMetricFamily("smsgate_worker_heartbeat_age_seconds",
                                "Seconds since a worker last wrote its heartbeat (+Inf: never)",
                                value=math.inf if age is None else age)
        if health.watermark is not None:
            yield GaugeMetricFamily("smsgate_inbound_reconcile_watermark_age_seconds",
                                    "How far behind inbound reconciliation's furthest-behind sender is",
                                    value=health.age(health.watermark))
