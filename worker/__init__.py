"""The worker process: `celery -A worker worker`. Its Gateway comes from bootstrap, as the web app's
does; no Flask app is built here."""

from celery.signals import after_setup_logger, after_setup_task_logger

from gateway import worker_metrics
from gateway.config import load_settings

# First: the worker's counts go to files the web's /metrics reads (before anything imports the metrics).
worker_metrics.count_into_files(load_settings().var_dir)

from gateway import bootstrap, logs  # noqa: E402

gateway = bootstrap.from_environment()
logs.configure(gateway.settings.log_level, gateway.settings.default_region)
celery = gateway.dispatcher.celery
# Beat keeps its schedule under VAR_DIR, not under the working directory: a fresh deployment (its
# store and broker elsewhere, SUPPRESSION_KEY set) may not have a var/ yet, and beat dies without it.
gateway.settings.var_dir.mkdir(parents=True, exist_ok=True)
celery.conf.beat_schedule_filename = str(gateway.settings.var_dir / "celerybeat-schedule")

import worker.tasks  # noqa: E402,F401  (registers the tasks on `celery`)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_numbers(logger, **_):
    # `celery worker` replaces the root logger's handlers with its own (and gives task loggers theirs).
    # Records made in this process are masked when created (logs.install, through logs.configure); the
    # filter on Celery's handlers also masks records built elsewhere (makeLogRecord), so no number
    # reaches the worker's log in full (the twilio client logs To=%2B1415… in its request URLs).
    logs.mask_handlers(logger)
