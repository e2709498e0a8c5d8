"""The event hash written out key by key is byte for byte the canonical JSON of decisions/0002: the
hashes of every chain ever written, and tools/verify_proof.py, depend on it."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.ledger import HASHED, _content_text, chain, event_hash, evidence_digest, hashed_content

text = st.text(max_size=40)  # any code point: quotes, backslashes, control characters, U+2028, emoji
maybe_text = st.none() | text
moments = st.none() | st.datetimes(timezones=st.just(UTC))  # microseconds zero or not
# What a tampered SQLite row may hold in a text column: other JSON kinds.
odd = st.none() | text | st.integers() | st.booleans() | st.floats(allow_nan=False)


def reference_hash(content: dict) -> str:
    """The definition: SHA-256 of json.dumps with sorted keys, no spaces, UTF-8 as is."""
    fields = {name: content[name] for name in HASHED}
    fields["expires_at"] = fields["expires_at"].isoformat(timespec="microseconds") if fields["expires_at"] else None
    fields["occurred_at"] = fields["occurred_at"].isoformat(timespec="microseconds") if fields["occurred_at"] else None
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     default=str).encode()).hexdigest()


class Row:
    def __init__(self, content: dict):
        self.__dict__.update(content)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "number_id": st.integers(min_value=1, max_value=2**62), "seq": st.integers(min_value=1, max_value=10**6),
    "type": text, "input": text, "program_id": st.none() | st.integers(min_value=1, max_value=10**9),
    "status_before": maybe_text, "status_after": maybe_text, "expires_at": moments, "source": text,
    "actor": odd, "reference": odd, "evidence_digest": text, "occurred_at": moments, "prev_hash": text,
}))
def test_the_fast_hash_is_the_canonical_json_hash(content):
    fast = hashlib.sha256(_content_text(content).encode()).hexdigest()
    assert event_hash(Row(content)) == reference_hash(content) == fast


def test_hashed_content_is_what_the_hash_covers():
    at = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    content = {"number_id": 7, "seq": 2, "type": "opt_out", "input": "keyword_stop", "program_id": 3,
               "status_before": "opted_in", "status_after": "opted_out", "expires_at": None, "source": "sms",
               "actor": "twilio", "reference": "SM1", "evidence_digest": "d" * 64,
               "occurred_at": at + timedelta(microseconds=5), "prev_hash": "p" * 64}
    canonical = json.dumps(hashed_content(Row(content)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert event_hash(Row(content)) == hashlib.sha256(canonical.encode()).hexdigest()


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | text,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4)))
def test_the_evidence_digest_is_the_canonical_json_digest(evidence):
    canonical = json.dumps(evidence, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    assert evidence_digest(evidence) == hashlib.sha256(canonical.encode()).hexdigest()


evidences = st.recursive(st.none() | st.booleans() | st.integers() | text,
                         lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(text, evidences, max_size=5), st.fixed_dictionaries({
    "type": text, "input": text, "program_id": st.none() | st.integers(min_value=1, max_value=10**9),
    "status_before": maybe_text, "status_after": maybe_text, "expires_at": moments, "source": text,
    "actor": maybe_text, "reference": maybe_text, "occurred_at": st.datetimes(timezones=st.just(UTC)),
}))
def test_a_chained_events_json_is_its_row_with_the_very_evidence_text_hashed(evidence, draft):
    first, second = chain(7, 3, "p" * 64, [dict(draft, evidence=evidence), dict(draft, evidence=evidence)])
    canonical = json.dumps(evidence, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    for event in (first, second):
        row = event.row()
        assert event.hash == reference_hash(row) and event.evidence_digest == evidence_digest(evidence)
        # The evidence as the digest's very text, then every column's value.
        assert event.json.startswith(f'{{"evidence":{canonical},"hash":"{event.hash}",')
        stored = json.loads(event.json)
        for moment in ("expires_at", "occurred_at"):
            row[moment] = row[moment].isoformat(timespec="microseconds") if row[moment] else None
        assert stored == row
    assert (first.seq, second.seq, second.prev_hash) == (4, 5, first.hash)
