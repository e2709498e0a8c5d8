"""Shared fixtures: a migrated store (PostgreSQL when TEST_DATABASE_URL/DATABASE_URL point to one,
else SQLite), a live HTTP server, a real Celery worker process, API keys and signed Twilio requests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from twilio.request_validator import RequestValidator
from werkzeug.serving import make_server

from gateway.config import ROOT, SANDBOX_ACCOUNT_SID, SANDBOX_AUTH_TOKEN, load_settings
from gateway.domain.programs import load_file
from gateway.services import keys
from gateway.store import programs
from gateway.store.models import Base
from gateway.web.app import create_app
from tests.outbound_support import captured_queue  # noqa: F401  (a fixture, used by the autouse below)

# The session runs on the built-in sandbox, so with its published account and token (the only ones
# allowed while SANDBOX is on).
ACCOUNT_SID = SANDBOX_ACCOUNT_SID
AUTH_TOKEN = SANDBOX_AUTH_TOKEN
# What a test that needs a real Twilio account adds to test_env: SANDBOX off, a real-looking account.
REAL_ACCOUNT_SID = "AC" + "1" * 32
REAL_AUTH_TOKEN = "test-auth-token"
REAL_TWILIO_ENV = {"SANDBOX": "off", "TWILIO_ACCOUNT_SID": REAL_ACCOUNT_SID, "TWILIO_AUTH_TOKEN": REAL_AUTH_TOKEN}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url(tmp: Path) -> str:
    for name in ("TEST_DATABASE_URL", "DATABASE_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return f"sqlite:///{tmp / 'gateway.db'}"


def _broker_url(tmp: Path) -> str:
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        # The broker gets the next Redis database, flushed at start: no stale tasks, and two suites
        # pointed at different databases (REDIS_URL …/0 and …/2) never consume each other's tasks.
        base, _, db_number = redis_url.rpartition("/")
        if redis_url.count("/") < 3 or not db_number.isdigit():
            base, db_number = redis_url.rstrip("/"), "0"
        return f"{base}/{int(db_number) + 1}"
    return f"filesystem://{tmp / 'broker'}"


@pytest.fixture(scope="session")
def test_env(tmp_path_factory) -> dict[str, str]:
    """The environment every process of the test session runs with."""
    tmp = tmp_path_factory.mktemp("gateway")
    port = _free_port()
    env = {
        "DATABASE_URL": _database_url(tmp),
        "CELERY_BROKER_URL": _broker_url(tmp),
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PROGRAMS_FILE": str(ROOT / "config" / "programs.example.toml"),
        "SUPPRESSION_KEY": "test-suppression-key-0123456789abcdef",
        "SANDBOX": "on",
        "VAR_DIR": str(tmp / "var"),
        "LOG_LEVEL": "INFO",
        # The session's app replays no journal on its own: a test replays when it means to.
        "INBOUND_JOURNAL_REPLAY_SECONDS": "0",
        # The worker's own /metrics: a free port, so test sessions side by side do not collide.
        "WORKER_METRICS_PORT": str(_free_port()),
    }
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    else:
        env["REDIS_URL"] = ""
    return env


@pytest.fixture(scope="session")
def settings(test_env):
    return load_settings(env=test_env)


@pytest.fixture(scope="session")
def app(settings):
    app = create_app(settings)
    gateway = app.extensions["gateway"]
    if gateway.db.dialect == "postgresql":
        with gateway.db.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    gateway.db.upgrade()
    if settings.celery_broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.celery_broker_url).flushdb()
    yield app
    gateway.db.dispose()


@pytest.fixture(scope="session")
def example_programs(settings):
    return load_file(settings.programs_file)


@pytest.fixture
def gateway(app):
    return app.extensions["gateway"]


@pytest.fixture
def db(gateway):
    return gateway.db


@pytest.fixture(autouse=True)
def _clean_store(request):
    """Every test that uses the store starts with it empty but for the example programs."""
    if "app" not in request.fixturenames:
        yield
        return
    app, example_programs = request.getfixturevalue("app"), request.getfixturevalue("example_programs")
    database = app.extensions["gateway"].db
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    # Work from the last test may still be in flight: the sandbox's courier posting a callback into
    # our webhooks (paused here), the worker finishing a task. On PostgreSQL a TRUNCATE that waits on
    # such a straggler can deadlock with it, so it gives way quickly and tries again.
    sandbox = app.extensions.get("sandbox")
    for attempt in range(20):
        try:
            with (sandbox.courier.paused() if sandbox else contextlib.nullcontext()), \
                    database.engine.begin() as connection:
                if database.dialect == "postgresql":
                    connection.execute(text("SET LOCAL lock_timeout = '500ms'"))
                    connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
                else:
                    for table in tables:
                        connection.execute(text(f"DELETE FROM {table}"))
            break
        except OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.1)
    with database.transaction() as session:
        programs.store(session, example_programs)
    # Checkpoints sign the store's heads: those of the last test would not match this one's store.
    shutil.rmtree(app.extensions["gateway"].settings.ledger_checkpoint_dir, ignore_errors=True)
    yield


@pytest.fixture(autouse=True)
def _queue_kept_from_the_worker(request):
    """Tests that run no worker enqueue into an in-memory queue they can read.

    The session's worker process, once started by an end-to-end test, consumes the real broker; a
    test asserting that a row is still `queued` would otherwise race it.
    """
    if "app" in request.fixturenames and "worker_process" not in request.fixturenames:
        request.getfixturevalue("captured_queue")
    yield


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_key(db):
    """make_key("send", "read") → a fresh API key with those scopes."""
    counter = iter(range(1, 10_000))

    def make(*scopes: str) -> str:
        with db.transaction() as session:
            _, key = keys.create(session, f"test-key-{next(counter)}", list(scopes or ("admin",)))
        return key

    return make


@pytest.fixture
def sign(settings):
    """sign(path, params) → the X-Twilio-Signature Twilio would send for a POST to our public URL."""

    def compute(path: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
        return RequestValidator(token).compute_signature(settings.public_url(path), params)

    return compute


@pytest.fixture
def twilio_post(client, sign):
    """POST a form to `path` signed as Twilio would; returns the test client's response."""

    def post(path: str, params: dict[str, str], **headers):
        headers.setdefault("X-Twilio-Signature", sign(path, params))
        return client.post(path, data=urlencode(params), headers=headers,
                           content_type="application/x-www-form-urlencoded")

    return post


@pytest.fixture(scope="session")
def live_server(app, settings) -> Iterator[str]:
    """The app served over real HTTP at PUBLIC_BASE_URL, in a thread of this process."""
    port = int(settings.public_base_url.rsplit(":", 1)[1])
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield settings.public_base_url
    server.shutdown()


class WorkerProcess:
    """A real `celery -A worker worker` subprocess sharing the test environment."""

    def __init__(self, env: dict[str, str], log_path: Path, *extra_args: str):
        self.env, self.log_path, self.process, self.extra_args = env, log_path, None, extra_args

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=threads", "--concurrency=4",
             "-Q", "sends,status,periodic", "--without-gossip", "--without-mingle", "-l", "INFO", *self.extra_args],
            cwd=ROOT, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker did not start:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def worker_process(app, live_server, test_env, tmp_path_factory) -> Iterator[WorkerProcess]:
    """One real Celery worker for the session (started on first use)."""
    worker = WorkerProcess(test_env, tmp_path_factory.mktemp("worker") / "worker.log")
    worker.start()
    yield worker
    worker.stop()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str | None = None):
    """Poll `predicate` until it returns something truthy; fail the test on timeout, naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout}s: {what or getattr(predicate, '__name__', predicate)}")


@contextlib.contextmanager
def gunicorn_serving(tmp_path: Path, app: str, *options: str, **popen) -> Iterator[int]:
    """gunicorn with the Procfile's config (config/gunicorn.conf.py), one worker serving the WSGI app
    `app` ("module:name") on a free port, yielded; stopped when the block ends. The config reads the
    settings: the sandbox's, as `make run` would give them."""
    port = _free_port()
    env = {**os.environ, "SANDBOX": "on", "VAR_DIR": str(tmp_path / "var"),
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "config/gunicorn.conf.py", "-b", f"127.0.0.1:{port}",
         "-w", "1", *options, app], cwd=ROOT, env=env, **popen)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(10)


def pytest_sessionfinish(session, exitstatus):
    """With FORBID_SKIPS set (CI's PostgreSQL run), a skipped test fails the run: skips hide gaps."""
    if os.environ.get("FORBID_SKIPS") and exitstatus == 0:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter and reporter.stats.get("skipped"):
            session.exitstatus = 1
