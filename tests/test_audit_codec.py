"""Audit records are stored deflated against a frozen dictionary: every record reads
back exactly as written, records stored before the format still read, the dictionary
cannot change under stored records, and a real decision's record is several times
smaller than its JSON."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from conftest import StoreTarget
from hypothesis import given
from hypothesis import strategies as st

from engine.delivery import audit_codec
from engine.delivery.records import read_audit, write_audit
from engine.valkey import keys
from engine.valkey.store import Store

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5)
    ),
    max_leaves=30,
)

RECORD: dict[str, Any] = {
    "id": "01a235a908c0bd2a801d2cdb",
    "at_ms": 1796197122546,
    "site": "demo-bank",
    "customer_id": None,
    "anonymous_id": "k3j4h5g6f7d8s9a0q1w2e3r4t",
    "prefix": "rb:{a:demo-bank:k3j4h5g6f7d8s9a0q1w2e3r4t}",
    "rule": "mortgage_adviser_offer",
    "action": "offer",
    "channel": "web",
    "offer": {"id": "mortgage_adviser_call", "title": "Talk to an adviser", "product": "mortgage"},
    "rule_set": "1083d753e14c",
    "model": {"name": "offer:mortgage_adviser_call", "version": 4, "source": "model"},
    "factors": {"propensity": 0.12, "value": 900.0, "lever": 1.2, "score": 129.6},
    "features": {
        "known": 0.0,
        "hour": 7.0,
        "weekday": "wed",
        "daypart": "morning",
        "event_type": "calc",
        "count_page_view": 7.0,
        "count_calc": 3.0,
        "calc_mortgage_amount": 226000.0,
        "intent_mortgage": 14.997593,
    },
    "holdout": False,
    "inputs": ["customer", "profile"],
    "trace": [
        {
            "rule": "card_comparison_offer",
            "result": "unknown",
            "why": "a value it needs is missing",
        },
        {"rule": "mortgage_adviser_offer", "result": "matched", "channel": "web"},
    ],
}


@given(st.dictionaries(st.text(max_size=30), json_values, max_size=12))
def test_any_record_reads_back_exactly(record: dict[str, Any]) -> None:
    assert audit_codec.decode(audit_codec.encode(record)) == record


def test_a_record_stored_as_plain_json_still_reads() -> None:
    assert audit_codec.decode(orjson.dumps(RECORD)) == RECORD


def test_the_released_dictionary_never_changes() -> None:
    """Records live for their TTL: a changed dictionary would make them unreadable.
    Add a new format byte and dictionary instead of editing this one."""
    digest = hashlib.sha256(audit_codec.DICTIONARY_V1).hexdigest()
    assert digest == "90105746d785c9d08fdf116ea48f7d473a3bc904365fb155689be9dea4630420"


def test_a_decision_record_is_stored_in_a_third_of_its_json() -> None:
    stored = audit_codec.encode(RECORD)
    assert stored[:1] == b"\x01"
    assert len(stored) < len(orjson.dumps(RECORD)) / 3


@pytest.fixture
async def store(redis: Any, store_target: StoreTarget) -> AsyncIterator[Store]:
    s = store_target.store()
    yield s
    await s.close()


async def test_write_then_read_through_valkey(store: Store) -> None:
    await write_audit(store, RECORD["id"], RECORD)
    assert await read_audit(store, RECORD["id"]) == RECORD
    stored = await store.call("GET", keys.decision_key(RECORD["id"]), raw=True)
    assert isinstance(stored, bytes) and len(stored) < len(orjson.dumps(RECORD)) / 3
