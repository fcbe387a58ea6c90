"""How an audit record is stored: JSON, deflated against a preset dictionary.

An audit record is ~1.8 KB of JSON, most of it the same key names every time (the
feature snapshot's ~30 names, the trace's phrases, the offer's fields), and a page
offer writes one per visitor and window: at 100 k visitors a day that is the larger
part of Valkey's memory (benchmarks/memory_bench.py). Deflate with a preset
dictionary that already holds those names stores each as a short back-reference:
1,817 -> 386 bytes on the demo record, ~40 µs to compress, ~15 to inflate (a new
record is written once per visitor and 10-minute window, not per batch).

The stored value starts with a format byte. `{` is plain JSON (records written before
this format, and what `encode` falls back to should deflating not pay); `\\x01` is
raw deflate against `DICTIONARY_V1`. A stored record must stay readable for its whole
TTL, so a dictionary is frozen once released: tests/test_audit_codec.py pins its
hash. To change it, add `DICTIONARY_V2` under a new format byte and keep reading v1.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

__all__ = ["DICTIONARY_V1", "decode", "encode"]

_V1 = b"\x01"
_WBITS = -15  # raw deflate, 32 KB window: the dictionary fits whole
_LEVEL = 6  # 386 B at ~40 µs; level 1 gives 453 B at ~28 µs, 9 no better than 6

# Frozen: see the module docstring. Most frequent strings last (deflate prefers the
# nearest match; the end of the dictionary is nearest to the record).
DICTIONARY_V1: bytes = (
    b'"prefix":"rb:{c:","action":"callback","channel":"callback","model":{"name":"call'
    b'back:","source":"prior","version":1},"suppressed":"cooldown_rule","holdout":true'
    b',{"id":"","at_ms":1796197122546,"site":"demo-bank","customer_id":null,"anonymous'
    b'_id":"","prefix":"rb:{a:demo-bank:","rule":"","action":"offer","channel":"web","'
    b'offer":{"id":"","title":"","text":"","cta_url":"/","cta_label":"","product":"mor'
    b'tgage"},"rule_set":"","model":{"name":"offer:","version":null,"source":"none"},"'
    b'factors":{"propensity":1.0,"value":100.0,"lever":1.0,"score":100.0,"sampled":0.1'
    b'},"features":{"calc_personal_loan_count":0.0,"calc_personal_loan_amount":0.0,"ca'
    b'lc_personal_loan_term_months":0.0,"calc_personal_loan_max_amount":0.0,"intent_pe'
    b'rsonal_loan":0.0,"category_personal_loan":0.0,"calc_loans_count":0.0,"calc_loans'
    b'_amount":0.0,"calc_loans_term_months":0.0,"calc_loans_max_amount":0.0,"intent_lo'
    b'ans":0.0,"category_loans":0.0,"calc_cards_count":0.0,"calc_cards_amount":0.0,"ca'
    b'lc_cards_term_months":0.0,"calc_cards_max_amount":0.0,"intent_cards":0.0,"catego'
    b'ry_cards":0.0,"calc_savings_count":0.0,"calc_savings_amount":0.0,"calc_savings_t'
    b'erm_months":0.0,"calc_savings_max_amount":0.0,"intent_savings":0.0,"category_sav'
    b'ings":0.0,"calc_investments_count":0.0,"calc_investments_amount":0.0,"calc_inves'
    b'tments_term_months":0.0,"calc_investments_max_amount":0.0,"intent_investments":0'
    b'.0,"category_investments":0.0,"calc_mortgage_count":0.0,"calc_mortgage_amount":0'
    b'.0,"calc_mortgage_term_months":0.0,"calc_mortgage_max_amount":0.0,"intent_mortga'
    b'ge":0.0,"category_mortgage":0.0,"known":0.0,"hour":0.0,"session_number":0.0,"ses'
    b'sion_pages":0.0,"session_events":0.0,"session_dwell_s":0.0,"dwell_s":0.0,"count_'
    b'page_view":0.0,"count_click":0.0,"count_scroll":0.0,"count_heartbeat":0.0,"count'
    b'_calc":0.0,"count_form":0.0,"count_interest":0.0,"count_custom":0.0,"forms_submi'
    b'tted":0.0,"forms_abandoned":0.0,"calc_count":0.0,"since_last_calc_s":0.0,"since_'
    b'call_request_s":0.0,"since_first_seen_days":0.0,"weekday":0.0,"daypart":0.0,"eve'
    b'nt_type":0.0,"utm_source":0.0,"utm_medium":0.0,"utm_campaign":0.0,"referrer_host'
    b'":0.0,"value_tier":0.0,"segment":0.0,"branch":0.0},"holdout":false,"inputs":["cu'
    b'stomer","profile"],"trace":[{"rule":"","result":"unknown","why":"a value it need'
    b's is missing"},{"rule":"","result":"suppressed","why":"anonymous"},{"rule":"","r'
    b'esult":"suppressed","why":"slot_taken"},{"rule":"","result":"suppressed","why":"'
    b'lower_ranked_contact"},{"rule":"","result":"no_match"},{"rule":"","result":"matc'
    b'hed","channel":"web"}]}'
)


def encode(record: dict[str, Any]) -> bytes:
    """The stored form of `record`: deflated JSON under format byte 1."""
    raw = orjson.dumps(record)
    deflate = zlib.compressobj(
        _LEVEL, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY_V1
    )
    packed = deflate.compress(raw) + deflate.flush()
    return _V1 + packed if len(packed) + 1 < len(raw) else raw


def decode(stored: bytes) -> dict[str, Any]:
    """The record from its stored form, whichever format it was written in.

    >>> decode(encode({"id": "d1", "features": {"hour": 7.0}}))
    {'id': 'd1', 'features': {'hour': 7.0}}
    >>> decode(b'{"id": "old"}')
    {'id': 'old'}
    """
    if stored[:1] == _V1:
        inflate = zlib.decompressobj(_WBITS, DICTIONARY_V1)
        stored = inflate.decompress(stored[1:]) + inflate.flush()
    record: dict[str, Any] = orjson.loads(stored)
    return record
