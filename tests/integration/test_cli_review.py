"""`smsgate review list|resolve` through click's CliRunner, on the test session's store: the list as an
operator reads it (numbers masked), decisions recorded as cli:NAME, and every refusal a clear error that
changes nothing."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from gateway import cli
from gateway.services import inbound
from gateway.store.models import Consent, LedgerEvent, Program
from tests.sandbox_support import confirmed

PERSON, OTHER = "+14155550192", "+14155550193"
SENDER = "+15005550006"  # alerts keeps ambiguous replies for review


@pytest.fixture
def smsgate(gateway):
    """Run `smsgate ARGS` in this process, on the test session's gateway."""
    def run(*args: str):
        context = cli.Context()
        context._gateway = gateway
        return CliRunner().invoke(cli.main, list(args), obj=context)

    return run


def said(gateway, db, phone: str, body: str, sid: str) -> int:
    confirmed(db, phone, "alerts")
    inbound.handle(gateway, inbound.InboundText(message_sid=sid, from_=phone, to=SENDER, body=body))
    with db.sessions() as session:
        return session.scalars(select(LedgerEvent.id).where(LedgerEvent.type == "review")
                               .order_by(LedgerEvent.id.desc())).first()


def alerts_status(db) -> str:
    with db.sessions() as session:
        return session.scalars(select(Consent.status).join(Program).where(Program.slug == "alerts")
                               .order_by(Consent.id)).first()


def events(db) -> int:
    with db.sessions() as session:
        return session.scalar(select(func.count()).select_from(LedgerEvent))


def test_list_shows_each_reply_masked_newest_first_and_pages(smsgate, gateway, db):
    assert smsgate("review", "list").output == "no replies await review\n"
    older = said(gateway, db, PERSON, "No thanks", "SM" + "1" * 32)
    newer = said(gateway, db, OTHER, "nicht interessiert", "SM" + "2" * 32)
    result = smsgate("review", "list")
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()
    assert first.split()[0] == str(newer) and "+1415***0193" in first and "alerts" in first
    assert second.split()[0] == str(older) and "+1415***0192" in second and second.endswith('"No thanks"')
    assert "opted_in" in second and " en " in second
    assert PERSON not in result.output and OTHER not in result.output
    paged = smsgate("review", "list", "--limit", "1", "--program", "alerts")
    assert paged.output.splitlines()[-1] == f"older: smsgate review list --before {newer} --program alerts --limit 1"
    rest = smsgate("review", "list", "--before", str(newer))
    assert [line.split()[0] for line in rest.output.splitlines()] == [str(older)]


def test_resolve_as_an_opt_out_then_again_is_refused(smsgate, gateway, db):
    event_id = said(gateway, db, PERSON, "not interested", "SM" + "3" * 32)
    result = smsgate("review", "resolve", str(event_id), "--as", "opt-out", "--by", "alice", "--note", "read twice")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"review event {event_id} resolved as an opt-out: alerts of +1415***0192 is "
                                    "opted_out")
    assert alerts_status(db) == "opted_out"
    with db.sessions() as session:
        event = session.scalars(select(LedgerEvent).order_by(LedgerEvent.id.desc())).first()
        assert (event.input, event.actor, event.evidence["note"]) == ("review_opt_out", "cli:alice", "read twice")
    assert smsgate("review", "list").output == "no replies await review\n"
    before = events(db)
    again = smsgate("review", "resolve", str(event_id), "--as", "not-revocation", "--by", "bob")
    assert again.exit_code == 1
    assert f"review event {event_id} was resolved already, as an opt-out, by cli:alice" in again.output
    assert events(db) == before and alerts_status(db) == "opted_out"


def test_resolve_as_not_a_revocation_keeps_the_consent(smsgate, gateway, db):
    event_id = said(gateway, db, PERSON, "no", "SM" + "4" * 32)
    result = smsgate("review", "resolve", str(event_id), "--as", "not-revocation", "--by", "alice")
    assert result.exit_code == 0, result.output
    assert "resolved as not a revocation: alerts of +1415***0192 unchanged" in result.output
    assert alerts_status(db) == "opted_in"


def test_bad_input_is_a_clear_error_and_changes_nothing(smsgate, gateway, db):
    event_id = said(gateway, db, PERSON, "no thanks", "SM" + "5" * 32)
    with db.sessions() as session:
        not_a_review = session.scalars(select(LedgerEvent.id).where(LedgerEvent.type == "confirmation")).first()
    before = events(db)
    for args, code, words in [
        (("resolve", "999999", "--as", "opt-out", "--by", "a"), 1, "there is no ledger event 999999"),
        (("resolve", str(not_a_review), "--as", "opt-out", "--by", "a"), 1, "is a 'confirmation' event, not a reply"),
        (("resolve", str(event_id), "--as", "maybe", "--by", "a"), 2, "Invalid value for '--as'"),
        (("resolve", str(event_id), "--as", "opt-out"), 2, "Missing option '--by'"),
        (("resolve", "seven", "--as", "opt-out", "--by", "a"), 2, "'seven' is not a valid integer"),
        (("resolve", str(event_id), "--as", "opt-out", "--by", " "), 1, "say who decided"),
        (("list", "--program", "nope"), 1, "there is no program 'nope' (known: alerts, deals, orders)"),
        (("list", "--limit", "0"), 1, "the limit must be 1 to 200, not 0"),
    ]:
        result = smsgate("review", *args)
        assert result.exit_code == code and words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert events(db) == before and alerts_status(db) == "opted_in"
