"""What `make run` prints before starting: where to go."""

from gateway.config import load_settings


def main() -> None:
    settings = load_settings()
    lines = [
        "",
        "SMS consent gateway",
        f"  health:        {settings.public_url('/healthz')}",
        f"  metrics:       {settings.public_url('/metrics')}",
        f"  hosted form:   {settings.public_url('/subscribe/deals')}",
    ]
    if settings.sandbox:
        lines.append(f"  phone (sandbox): {settings.public_url('/sandbox/phone')}")
    lines += [f"  store:         {settings.database_url}", f"  broker:        {settings.celery_broker_url}", ""]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
