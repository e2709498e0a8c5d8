"""Where the worker's Prometheus counts go, so that the web's /metrics shows them too.

The sweeper's recoveries, the sends and the provider's timings are counted in the worker process,
which serves no HTTP. The worker writes its counts to files under VAR_DIR (prometheus-client's
multiprocess mode) and /metrics adds them to gunicorn's workers' counts, wherever the web and the
worker share VAR_DIR (one host: the Procfile under honcho or foreman, `make run`). The directory is
not gunicorn's, which gunicorn empties when it starts: restarting the web keeps the worker's counts.
A worker's files outlive it, so its counters keep their totals across restarts.

Imports no prometheus_client: the mode is chosen when that is first imported, so this runs before.
"""

from __future__ import annotations

import os
from pathlib import Path


def counts_dir(var_dir: Path) -> Path:
    return var_dir / "prometheus-worker"


def count_into_files(var_dir: Path) -> None:
    """Make this process (a worker) count into `counts_dir`; call before anything imports the metrics."""
    directory = counts_dir(var_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
