"""The worker process: `celery -A worker worker`. Built from the same settings as the web app."""

from celery.signals import after_setup_logger, after_setup_task_logger

from gateway import create_app, logs

flask_app = create_app()
celery = flask_app.extensions["celery"]

import worker.tasks  # noqa: E402,F401  (registers the tasks on `celery`)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_numbers(logger, **_):
    # `celery worker` replaces the root logger's handlers with its own (and gives task loggers theirs).
    # Records made in this process are masked when created (logs.install, through create_app); the
    # filter on Celery's handlers also masks records built elsewhere (makeLogRecord), so no number
    # reaches the worker's log in full (the twilio client logs To=%2B1415… in its request URLs).
    logs.mask_handlers(logger)

