"""The worker process: `celery -A worker worker`. Its Gateway comes from bootstrap, as the web app's
does; no Flask app is built here."""

import logging

from celery.signals import after_setup_logger, after_setup_task_logger, worker_ready

from gateway import bootstrap, logs

gateway = bootstrap.from_environment()
logs.configure(gateway.settings.log_level, gateway.settings.default_region, gateway.settings.log_format)
celery = gateway.dispatcher.celery
# Beat keeps its schedule under VAR_DIR, not under the working directory: a fresh deployment (its
# store and broker elsewhere, SUPPRESSION_KEY set) may not have a var/ yet, and beat dies without it.
gateway.settings.var_dir.mkdir(parents=True, exist_ok=True)
celery.conf.beat_schedule_filename = str(gateway.settings.var_dir / "celerybeat-schedule")

import worker.tasks  # noqa: E402,F401  (registers the tasks on `celery`)

log = logging.getLogger(__name__)


@worker_ready.connect
def _serve_metrics(**_):
    """The worker's own /metrics (WORKER_METRICS_PORT on WEB_HOST): its sends, provider calls, carrier
    opt-outs and recoveries are counted in this process. The Procfile's thread pool keeps every task
    in this one process; a prefork pool's children would count where this endpoint cannot see."""
    port = gateway.settings.worker_metrics_port
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=gateway.settings.web_host)
    except OSError as error:
        # A busy port must not stop the sends: say so loudly, and keep working.
        log.error("worker metrics: cannot listen on %s:%d (%s); this worker's metrics are not served",
                  gateway.settings.web_host, port, error)
        return
    log.info("worker metrics on http://%s:%d/metrics", gateway.settings.web_host, port)


@worker_ready.connect
def _freeze_loaded_heap(**_):
    # The Procfile's thread pool runs every task in this process, on what it has loaded by now.
    bootstrap.freeze_loaded_heap()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_numbers(logger, **_):
    # `celery worker` replaces the root logger's handlers with its own (and gives task loggers theirs).
    # Records made in this process are masked when created (logs.install, through logs.configure); the
    # filter on Celery's handlers also masks records built elsewhere (makeLogRecord), so no number
    # reaches the worker's log in full (the twilio client logs To=%2B1415… in its request URLs).
    logs.mask_handlers(logger)
    if gateway.settings.log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(logs.formatter("json"))
