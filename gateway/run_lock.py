"""One web process per VAR_DIR and port: a second start refuses before it touches the first one's files.

The web master clears its metrics directory (VAR_DIR/prometheus) when it starts. Done by a second
`make run` beside a running one, that emptied the running gateway's /metrics for good, and only then
did the second one fail on the busy port. So before anything is cleared the master takes an exclusive
lock on VAR_DIR/web.lock (held for its life; the kernel drops it when the process dies, however it
dies, so a stale file never blocks a start) and checks that its port is free. `make run` asks the same
questions first (`python -m gateway.banner --check`), so neither a second worker nor a migration starts.
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
    """Another web process holds this VAR_DIR or this port; the message says which and what to do."""


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(path.read_text().strip())}"
    return "another process"


def _busy(holder: str, var_dir: Path, port: int) -> AlreadyRunning:
    return AlreadyRunning(f"a gateway web process ({holder}) is already running with VAR_DIR {var_dir} (this start "
                          f"wanted port {port}); stop it first: nothing of it was touched")


def lock(var_dir: Path, port: int):
    """Take VAR_DIR's web lock for this process's life and return its open file (keep a reference).

    Raises AlreadyRunning naming the holder's pid when another process has it.
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise _busy(_holder(path), var_dir, port) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def held(var_dir: Path) -> str | None:
    """Who holds VAR_DIR's web lock ("pid N"), or None when nobody does. Takes nothing."""
    path = var_dir / LOCK_NAME
    if not path.exists():
        return None
    with path.open("r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def check_port(host: str, port: int) -> None:
    """Raise AlreadyRunning when something listens on host:port (bound as gunicorn binds, SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise AlreadyRunning(f"port {port} on {host} is already in use (a gateway started by another "
                                 "`make run`?); stop that process or set PORT") from None


def preflight(var_dir: Path, host: str, port: int) -> None:
    """What `make run` checks before it starts anything: the lock is free and so is the port."""
    holder = held(var_dir)
    if holder:
        raise _busy(holder, var_dir, port)
    check_port(host, port)
