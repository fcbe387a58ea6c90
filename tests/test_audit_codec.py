"""Audit records are stored deflated against a frozen dictionary: every record reads
back exactly as written (keys in their order, every feature), records stored before
the format or under the previous dictionary still read, no dictionary can change under
stored records, and a real decision's record is several times smaller than its JSON."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import REPO, StoreTarget
from hypothesis import given
from hypothesis import strategies as st

from engine.decisions.loader import RuleSet, load_rules
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


# A page offer as the memory bench's decide phase writes it (the demo pack, one
# anonymous visitor on the mortgage journey), with every field records carry now.
FULL_RECORD: dict[str, Any] = {
    "id": "01a237607cc0cc3c7eec39a1",
    "at_ms": 1796225652342,
    "site": "demo-bank",
    "customer_id": None,
    "anonymous_id": "j2kbkjfl6y5fe1fp4hz4410im",
    "prefix": "rb:{a:demo-bank:j2kbkjfl6y5fe1fp4hz4410im}",
    "rule": "mortgage_adviser_offer",
    "action": "offer",
    "channel": "web",
    "offer": {
        "id": "mortgage_adviser_call",
        "title": "Talk to a mortgage adviser today",
        "text": "One of our advisers can check your numbers with you and show what you "
        "could borrow.",
        "cta_url": "/mortgages/advice",
        "cta_label": "Request a call",
        "product": "mortgage",
    },
    "rule_set": "4834d4aeda2d",
    "model": {"name": "offer:mortgage_adviser_call", "version": None, "source": "none"},
    "factors": {"propensity": 1.0, "value": 900.0, "lever": 1.2, "score": 1080.0},
    "features": {
        "known": 0.0,
        "hour": 15.0,
        "weekday": "wed",
        "daypart": "afternoon",
        "event_type": "calc",
        "session_number": 1.0,
        "session_pages": 7.0,
        "session_events": 10.0,
        "session_dwell_s": 0.0,
        "dwell_s": 0.0,
        "count_page_view": 7.0,
        "count_click": 0.0,
        "count_scroll": 0.0,
        "count_heartbeat": 0.0,
        "count_calc": 3.0,
        "count_form": 0.0,
        "count_interest": 0.0,
        "count_custom": 0.0,
        "forms_submitted": 0.0,
        "forms_abandoned": 0.0,
        "calc_count": 3.0,
        "calc_mortgage_count": 3.0,
        "calc_mortgage_amount": 219000.0,
        "calc_mortgage_term_months": 300.0,
        "calc_mortgage_max_amount": 236000.0,
        "intent_mortgage": 14.997589,
        "category_mortgage": 6.0,
        "since_last_calc_s": 8.0,
        "since_first_seen_days": 0.000462962962962963,
        "seg_mortgage_researchers": 1.0,
    },
    "holdout": False,
    "inputs": ["customer", "profile"],
    "trace": [
        {
            "rule": "card_comparison_offer",
            "result": "unknown",
            "why": "a value it needs is missing",
        },
        {
            "rule": "fund_comparison_appointment",
            "result": "unknown",
            "why": "a value it needs is missing",
        },
        {"rule": "mortgage_calculator_callback", "result": "suppressed", "why": "anonymous"},
        {"rule": "mortgage_adviser_offer", "result": "matched", "channel": "web"},
        {
            "rule": "churn_risk_help_offer",
            "result": "unknown",
            "why": "a value it needs is missing",
        },
    ],
    "attribution": {"campaign": "spring", "source": "google", "referrer": "www.google.com"},
    "segments": ["mortgage_researchers"],
    "branch": "",
    "customer_value": 21.0,
}


@given(st.dictionaries(st.text(max_size=30), json_values, max_size=12))
def test_any_record_reads_back_exactly(record: dict[str, Any]) -> None:
    assert audit_codec.decode(audit_codec.encode(record)) == record


def test_a_record_stored_as_plain_json_still_reads() -> None:
    assert audit_codec.decode(orjson.dumps(RECORD)) == RECORD


def test_the_released_dictionaries_never_change() -> None:
    """Records live for their TTL: a changed dictionary would make them unreadable.
    Add a new format byte and dictionary instead of editing one."""
    digest = hashlib.sha256(audit_codec.DICTIONARY_V1).hexdigest()
    assert digest == "90105746d785c9d08fdf116ea48f7d473a3bc904365fb155689be9dea4630420"
    digest = hashlib.sha256(audit_codec.DICTIONARY_V2).hexdigest()
    assert digest == "9c442c96587594200f3c128a8bd3fd282363457f7afad9618b6d72d929601d4f"


def _stored_v1(record: dict[str, Any]) -> bytes:
    """A record as the previous release wrote it: format byte 1, deflated against v1."""
    deflate = zlib.compressobj(
        6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, audit_codec.DICTIONARY_V1
    )
    return b"\x01" + deflate.compress(orjson.dumps(record)) + deflate.flush()


def test_a_record_stored_under_the_first_dictionary_still_reads() -> None:
    for record in (RECORD, FULL_RECORD):
        assert audit_codec.decode(_stored_v1(record)) == record


def test_a_full_record_reads_back_byte_for_byte() -> None:
    """What `GET /v1/decisions/{id}` and the learner read: every key in its order,
    every feature (zero counts too) with its value and type."""
    back = audit_codec.decode(audit_codec.encode(FULL_RECORD))
    assert orjson.dumps(back) == orjson.dumps(FULL_RECORD)
    assert list(back["features"]) == list(FULL_RECORD["features"])


def test_a_decision_record_is_stored_in_a_third_of_its_json() -> None:
    stored = audit_codec.encode(RECORD)
    assert stored[:1] == b"\x02"
    assert len(stored) < len(orjson.dumps(RECORD)) / 3


def test_a_full_page_offer_is_stored_smaller_than_under_the_first_dictionary() -> None:
    """The memory bench's record: the demo pack's page offer with attribution, segments
    and the whole feature snapshot; v2 knows their words, v1 did not."""
    stored = audit_codec.encode(FULL_RECORD)
    assert len(stored) < len(_stored_v1(FULL_RECORD)) * 2 / 3
    assert len(stored) < len(orjson.dumps(FULL_RECORD)) / 6


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


async def test_a_record_the_previous_release_stored_reads_through_valkey(store: Store) -> None:
    """A rolling upgrade: records written under v1 stay readable for their TTL."""
    key = keys.decision_key(FULL_RECORD["id"])
    await store.call("SET", key, _stored_v1(FULL_RECORD), writes=True)
    back = await read_audit(store, FULL_RECORD["id"])
    assert back is not None and orjson.dumps(back) == orjson.dumps(FULL_RECORD)


# A bank's own rule pack: none of its offers', rules' or segments' words are in v2.
BANK_PACK = """
offers:
  - id: harbour_home_loan_chat
    title: Speak with a Harbour home-loan specialist
    text: Our lending team will walk through your deposit, repayments and timeline.
    cta_url: /home-loans/specialist
    cta_label: Arrange a chat
    product: mortgage
    value: 900
    channels: [web]
rules:
  - id: harbour_home_loan_banner
    when: profile.calc.mortgage.count >= 1
    action: {type: offer, offer: harbour_home_loan_chat, slot: hero}
    priority: 5
  - id: harbour_dormant_saver_nudge
    when: profile.counts.page_view >= 40
    action: {type: offer, offer: harbour_home_loan_chat, slot: hero}
    priority: 1
segments:
  - id: harbour_first_home_buyers
    when: profile.calc.mortgage.count >= 1
"""


@pytest.fixture
def bank_rules(tmp_path: Path) -> RuleSet:
    (tmp_path / "bank.yaml").write_text(BANK_PACK)
    return load_rules(tmp_path)


def _bank_record(rs: RuleSet, decision_id: str) -> dict[str, Any]:
    """FULL_RECORD as the bank's pack would write it: its offer, rule ids, segment."""
    record: dict[str, Any] = orjson.loads(orjson.dumps(FULL_RECORD))
    record["id"] = decision_id
    record["rule"] = "harbour_home_loan_banner"
    record["offer"] = rs.offers["harbour_home_loan_chat"].public()
    record["features"]["seg_harbour_first_home_buyers"] = 1.0
    del record["features"]["seg_mortgage_researchers"]
    record["trace"] = [
        {"rule": "harbour_dormant_saver_nudge", "result": "no_match"},
        {"rule": "harbour_home_loan_banner", "result": "matched", "channel": "web"},
    ]
    record["segments"] = ["harbour_first_home_buyers"]
    return record


@pytest.fixture(autouse=True)
def _fresh_dictionaries() -> Iterator[None]:
    """Each test starts as a fresh process: no rule-set dictionary known or stored."""
    audit_codec.forget_dictionaries()
    yield
    audit_codec.forget_dictionaries()


def test_the_demo_pack_keeps_writing_v2() -> None:
    """v2 already holds the demo pack's words: its rule-set dictionary is v2 itself,
    so its records stay v2 (9 B shorter, no dictionary to store)."""
    rsd = audit_codec.rule_set_dictionary(load_rules(REPO / "rules"))
    assert rsd.covered and rsd.data == audit_codec.DICTIONARY_V2
    assert audit_codec.encode(FULL_RECORD, rsd) == audit_codec.encode(FULL_RECORD)


def test_a_rule_set_dictionary_is_built_once_and_ends_with_the_engine_words(
    bank_rules: RuleSet,
) -> None:
    rsd = audit_codec.rule_set_dictionary(bank_rules)
    assert audit_codec.rule_set_dictionary(bank_rules) is rsd
    assert not rsd.covered
    assert rsd.data.endswith(audit_codec.ENGINE_VOCABULARY)
    assert b"Speak with a Harbour home-loan specialist" in rsd.data
    assert rsd.id == hashlib.sha256(rsd.data).digest()[:8]


def test_a_huge_pack_keeps_its_last_words_within_32_kb() -> None:
    words = [b'{"rule":"rule_%05d","result":"unknown"},' % i for i in range(5000)]
    rsd = audit_codec.build_dictionary(words)
    assert len(rsd.data) <= 32 * 1024
    assert rsd.data.endswith(words[-1] + audit_codec.ENGINE_VOCABULARY)
    assert words[0] not in rsd.data


def test_a_bank_record_reads_back_with_its_dictionary_only(bank_rules: RuleSet) -> None:
    rsd = audit_codec.rule_set_dictionary(bank_rules)
    record = _bank_record(bank_rules, "01a237607cc0cc3c7eec39a2")
    stored = audit_codec.encode(record, rsd)
    assert stored[:1] == b"\x03" and audit_codec.dictionary_id(stored) == rsd.id
    assert audit_codec.dictionary_id(audit_codec.encode(record)) is None
    assert orjson.dumps(audit_codec.decode(stored, rsd.data)) == orjson.dumps(record)
    audit_codec.forget_dictionaries()
    with pytest.raises(KeyError):
        audit_codec.decode(stored)


def test_a_dictionary_is_stored_on_first_use_then_hourly() -> None:
    rsd = audit_codec.build_dictionary([b'"offer":{"id":"x"},'])
    assert rsd.due(1000.0)
    assert not rsd.due(1000.0 + audit_codec.STORE_EVERY_S - 1)
    assert rsd.due(1000.0 + audit_codec.STORE_EVERY_S)


async def test_a_bank_record_is_smaller_than_under_v2_and_reads_back(
    store: Store, bank_rules: RuleSet
) -> None:
    record = _bank_record(bank_rules, "01a237607cc0cc3c7eec39a3")
    await write_audit(store, record["id"], record, bank_rules)
    stored = await store.call("GET", keys.decision_key(record["id"]), raw=True)
    assert stored[:1] == b"\x03"
    assert len(stored) < len(audit_codec.encode(record)) - 100  # v2: ~160 B more
    back = await read_audit(store, record["id"])
    assert back is not None and orjson.dumps(back) == orjson.dumps(record)


async def test_a_bank_record_reads_after_a_restart_from_valkey(
    store: Store, bank_rules: RuleSet
) -> None:
    """A restarted process (or another worker, or the learner) knows no dictionary:
    it reads the one stored with the record, for longer than the record lives."""
    record = _bank_record(bank_rules, "01a237607cc0cc3c7eec39a4")
    await write_audit(store, record["id"], record, bank_rules)
    did = audit_codec.rule_set_dictionary(bank_rules).id
    dict_key = keys.audit_dictionary(did.hex())
    record_ttl = await store.call("TTL", keys.decision_key(record["id"]))
    dict_ttl = await store.call("TTL", dict_key)
    assert record_ttl > 0 and dict_ttl > record_ttl + 86400
    audit_codec.forget_dictionaries()
    back = await read_audit(store, record["id"])
    assert back is not None and orjson.dumps(back) == orjson.dumps(record)
    assert audit_codec.known_dictionary(did) is not None  # cached: read once


async def test_a_record_whose_dictionary_is_gone_reads_as_none(
    store: Store, bank_rules: RuleSet
) -> None:
    record = _bank_record(bank_rules, "01a237607cc0cc3c7eec39a5")
    await write_audit(store, record["id"], record, bank_rules)
    did = audit_codec.rule_set_dictionary(bank_rules).id
    await store.call("DEL", keys.audit_dictionary(did.hex()), writes=True)
    audit_codec.forget_dictionaries()
    unreadable = store.metrics.audit_unreadable._value.get()
    assert await read_audit(store, record["id"]) is None
    assert store.metrics.audit_unreadable._value.get() == unreadable + 1  # ops can see it
