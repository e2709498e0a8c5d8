"""gunicorn settings for the web process (Procfile)."""

import os
import shutil
from pathlib import Path

from gateway import logs

bind = f"127.0.0.1:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
worker_class = "sync"
# Twilio waits 15 s for a webhook answer; answer well inside it or not at all.
timeout = 10
graceful_timeout = 10
accesslog = None  # the access log would print full numbers from query strings; we log masked ourselves
# Mask numbers in every record this server logs, its error log included ("Error handling request
# /v1/consents/+1415…" and the traceback under it): set in the master, inherited by each worker.
logs.install()

# Metrics from every worker process add up in one directory (prometheus-client multiprocess mode).
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(Path("var/prometheus").resolve())))


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    _metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
