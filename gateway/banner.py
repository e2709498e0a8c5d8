"""What `make run` prints before starting: where to go. `--check` instead only says whether it may
start: exit 1 naming the port and pid when a gateway already runs on this VAR_DIR or port, so a second
`make run` starts nothing (no migration, no worker) beside it."""

import sys

from gateway import run_lock
from gateway.config import ConfigError, load_settings
from gateway.domain.quiet_hours import default_rules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings()
    except ConfigError as error:
        print(f"configuration: {error}", file=sys.stderr)
        return 1
    if "--check" in argv:
        try:
            run_lock.preflight(settings.var_dir, settings.web_host, settings.port)
        except run_lock.AlreadyRunning as busy:
            print(f"not starting: {busy}", file=sys.stderr)
            return 1
        return 0
    window = default_rules().default_window
    url = settings.public_url
    lines = ["", "SMS consent gateway"]
    if settings.sandbox:
        lines.append(f"  start here:      {url('/')}  (links to everything below)")
        lines.append(f"  phone (sandbox): {url('/sandbox/phone')}")
    lines += [
        f"  API reference:   {url('/docs/api')}  (machine-readable: {url('/openapi.json')})",
        f"  hosted form:     {url('/subscribe/<program>')}  (`smsgate programs list` names them)",
        f"  health:          {url('/healthz')}",
        f"  metrics:         {url('/metrics')}",
        f"  store:           {settings.database_url}",
        f"  broker:          {settings.celery_broker_url}",
        "",
        "  An API key:      .venv/bin/smsgate keys create NAME --scope send   (printed once; -h explains scopes)",
        f"  Marketing texts wait for quiet hours to end: they go {window.start:%H:%M}-{window.end:%H:%M} "
        "at the recipient (stricter in some states), deferred until then.",
        "",
    ]
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
