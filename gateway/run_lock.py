"""Starting the web process beside a running one: refuse a busy port, and never clear what others use.

The web master clears its metrics directory (VAR_DIR/prometheus) when it starts. Done by a second
`make run` beside a running one, that emptied the running gateway's /metrics for good, and only then
did the second one fail on the busy port. Now, before anything is cleared:

- the port is checked: a start on a busy port refuses, naming the port and the pid of the web process
  running with this VAR_DIR (when there is one);
- VAR_DIR/web.lock says whether other web processes run with this VAR_DIR. Every master holds it
  shared for its life; the one that finds nobody else (it gets the lock exclusively for a moment)
  is the only one that clears the metrics directory. A second master on another port (`honcho start
  -c web=2`, two Procfile web processes on one host) joins: its workers count into the same directory
  and either /metrics shows the host's totals. The kernel drops a dead holder's lock however it died,
  so a leftover file never blocks or misleads a start.

`make run` asks first (`python -m gateway.banner --check`) and refuses any second start on the same
VAR_DIR: the playground runs one gateway, so neither a migration nor a second worker and beat start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "web.lock"


class AlreadyRunning(RuntimeError):
    """The port is busy, or (for `make run`) a gateway already runs with this VAR_DIR; the message says
    which, and the pid. A RuntimeError, which gunicorn prints as "Error: …" before exiting 1."""


def _recorded_pid(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(path.read_text().strip())}"
    return "pid unknown"


def holder(var_dir: Path) -> str | None:
    """"pid N" of the web process running with VAR_DIR (the first that started), or None. Takes nothing."""
    path = var_dir / LOCK_NAME
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _recorded_pid(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def check_port(host: str, port: int, var_dir: Path) -> None:
    """Raise AlreadyRunning when something listens on host:port (bound as gunicorn binds, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            running = holder(var_dir)
            who = (f"by the gateway web process running with VAR_DIR {var_dir} ({running})" if running
                   else "by another process (not a gateway with this VAR_DIR)")
            raise AlreadyRunning(f"port {port} on {host} is already in use {who}; stop it or set PORT: "
                                 "nothing of it was touched") from None


def join(var_dir: Path):
    """Hold VAR_DIR's web lock (shared) for this process's life; return (open file, first).

    `first` is True when no other web process holds it: only then may shared state (the metrics
    directory) be cleared. Keep a reference to the file: closing it lets the lock go.
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(handle, fcntl.LOCK_SH)  # waits only while a first starter holds it exclusively
        return handle, False
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle, True


def share(handle) -> None:
    """After the first starter cleared what it had to: let others join."""
    fcntl.flock(handle, fcntl.LOCK_SH)


def preflight(var_dir: Path, host: str, port: int) -> None:
    """`make run`'s check before it starts anything: no gateway with this VAR_DIR, and the port free."""
    running = holder(var_dir)
    if running:
        raise AlreadyRunning(f"a gateway web process ({running}) is already running with VAR_DIR {var_dir} "
                             f"(this start wanted port {port}); stop it first: nothing of it was touched")
    check_port(host, port, var_dir)
