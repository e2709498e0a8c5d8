"""The worker's log masks numbers too, under the handlers `celery worker` installs."""

import os
import subprocess
import sys

from tests.conftest import ROOT

# What `celery worker` does to logging (celery.apps.worker.Worker.setup_logging), then the lines a
# worker writes: the twilio client's request log (URL-encoded To; shown at LOG_LEVEL=DEBUG only),
# and a task's own line.
SCRIPT = """
import logging
from worker import celery
celery.log.setup(loglevel="DEBUG", redirect_stdouts=False, hostname="test")
logging.getLogger("twilio.http_client").info(
    "GET Request: https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json?To=%2B14155552671&PageSize=50")
logging.getLogger("celery.task").info("texting +14155552671")
logging.getLogger("gateway.services.sending").warning("sender +14155552671 is busy")
try:
    raise RuntimeError("Twilio refused (415) 555-2672")
except RuntimeError:
    logging.getLogger("celery.app.trace").exception("Task send[1] raised for %s", "415.555.2673")
"""


def test_a_worker_masks_every_number_it_logs(test_env):
    ran = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env={**os.environ, **test_env, "LOG_LEVEL": "DEBUG"},
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    output = ran.stdout + ran.stderr
    assert "To=%2B1415***2671" in output
    assert output.count("+1415***2671") == 2
    assert "4155552671" not in output
    # An exception's traceback and a national form are masked as well.
    assert "Traceback" in output and "RuntimeError: Twilio refused +1415***2672" in output
    assert "raised for +1415***2673" in output
    assert "555-2672" not in output and "555.2673" not in output


def test_the_twilio_clients_request_log_is_left_out_at_info(test_env):
    ran = subprocess.run([sys.executable, "-c", SCRIPT.replace('loglevel="DEBUG"', 'loglevel="INFO"')], cwd=ROOT,
                         env={**os.environ, **test_env, "LOG_LEVEL": "INFO"}, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    output = ran.stdout + ran.stderr
    assert "GET Request" not in output
    assert "texting +1415***2671" in output
