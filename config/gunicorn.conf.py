"""gunicorn settings for the web process (Procfile)."""

import os
import shutil
from pathlib import Path

from gateway import logs, run_lock
from gateway.config import load_settings

# WEB_HOST and PORT from the same settings every process reads (a bad value stops start-up here,
# naming it): loopback unless WEB_HOST says otherwise; PORT is what Procfile hosts hand the web process.
_settings = load_settings()
_host = f"[{_settings.web_host}]" if ":" in _settings.web_host else _settings.web_host  # an IPv6 address
bind = f"{_host}:{_settings.port}"
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
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_settings.var_dir / "prometheus")))


_run_lock = None  # VAR_DIR's web lock, held (shared) by the master for its life: gateway/run_lock.py


def on_starting(server):
    # Nothing is cleared before these checks: a second start beside a running one used to empty the
    # first's metrics directory and only then fail on the busy port. A busy port refuses (naming it and
    # the running pid); a master joining others on this VAR_DIR (another port) leaves their metrics be.
    global _run_lock
    if server.master_pid:  # a USR2 re-exec: the old master's listeners and metrics carry on
        return
    run_lock.check_port(_settings.web_host, _settings.port, _settings.var_dir)
    _run_lock, first = run_lock.join(_settings.var_dir)
    if first:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
        _metrics_dir.mkdir(parents=True, exist_ok=True)
        run_lock.share(_run_lock)
    else:
        _metrics_dir.mkdir(parents=True, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # Imported here, in the worker whose app loaded it already, so the master stays light.
    from gateway import bootstrap

    bootstrap.freeze_loaded_heap()  # the app is built (load_wsgi ran before this hook)
