"""The smsgate command, run as a user runs it: a real process with the test environment."""

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from gateway import cli
from gateway.config import ROOT
from gateway.domain.consent import Input, Source
from gateway.domain.numbers import parse
from gateway.services import consents
from gateway.store import consents as store_consents
from gateway.store.models import ApiKey, LedgerEvent, Program
from gateway.store.programs import by_slug


@pytest.fixture
def smsgate(app, test_env):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env={**os.environ, **test_env},
            capture_output=True, text=True, timeout=60,
        )

    return run


def test_db_upgrade_is_idempotent(smsgate):
    result = smsgate("db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "the database is up to date (schema " in result.stdout


def test_db_upgrade_says_it_created_a_new_database(app, test_env, tmp_path):
    """A first run reads "created the database", not "up to date"; the second run then does."""
    fresh = {**os.environ, **test_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}
    runs = [subprocess.run([sys.executable, "-m", "gateway.cli", "db", "upgrade"], cwd=ROOT, env=fresh,
                           capture_output=True, text=True, timeout=60) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout.startswith("created the database (schema ")
    assert runs[1].stdout.startswith("the database is up to date (schema ")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_every_command_answers_dash_h_with_an_example():
    runner = CliRunner()
    seen = list(_commands(cli.main))
    assert ("keys", "list") in seen and ("programs", "show") in seen and len(seen) > 20
    for path in seen:
        short, long = runner.invoke(cli.main, [*path, "-h"]), runner.invoke(cli.main, [*path, "--help"])
        assert short.exit_code == 0, (path, short.output)
        assert short.output == long.output
        assert "Example" in short.output and "smsgate " + " ".join(path) in short.output, path


def test_version_and_scopes_explained():
    runner = CliRunner()
    version = runner.invoke(cli.main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("smsgate, version ")
    scopes = runner.invoke(cli.main, ["keys", "create", "-h"]).output
    for scope, says in [("send", "POST /v1/messages"), ("subscribe", "POST /v1/subscriptions"),
                        ("read", "GET /v1/consents"), ("admin", "erase")]:
        assert any(line.split()[:1] == [scope] and says in line for line in scopes.splitlines()), scope


def test_keys_list_names_scopes_and_state_never_the_key(smsgate, db):
    assert "no keys yet" in smsgate("keys", "list").stdout
    created = smsgate("keys", "create", "crm", "--scope", "send", "--scope", "read")
    key = created.stdout.strip().splitlines()[-1]
    assert smsgate("keys", "create", "old", "--scope", "admin").returncode == 0
    assert smsgate("keys", "revoke", "old").returncode == 0
    listed = smsgate("keys", "list")
    assert listed.returncode == 0, listed.stderr
    crm, old = listed.stdout.splitlines()
    assert crm.split()[:2] == ["crm", "read,send"] and "created " in crm and crm.endswith("active")
    assert old.split()[:2] == ["old", "admin"] and "revoked " in old
    with db.sessions() as session:
        digest = session.scalars(select(ApiKey.key_hash).where(ApiKey.name == "crm")).one()
    assert key not in listed.stdout and key.split("_")[1] not in listed.stdout and digest not in listed.stdout


def test_programs_list_and_show(smsgate):
    listed = smsgate("programs", "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["alerts", "deals", "orders"]
    assert "DEALS" in next(line for line in listed.stdout.splitlines() if line.startswith("deals"))
    shown = smsgate("programs", "show", "deals")
    assert shown.returncode == 0, shown.stderr
    for fact in ("deals: Acme Deals", "category:        marketing", "sender:          +15005550006",
                 "frequency:       Up to 4 msgs/month", "join keywords:   DEALS", "/subscribe/deals",
                 "you agree to receive", "Consent is not a condition of purchase", "confirmation: ",
                 "reply to HELP: Acme Deals: help at", "cap:             4 per month",
                 "Twilio opt-outs: twilio_default"):
        assert fact in shown.stdout, fact


def test_programs_show_an_unknown_slug_is_a_clear_error_and_changes_nothing(smsgate, db):
    with db.sessions() as session:
        before = session.scalar(select(func.count()).select_from(Program))
    result = smsgate("programs", "show", "nope")
    assert result.returncode == 1
    assert "no program 'nope'; known: alerts, deals, orders" in result.stderr and "Traceback" not in result.stderr
    with db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Program)) == before


def test_programs_load_stores_and_reports(smsgate, tmp_path, db):
    file = tmp_path / "p.toml"
    file.write_text(
        '[programs.news]\nname = "News"\nsender = "+15005550006"\ncategory = "informational"\n'
        'frequency = "Weekly"\nhelp = "News: help at example.org. Reply STOP to cancel."\n'
    )
    result = smsgate("programs", "load", str(file))
    assert result.returncode == 0, result.stderr
    assert "news: News (informational, double opt-in) from +15005550006" in result.stdout
    assert f"loaded 1 program(s) from {file}" in result.stdout
    with db.sessions() as session:
        assert by_slug(session, "news").frequency == "Weekly"


def test_programs_load_refuses_a_bad_file_naming_the_key(smsgate, tmp_path):
    file = tmp_path / "p.toml"
    file.write_text('[programs.news]\nname = "News"\nsender = "+15005550006"\ncategory = "spam"\nfrequency = "x"\n'
                    'help = "y"\n')
    result = smsgate("programs", "load", str(file))
    assert result.returncode == 1
    assert "program 'news': category" in result.stderr


def test_keys_create_prints_the_key_alone_on_the_last_line(smsgate, client):
    result = smsgate("keys", "create", "crm", "--scope", "send", "--scope", "read")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("sgk_") and " " not in key
    again = smsgate("keys", "create", "crm", "--scope", "send")
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = smsgate("keys", "create", "other", "--scope", "everything")
    assert bad.returncode == 2


def test_consent_show_lists_consents_and_events(smsgate, db):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse("+14155552671"))
        consents.apply(session, row, by_slug(session, "orders"), Input.KEYWORD_JOIN_DIRECT,
                      consents.Evidence(Source.SMS, reference="SM1", details={"body": "ORDERS"}))
    result = smsgate("consent", "show", "(415) 555-2671")
    assert result.returncode == 0, result.stderr
    assert "orders" in result.stdout and "opted_in" in result.stdout and "via sms" in result.stdout
    assert smsgate("consent", "show", "not a number").returncode == 1


def test_ledger_verify_exit_status(smsgate, db):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse("+14155552671"))
        consents.apply(session, row, by_slug(session, "deals"), Input.API_REQUEST, consents.Evidence(Source.API))
        consents.apply(session, row, by_slug(session, "deals"), Input.CONFIRM_YES, consents.Evidence(Source.SMS))
    ok = smsgate("ledger", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout
    with db.transaction() as session:
        session.execute(update(LedgerEvent).where(LedgerEvent.seq == 1).values(source="web"))
    broken = smsgate("ledger", "verify")
    assert broken.returncode == 1
    assert "BROKEN +1415***2671 (number 1), event 1 at seq 1: content was changed" in broken.stderr


def test_ledger_verify_checks_one_number(smsgate, db):
    with db.transaction() as session:
        for raw in ("+14155552671", "+14155552672"):
            row = store_consents.number_row(session, parse(raw))
            consents.apply(session, row, by_slug(session, "deals"), Input.API_REQUEST, consents.Evidence(Source.API))
    assert smsgate("ledger", "checkpoint").returncode == 0
    with db.transaction() as session:  # break the second number's chain only
        second = store_consents.find_number(session, "+14155552672")
        session.execute(update(LedgerEvent).where(LedgerEvent.number_id == second.id).values(source="web"))
    first = smsgate("ledger", "verify", "--number", "(415) 555-2671")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("+1415***2671: chain intact, 1 events") and "checkpoint of" in first.stdout
    assert "+14155552671" not in first.stdout
    broken = smsgate("ledger", "verify", "--number", "+14155552672")
    assert broken.returncode == 1
    assert "BROKEN +1415***2672" in broken.stderr and "2671" not in broken.stderr
    unknown = smsgate("ledger", "verify", "--number", "+14155550000")
    assert unknown.returncode == 1 and "nothing is held about that number" in unknown.stderr
    bad = smsgate("ledger", "verify", "--number", "not a number")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_consent_import_export_and_erase(smsgate, tmp_path):
    file = tmp_path / "consents.csv"
    file.write_text("phone,program,status,collected_at\n+14155552671,deals,opted_out,2025-01-02\nbad,deals,opted_in,\n")
    imported = smsgate("consent", "import", str(file))
    assert imported.returncode == 0, imported.stderr
    assert "imported 1, refused 1" in imported.stdout and "line 3: refused" in imported.stderr
    exported = smsgate("export", "+14155552671")
    assert exported.returncode == 0 and '"collected_at": "2025-01-02"' in exported.stdout
    erased = smsgate("erase", "+14155552671", "--yes")
    assert erased.returncode == 0 and "suppression hash" in erased.stdout
    assert "+14155552671" not in erased.stdout  # masked: it is output an operator might paste anywhere
    assert smsgate("export", "+14155552671").returncode == 1
    assert smsgate("ledger", "verify").returncode == 0


def test_an_erased_opted_out_number_is_never_imported_again(smsgate, tmp_path, db):
    """After an erasure, an old CRM export must not bring the person back as opted_in."""
    first = tmp_path / "first.csv"
    first.write_text("phone,program,status\n+14155552671,deals,opted_in\n+14155552671,deals,opted_out\n")
    assert smsgate("consent", "import", str(first)).returncode == 0
    assert smsgate("erase", "+14155552671", "--yes").returncode == 0
    again = tmp_path / "again.csv"
    again.write_text("phone,program,status,source\n(415) 555-2671,deals,opted_in,crm\n"
                     "+14155552671,alerts,opted_out,crm\n+14155552672,deals,opted_in,crm\n")
    imported = smsgate("consent", "import", str(again))
    assert imported.returncode == 0, imported.stderr
    assert "imported 1, refused 2" in imported.stdout
    assert "line 2: refused: suppressed" in imported.stderr and "line 3: refused: suppressed" in imported.stderr
    with db.sessions() as session:
        assert store_consents.find_number(session, "+14155552671") is None  # not stored again either
    assert "no consent recorded" in smsgate("consent", "show", "+14155552671").stdout


def test_an_import_file_that_is_not_utf8_is_refused_whole(smsgate, tmp_path, db):
    file = tmp_path / "latin1.csv"
    file.write_bytes("phone,program,status,name\n+14155552671,deals,opted_in,Ren\xe9e\n".encode("latin-1"))
    result = smsgate("consent", "import", str(file))
    assert result.returncode == 1
    assert "is not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
    with db.sessions() as session:
        assert store_consents.find_number(session, "+14155552671") is None
