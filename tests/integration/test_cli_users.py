"""`smsgate users create`, run as an operator runs it: a real process with the test environment."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from gateway.config import ROOT
from gateway.store.models import ConsoleUser, utcnow
from tests.console_support import csrf_of


@pytest.fixture
def smsgate(app, test_env):
    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env={**os.environ, **test_env},
                              capture_output=True, text=True, timeout=60, input=stdin)

    return run


def _signs_in(client, name: str, password: str) -> bool:
    page = client.get("/console/login").get_data(as_text=True)
    response = client.post("/console/login", data={"name": name, "password": password, "csrf_token": csrf_of(page)})
    return response.status_code == 303


def test_users_create_prints_a_generated_password_once_that_signs_in(smsgate, client, db, gateway):
    gateway.limiter.reset()
    result = smsgate("users", "create", "alice", "--role", "compliance")
    assert result.returncode == 0, result.stderr
    password = result.stdout.strip().splitlines()[-1]
    assert len(password) >= 20 and " " not in password
    with db.transaction() as session:
        user = session.scalars(select(ConsoleUser)).one()
        assert (user.name, user.role) == ("alice", "compliance")
        assert user.password_hash.startswith("$argon2id$") and password not in user.password_hash
    assert _signs_in(client, "alice", password)


def test_users_create_reads_the_password_from_stdin(smsgate, client, gateway):
    gateway.limiter.reset()
    result = smsgate("users", "create", "bob", "--role", "viewer", "--password-stdin",
                     stdin="a long enough passphrase\n")
    assert result.returncode == 0, result.stderr
    assert "passphrase" not in result.stdout
    assert _signs_in(client, "bob", "a long enough passphrase")


def test_users_create_refuses_bad_input_and_stores_nothing(smsgate, db):
    short = smsgate("users", "create", "carol", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 12 characters" in short.stderr
    bad_name = smsgate("users", "create", "carol smith", "--role", "viewer")
    assert bad_name.returncode == 1 and "user name" in bad_name.stderr
    bad_role = smsgate("users", "create", "carol", "--role", "owner")
    assert bad_role.returncode == 2
    with db.transaction() as session:
        assert session.scalars(select(ConsoleUser)).all() == []
    assert smsgate("users", "create", "carol", "--role", "admin").returncode == 0
    taken = smsgate("users", "create", "carol", "--role", "viewer")
    assert taken.returncode == 1 and "exists already" in taken.stderr


# --- looking after accounts ---------------------------------------------------------------------------


def _create(smsgate, name: str, role: str = "viewer", password: str = "a long enough passphrase") -> None:
    assert smsgate("users", "create", name, "--role", role, "--password-stdin", stdin=password).returncode == 0


def _user(db, name: str) -> ConsoleUser:
    with db.transaction() as session:
        return session.scalars(select(ConsoleUser).where(ConsoleUser.name == name)).one()


def test_users_list_shows_each_account_and_its_state_never_a_hash(smsgate, db):
    assert "no console users" in smsgate("users", "list").stdout
    _create(smsgate, "alice", "admin")
    _create(smsgate, "bob")
    _create(smsgate, "carol")
    assert smsgate("users", "disable", "bob").returncode == 0
    with db.transaction() as session:
        session.execute(ConsoleUser.__table__.update().where(ConsoleUser.name == "carol").values(
            locked_until=utcnow() + timedelta(minutes=10)))
    listed = smsgate("users", "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert set(lines) == {"alice", "bob", "carol"}
    assert "admin" in lines["alice"] and lines["alice"].endswith("active") and "never" in lines["alice"]
    assert "disabled since" in lines["bob"]
    assert "locked until" in lines["carol"]
    assert "argon2" not in listed.stdout


def test_a_disabled_user_cannot_sign_in_and_enable_lets_them_in_again(smsgate, client, db, gateway):
    gateway.limiter.reset()
    _create(smsgate, "bob")
    disabled = smsgate("users", "disable", "bob")
    assert disabled.returncode == 0 and "disabled console user 'bob'" in disabled.stdout
    assert not _signs_in(client, "bob", "a long enough passphrase")
    assert smsgate("users", "enable", "bob").returncode == 0
    assert _user(db, "bob").disabled_at is None
    assert _signs_in(client, "bob", "a long enough passphrase")


def test_users_disable_ends_a_live_session_at_once(smsgate, client, gateway):
    gateway.limiter.reset()
    _create(smsgate, "bob")
    assert _signs_in(client, "bob", "a long enough passphrase")
    assert client.get("/console").status_code == 200
    result = smsgate("users", "disable", "bob")
    assert "1 open session(s) ended" in result.stdout
    assert client.get("/console").status_code == 303  # to the sign-in page


def test_users_unlock_ends_a_lockout(smsgate, client, db, gateway):
    gateway.limiter.reset()
    _create(smsgate, "bob")
    for _ in range(gateway.settings.console_max_failed_logins):
        assert not _signs_in(client, "bob", "not the password at all")
    assert _user(db, "bob").locked_until is not None
    assert not _signs_in(client, "bob", "a long enough passphrase")  # locked
    unlocked = smsgate("users", "unlock", "bob")
    assert unlocked.returncode == 0 and "unlocked console user 'bob'" in unlocked.stdout
    assert (_user(db, "bob").failed_logins, _user(db, "bob").locked_until) == (0, None)
    assert _signs_in(client, "bob", "a long enough passphrase")
    assert "was not locked" in smsgate("users", "unlock", "bob").stdout


def test_users_password_resets_it_once_and_signs_the_account_out(smsgate, client, gateway):
    gateway.limiter.reset()
    _create(smsgate, "bob")
    assert _signs_in(client, "bob", "a long enough passphrase")
    reset = smsgate("users", "password", "bob")
    assert reset.returncode == 0, reset.stderr
    assert "1 open session(s) ended" in reset.stdout
    new = reset.stdout.strip().splitlines()[-1]
    assert len(new) >= 20
    assert client.get("/console").status_code == 303  # the old session ended
    assert not _signs_in(client, "bob", "a long enough passphrase")
    assert _signs_in(client, "bob", new)
    by_stdin = smsgate("users", "password", "bob", "--password-stdin", stdin="another long passphrase\n")
    assert by_stdin.returncode == 0 and "another" not in by_stdin.stdout
    assert _signs_in(client, "bob", "another long passphrase")


def test_account_commands_refuse_bad_input_and_change_nothing(smsgate, db):
    _create(smsgate, "bob")
    before = _user(db, "bob")
    for command in ("disable", "enable", "unlock", "password"):
        result = smsgate("users", command, "nobody")
        assert result.returncode == 1 and "no console user named 'nobody'" in result.stderr, command
    short = smsgate("users", "password", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "at least 12 characters" in short.stderr
    after = _user(db, "bob")
    assert (after.password_hash, after.disabled_at, after.failed_logins) == (
        before.password_hash, before.disabled_at, before.failed_logins)
