#!/usr/bin/env python3
"""Check a consent proof bundle (format "smsgate-proof/1", docs/proofs.md) with nothing but the
Python standard library and `cryptography`: no database, no gateway code, no network.

    python3 verify_proof.py BUNDLE.json --public-key HEX

It recomputes every event's evidence digest and hash, follows the links from the first event to the
head, and checks that the signed ledger checkpoint in the bundle covers the chain: its Ed25519
signature by the public key you trust (the operator publishes it: `smsgate ledger public-key`), and
the Merkle inclusion proof of the chain's head in the checkpoint's root (RFC 9162). Exit 0 when the
bundle holds; 1 naming the first event or part that does not.

The bundle's events are the person's whole consent history with this sender's operator. An event
whose evidence was erased at the person's request (GDPR) keeps its evidence digest: the chain still
proves what happened and when, not what the redacted evidence said.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "smsgate-proof/1"
CHECKPOINT_FORMAT = "smsgate-ledger-checkpoint/1"
GENESIS_HASH = "0" * 64
# What an event's hash covers, in the gateway's canonical JSON (sorted keys, no spaces, UTF-8).
HASHED = ("number_id", "seq", "type", "input", "program_id", "status_before", "status_after", "expires_at",
          "source", "actor", "reference", "evidence_digest", "occurred_at", "prev_hash")


class Broken(Exception):
    """The bundle does not prove what it claims; the message says where."""


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """The root an inclusion proof leads to (RFC 9162 section 2.1.3.2), or None if it cannot."""
    if index >= size:
        return None
    fn, sn, result = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    return result if sn == 0 else None


def check_events(bundle: dict) -> str:
    """Every event's digest, hash and link; returns the hash the chain ends at."""
    number_id, events = bundle["number_id"], bundle["events"]
    erased = any(event["type"] == "erasure" for event in events)
    previous = GENESIS_HASH
    for position, event in enumerate(events, start=1):
        where = f"event {position} ({event.get('type')} at {event.get('occurred_at')})"
        if event["number_id"] != number_id:
            raise Broken(f"{where}: belongs to another number's chain")
        if event["seq"] != position:
            raise Broken(f"{where}: has seq {event['seq']}, expected {position}: an event was removed or reordered")
        if event["prev_hash"] != previous:
            raise Broken(f"{where}: does not follow the event before it: an event was removed, added or reordered")
        redacted = erased and event["evidence"] == {"redacted": True}
        if not redacted and sha256_hex(canonical(event["evidence"])) != event["evidence_digest"]:
            raise Broken(f"{where}: its evidence was changed")
        if sha256_hex(canonical({name: event[name] for name in HASHED})) != event["hash"]:
            raise Broken(f"{where}: its content was changed")
        previous = event["hash"]
    head = bundle["head"]
    if head["seq"] != len(events) or head["hash"] != previous:
        raise Broken(f"the chain ends at seq {len(events)} but the bundle's head says seq {head['seq']}: "
                     "events were removed or the head was changed")
    return previous


def check_checkpoint(bundle: dict, public_key: str) -> str:
    """The checkpoint's signature by `public_key` and the chain's place in it; returns what it proves."""
    checkpoint = bundle.get("checkpoint")
    if checkpoint is None:
        raise Broken("the bundle carries no signed checkpoint: the chain is proven only against itself")
    if checkpoint["public_key"] != public_key:
        raise Broken(f"the checkpoint was signed by key {checkpoint['public_key'][:16]}…, not the key you trust")
    message = (f"{CHECKPOINT_FORMAT}\ncreated_at {checkpoint['created_at']}\npublic_key {checkpoint['public_key']}\n"
               f"size {checkpoint['size']}\nroot {checkpoint['root']}\n").encode("ascii")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(
            bytes.fromhex(checkpoint["signature"]), message)
    except (InvalidSignature, ValueError):
        raise Broken("the checkpoint's signature does not hold: its root, size, time or key was changed") from None
    signed = checkpoint["head"]
    events = bundle["events"]
    if not 1 <= signed["seq"] <= len(events) or events[signed["seq"] - 1]["hash"] != signed["hash"]:
        raise Broken(f"the checkpoint of {checkpoint['created_at']} signed seq {signed['seq']} of this chain, "
                     "which the bundle's events do not hold: the chain was rewritten after it was signed")
    leaf = leaf_hash(f"{bundle['number_id']}:{signed['seq']}:{signed['hash']}".encode("ascii"))
    path = [bytes.fromhex(node) for node in checkpoint["inclusion_proof"]]
    root = root_from_inclusion(leaf, checkpoint["leaf_index"], checkpoint["size"], path)
    if root is None or root.hex() != checkpoint["root"]:
        raise Broken("the chain's head is not in the checkpoint's signed root: the inclusion proof does not hold")
    return f"events 1 to {signed['seq']} are in the checkpoint signed {checkpoint['created_at']}"


def verify(bundle: dict, public_key: str) -> list[str]:
    """Raise Broken, or return what the bundle proves, one line each."""
    if bundle.get("format") != FORMAT:
        raise Broken(f"not a {FORMAT} bundle")
    check_events(bundle)
    proven = [f"{len(bundle['events'])} events chain from the first to the head, unchanged"]
    proven.append(check_checkpoint(bundle, public_key))
    later = len(bundle["events"]) - bundle["checkpoint"]["head"]["seq"]
    if later:
        proven.append(f"{later} later events are chained after it, not yet covered by a checkpoint in this bundle")
    return proven


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="the proof bundle (JSON)")
    parser.add_argument("--public-key", required=True, help="the operator's ledger public key, 64 hex digits")
    args = parser.parse_args(argv)
    with open(args.bundle, encoding="utf-8") as handle:
        bundle = json.load(handle)
    try:
        proven = verify(bundle, args.public_key.strip().lower())
    except (Broken, KeyError, TypeError, ValueError) as error:
        problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        print(f"FAILED: {problem}", file=sys.stderr)
        return 1
    print(f"OK: the consent history of {bundle.get('number')} holds")
    for line in proven:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
