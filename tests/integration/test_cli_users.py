"""`smsgate users create`, run as an operator runs it: a real process with the test environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from gateway.config import ROOT
from gateway.store.models import ConsoleUser
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
