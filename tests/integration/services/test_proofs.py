"""Proof bundles (services/proofs.py) checked by the standalone verifier (tools/verify_proof.py): a
true history holds, and every kind of tampering fails naming where."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from gateway.config import ROOT
from gateway.services import proofs
from gateway.store import checkpoints
from gateway.store import consents as store_consents
from tests.sandbox_support import opt_in

VERIFIER = ROOT / "tools" / "verify_proof.py"
PHONE = "+14155550161"


def _load_verifier():
    spec = importlib.util.spec_from_file_location("verify_proof", VERIFIER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = _load_verifier()


@pytest.fixture
def public_key(settings):
    return checkpoints.from_settings(settings)[1].public_key


@pytest.fixture
def history(db, twilio_post, gateway):
    """A number that joined two programs (import), texted STOP, was checkpointed, then texted START."""
    opt_in(db, PHONE, "deals", "alerts")
    stop = twilio_post("/webhooks/twilio/sms", {"MessageSid": "SM" + "1" * 32, "From": PHONE, "To": "+15005550006",
                                                "Body": "please stop texting me"})
    assert stop.status_code == 200
    checkpoint_log, signer = checkpoints.from_settings(gateway.settings)
    with db.snapshot() as session:
        checkpoints.take(session, checkpoint_log, signer)
    start = twilio_post("/webhooks/twilio/sms", {"MessageSid": "SM" + "2" * 32, "From": PHONE, "To": "+15005550006",
                                                 "Body": "START"})
    assert start.status_code == 200


def export(db, settings) -> dict:
    with db.snapshot() as session:
        return proofs.bundle(session, store_consents.find_number(session, PHONE), settings)


def test_a_true_history_holds(history, db, settings, public_key):
    bundle = export(db, settings)
    assert [event["input"] for event in bundle["events"]] == [
        "import_opt_in", "import_opt_in", "keyword_stop", "keyword_stop", "keyword_start", "keyword_start"]
    assert bundle["checkpoint"]["head"]["seq"] == 4
    proven = verifier.verify(bundle, public_key)
    assert proven == ["6 events chain from the first to the head, unchanged",
                      f"events 1 to 4 are in the checkpoint signed {bundle['checkpoint']['created_at']}",
                      "2 later events are chained after it, not yet covered by a checkpoint in this bundle"]
    # The text the person sent is in the evidence the chain covers.
    assert bundle["events"][2]["evidence"]["body"] == "please stop texting me"


def _tampered(bundle: dict, change) -> dict:
    copied = copy.deepcopy(bundle)
    change(copied)
    return copied


TAMPERING = {
    "evidence edited": (lambda b: b["events"][2]["evidence"].update(body="hello"),
                        "event 3 (opt_out at"),
    "status edited": (lambda b: b["events"][2].update(status_after="opted_in"), "its content was changed"),
    "time edited": (lambda b: b["events"][0].update(occurred_at="2020-01-01T00:00:00.000000+00:00"),
                    "event 1 (import at 2020-01-01T00:00:00.000000+00:00): its content was changed"),
    "event removed": (lambda b: b["events"].pop(2), "event 3 (opt_out at"),
    "events reordered": (lambda b: b["events"].insert(0, b["events"].pop(1)), "event 1"),
    "last event removed": (lambda b: b["events"].pop(), "the chain ends at seq 5 but the bundle's head says seq 6"),
    "checkpoint root edited": (lambda b: b["checkpoint"].update(root="0" * 64), "signature does not hold"),
    "another number's proof": (lambda b: b["checkpoint"].update(leaf_index=b["checkpoint"]["leaf_index"] + 1),
                               "inclusion proof does not hold"),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_each_tampering_fails_naming_where(history, db, settings, public_key, tampering):
    change, named = TAMPERING[tampering]
    with pytest.raises(verifier.Broken) as failed:
        verifier.verify(_tampered(export(db, settings), change), public_key)
    assert named in str(failed.value)


def test_a_bundle_signed_by_another_key_fails(history, db, settings):
    with pytest.raises(verifier.Broken, match="not the key you trust"):
        verifier.verify(export(db, settings), "ab" * 32)


def test_a_number_no_checkpoint_covers_yet_is_said_so(db, settings, public_key):
    opt_in(db, PHONE, "deals")
    bundle = export(db, settings)
    assert bundle["checkpoint"] is None
    with pytest.raises(verifier.Broken, match="no signed checkpoint"):
        verifier.verify(bundle, public_key)


def test_the_standalone_verifier_needs_only_the_standard_library_and_cryptography():
    tree = ast.parse(VERIFIER.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - set(sys.stdlib_module_names) == {"cryptography"}


def test_the_commands_export_and_verify_and_the_standalone_file_agrees(history, test_env, tmp_path, public_key):
    environment = {**os.environ, **test_env}
    path = tmp_path / "proof.json"
    exported = subprocess.run([sys.executable, "-m", "gateway.cli", "proof", "export", "(415) 555-0161", "-o",
                               str(path)], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    checked = subprocess.run([sys.executable, "-m", "gateway.cli", "proof", "verify", str(path)], cwd=ROOT,
                             env=environment, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"OK: the consent history of {PHONE} holds")
    # Elsewhere, with nothing of the gateway importable (-I: no current directory, no PYTHONPATH).
    standalone = subprocess.run([sys.executable, "-I", str(VERIFIER), str(path), "--public-key", public_key],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert standalone.returncode == 0, standalone.stderr
    bundle = json.loads(path.read_text())
    bundle["events"][3]["evidence"]["body"] = "YES"
    path.write_text(json.dumps(bundle))
    refused = subprocess.run([sys.executable, "-I", str(VERIFIER), str(path), "--public-key", public_key],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("FAILED: event 4 (opt_out at")
    assert "its evidence was changed" in refused.stderr


def test_the_export_carries_what_a_proof_needs(history, db):
    from gateway.services import privacy

    with db.sessions() as session:
        exported = privacy.export(session, store_consents.find_number(session, PHONE))
    first = exported["events"][0]
    assert {"prev_hash", "evidence_digest", "hash", "number_id", "seq", "input"} <= set(first)
    assert first["prev_hash"] == "0" * 64
