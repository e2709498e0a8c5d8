"""The worker process: `celery -A worker worker`. Built from the same settings as the web app."""

from gateway import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]

import worker.tasks  # noqa: E402,F401  (registers the tasks on `celery`)
