"""Proof bundles: one number's consent history with what anyone needs to check it offline
(docs/proofs.md; the checker is tools/verify_proof.py).

A bundle holds every ledger event of the number exactly as its hash covers it, the chain's head, and
the newest signed ledger checkpoint that covers the chain, with the Merkle inclusion proof of the
number's head in that checkpoint's signed root. Whoever holds the operator's public key can then show
that the history was not edited, shortened or reordered since the checkpoint was signed.
"""

from __future__ import annotations

from bisect import bisect_left

from sqlalchemy.orm import Session

from gateway.config import Settings
from gateway.domain import ledger, merkle
from gateway.services import consents
from gateway.store import checkpoints
from gateway.store.models import PhoneNumber, utcnow

FORMAT = "smsgate-proof/1"


def bundle(session: Session, number: PhoneNumber, settings: Settings) -> dict:
    """The proof bundle of `number` (its checkpoint is None when no signed checkpoint covers it yet:
    `smsgate ledger checkpoint` takes one)."""
    events = consents.events(session, number)
    checkpoint_log, signer = checkpoints.from_settings(settings)
    newest, _problems = checkpoint_log.newest()  # a file that fails its own check is never used
    return {
        "format": FORMAT,
        "number": number.e164,
        "number_id": number.id,
        "created_at": utcnow().isoformat(timespec="seconds"),
        "public_key": signer.public_key,
        "events": [{**ledger.hashed_content(event), "evidence": event.evidence, "hash": event.hash,
                    "program": event.program.slug if event.program else None} for event in events],
        "head": {"seq": number.ledger_seq, "hash": number.ledger_head},
        "checkpoint": None if newest is None else _covering(newest, number.id),
    }


def _covering(checkpoint: checkpoints.Checkpoint, number_id: int) -> dict | None:
    heads = list(checkpoint.heads())  # ascending number id
    index = bisect_left([head.number_id for head in heads], number_id)
    if index == len(heads) or heads[index].number_id != number_id:
        return None  # the number's chain began after this checkpoint was signed
    head = heads[index]
    path = merkle.inclusion_proof([each.leaf() for each in heads], index)
    return {
        "created_at": checkpoint.created_at, "public_key": checkpoint.public_key, "size": checkpoint.size,
        "root": checkpoint.root, "signature": checkpoint.signature,
        "head": {"seq": head.seq, "hash": head.hash}, "leaf_index": index,
        "inclusion_proof": [node.hex() for node in path],
    }
