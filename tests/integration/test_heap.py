"""Long-lived processes freeze what they loaded, so the collector stops walking it on every full
collection (gateway/bootstrap.py, freeze_loaded_heap): gunicorn's workers once the app is built, the
Celery worker when it is ready. Each test runs the real process and asks it."""

import os
import subprocess
import sys
import urllib.request

from tests.conftest import ROOT, gunicorn_serving, wait_for


def test_a_gunicorn_worker_freezes_what_it_loaded(tmp_path):
    answers = []
    with gunicorn_serving(tmp_path, "tests.gc_wsgi:app", stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as port:

        def answered() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    answers.append(int(response.read()))
                return True
            except OSError:
                return False

        wait_for(answered, timeout=30)
    # Everything the worker imported (gunicorn, the settings, SQLAlchemy) is out of the collector's reach.
    assert answers[-1] > 10_000


SCRIPT = """
import gc
from celery.signals import worker_ready
import worker
before = gc.get_freeze_count()
worker_ready.send(sender=None)
print(before, gc.get_freeze_count())
"""


def test_the_celery_worker_freezes_what_it_loaded_when_ready(test_env):
    # No metrics port: the other receiver of worker_ready would listen on it.
    ran = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT,
                         env={**os.environ, **test_env, "WORKER_METRICS_PORT": "0"},
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    before, after = map(int, ran.stdout.split())
    assert before == 0
    assert after > 10_000
