"""Prometheus metrics. Under gunicorn, PROMETHEUS_MULTIPROC_DIR makes every worker's counts add up."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway import worker_metrics

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
# The inbound journal (gateway/services/inbound_journal.py): one per host, so under gunicorn the most
# recent count any worker took is the host's.
INBOUND_JOURNAL_LENGTH = Gauge("smsgate_inbound_journal_length", "Inbound texts waiting in the journal for the store",
                               multiprocess_mode="mostrecent")
INBOUND_JOURNALED = Counter("smsgate_inbound_journaled_total", "Inbound texts journaled: the store could not take them")
INBOUND_REPLAYED = Counter("smsgate_inbound_replayed_total", "Journaled texts applied to the store (or found there)")
INBOUND_HELD = Counter("smsgate_inbound_held_total", "Journaled texts (or torn lines) held: they could not be applied",
                       ["reason"])

# Inbound reconciliation from Twilio's message log (gateway/services/inbound_reconcile.py). The watermark
# is a time, not an age: `time() - smsgate_inbound_reconciled_through_timestamp_seconds` keeps growing
# when runs stop, where an age recorded by the last run would stand still.
INBOUND_RECONCILED = Counter("smsgate_inbound_reconciled_total",
                             "Inbound texts found in the provider's message log, not in the store, and applied")
INBOUND_RECONCILED_THROUGH = Gauge("smsgate_inbound_reconciled_through_timestamp_seconds",
                                   "The oldest sender's reconciliation watermark (Unix time): texts sent before it "
                                   "were looked for", multiprocess_mode="mostrecent")


def render(var_dir: Path | None = None) -> tuple[bytes, str]:
    """The exposition text for /metrics: under gunicorn, its workers' counts and the worker's
    (gateway/worker_metrics.py) added up; otherwise this process's own."""
    web_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if web_dir:
        registry = CollectorRegistry()
        registry.register(_CountFiles([Path(web_dir)] + ([worker_metrics.counts_dir(var_dir)] if var_dir else [])))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class _CountFiles:
    """prometheus-client's multiprocess collector over the files of several directories."""

    def __init__(self, directories: list[Path]):
        self.directories = directories

    def collect(self):
        files = [str(path) for directory in self.directories for path in sorted(directory.glob("*.db"))]
        return multiprocess.MultiProcessCollector.merge(files, accumulate=True)
