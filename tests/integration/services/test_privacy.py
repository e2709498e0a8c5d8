"""Export, erasure (with the suppression hash that outlives it) and consent import."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from gateway.domain.consent import Input, Source
from gateway.domain.gate import Kind, Reason
from gateway.domain.numbers import parse
from gateway.domain.quiet_hours import default_rules
from gateway.services import consents, imports, policy, privacy
from gateway.store import consents as store_consents
from gateway.store import ledger
from gateway.store.models import LedgerEvent, PhoneNumber, Suppression
from gateway.store.programs import by_slug

NOON = datetime(2026, 3, 4, 17, 0, tzinfo=UTC)  # 12:00 in New York
PHONE = "+14155552671"


def consent(db, *steps, phone=PHONE):
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(phone))
        for slug, input in steps:
            consents.apply(session, row, by_slug(session, slug), input,
                          consents.Evidence(Source.SMS, reference="SM1", details={"body": "the person's words"}),
                          now=NOON)


def test_export_holds_consents_and_evidence(db):
    consent(db, ("orders", Input.KEYWORD_JOIN_DIRECT), ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        data = privacy.export(session, store_consents.find_number(session, PHONE))
    assert data["phone"] == PHONE
    assert {c["program"]: c["status"] for c in data["consents"]} == {"orders": "opted_in", "deals": "opted_out"}
    assert [e["type"] for e in data["events"]] == ["opt_in", "opt_out"]
    assert data["events"][0]["evidence"] == {"body": "the person's words"}


def test_erase_keeps_a_suppression_hash_only_for_opt_outs(db, settings):
    consent(db, ("deals", Input.KEYWORD_STOP))
    consent(db, ("orders", Input.KEYWORD_JOIN_DIRECT), phone="+14155552672")
    evidence = consents.Evidence(Source.API, actor="dpo")
    with db.transaction() as session:
        first = privacy.erase(session, store_consents.find_number(session, PHONE), settings.suppression_key, evidence)
        second = privacy.erase(session, store_consents.find_number(session, "+14155552672"), settings.suppression_key,
                               evidence)
    assert first.suppressed and not second.suppressed
    with db.sessions() as session:
        assert session.scalars(select(PhoneNumber.e164)).all() == [None, None]
        assert len(session.scalars(select(Suppression)).all()) == 1
        assert consents.is_suppressed(session, settings.suppression_key, PHONE)
        redacted = session.scalars(select(LedgerEvent.evidence).where(LedgerEvent.type != "erasure")).all()
        assert redacted and all(e == {"redacted": True} for e in redacted)
        # The chain still verifies after the evidence is gone.
        assert list(ledger.verify(session)) == []


def test_an_erased_opted_out_number_stays_unmessageable(db, settings):
    consent(db, ("deals", Input.API_REQUEST), ("deals", Input.CONFIRM_YES), ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        privacy.erase(session, store_consents.find_number(session, PHONE), settings.suppression_key,
                      consents.Evidence(Source.API, actor="dpo"))
    # The number comes back through an import: the suppression still refuses it.
    with db.transaction() as session:
        row = store_consents.number_row(session, parse(PHONE))
        consents.apply(session, row, by_slug(session, "deals"), Input.IMPORT_OPT_IN, consents.Evidence(Source.IMPORT))
        decision = policy.Gate(settings.suppression_key, default_rules()).may_send(
            session, row, by_slug(session, "deals"), Kind.MARKETING, NOON)
    assert decision.reason is Reason.SUPPRESSED


def test_redacting_evidence_without_an_erasure_is_caught(db):
    consent(db, ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        session.execute(LedgerEvent.__table__.update().values(evidence={"redacted": True}))
    with db.sessions() as session:
        assert "evidence was changed" in str(next(ledger.verify(session)))


def test_import_applies_rows_and_refuses_what_cannot_apply(db):
    consent(db, ("deals", Input.KEYWORD_STOP), phone="+14155552673")
    csv_text = (
        "phone,program,status,collected_at,source_url\n"
        "(415) 555-2671,deals,opted_in,2025-01-02,https://acme.example/join\n"
        "+14155552672,orders,opted_out,,\n"
        "+14155552673,deals,opted_in,2025-01-02,https://acme.example/join\n"
        "not a number,deals,opted_in,,\n"
        "+14155552674,nope,opted_in,,\n"
        "+14155552675,deals,maybe,,\n"
    )
    report = imports.import_text(db, csv_text, region="US", actor="ops", rules=default_rules(),
                                 suppression_key=b"k" * 32)
    refused = imports.refusals(db, report.import_id)
    assert dict(report.counts) == {"import_opt_in": 1, "import_opt_out": 1}
    assert [line for line, _ in refused] == [4, 5, 6, 7]
    assert "not allowed from opted_out" in refused[0][1]
    with db.sessions() as session:
        imported = select(LedgerEvent).where(LedgerEvent.source == "import").order_by(LedgerEvent.id)
        event = session.scalars(imported).first()
        assert event.evidence == {"collected_at": "2025-01-02", "source_url": "https://acme.example/join"}
        assert event.actor == "ops" and event.reference == "line 2"


def test_api_export_and_erase(client, make_key, db):
    consent(db, ("deals", Input.KEYWORD_STOP))
    admin, reader = make_key("admin"), make_key("read")
    assert client.get(f"/v1/consents/{PHONE}/export").status_code == 401
    assert client.get(f"/v1/consents/{PHONE}/export", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    headers = {"Authorization": f"Bearer {admin}"}
    exported = client.get(f"/v1/consents/{PHONE}/export", headers=headers)
    assert exported.status_code == 200 and exported.get_json()["phone"] == PHONE
    bad = client.post("/v1/consents/12/erase", headers=headers)
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "invalid_number"
    erased = client.post(f"/v1/consents/{PHONE}/erase", headers=headers)
    assert erased.get_json() == {"status": "erased", "suppressed": True, "consents_erased": 1}
    assert client.get(f"/v1/consents/{PHONE}/export", headers=headers).status_code == 404


def test_import_refuses_a_number_erased_after_it_opted_out(db, settings):
    consent(db, ("deals", Input.KEYWORD_STOP))
    with db.transaction() as session:
        privacy.erase(session, store_consents.find_number(session, PHONE), settings.suppression_key,
                      consents.Evidence(Source.API, actor="dpo"))
    csv_text = "phone,program,status\n(415) 555-2671,deals,opted_in\n+14155552671,orders,opted_out\n"
    report = imports.import_text(db, csv_text, region="US", actor="ops", rules=default_rules(),
                                 suppression_key=settings.suppression_key)
    refused = imports.refusals(db, report.import_id)
    assert not report.counts
    assert [line for line, _ in refused] == [2, 3]
    assert all(why.startswith("suppressed") for _, why in refused)
    with db.sessions() as session:
        assert store_consents.find_number(session, PHONE) is None


def test_import_refuses_a_row_the_store_cannot_hold_and_takes_the_others(db, settings):
    csv_text = ("phone,program,status,note\n+14155552671,deals,opted_in,a\x00b\n"
                "+14155552672,deals,opted_in,fine\n")
    report = imports.import_text(db, csv_text, region="US", actor="ops", rules=default_rules(),
                                 suppression_key=settings.suppression_key)
    assert dict(report.counts) == {"import_opt_in": 1}
    assert imports.refusals(db, report.import_id) == [
        (2, "column 'note' contains a NUL character (U+0000), which cannot be stored")]


def test_import_refuses_a_file_whose_column_names_the_store_cannot_hold(db, settings):
    with pytest.raises(ValueError, match="column name"):
        imports.import_text(db, "phone,program,status,no\x00te\n", region="US", actor="ops",
                            rules=default_rules(), suppression_key=settings.suppression_key)
