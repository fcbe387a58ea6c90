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
raw deflate against `DICTIONARY_V1`; `\\x02` against `DICTIONARY_V2`; `\\x03` against
the deciding rule set's own dictionary (below). A stored record must stay readable for
its whole TTL, so a dictionary is frozen once released: tests/test_audit_codec.py pins
both hashes. To change one, add another under a new format byte and keep reading the
others.

Why v2: records grew attribution, segments, branch, customer value and feature names
(`seg_<id>`, `since_*`, the session's) that v1 predates, and v1 has none of a rule
pack's own words, so a page offer's title and text (~100 B deflated) and the trace's
rule ids (~70 B) went in as literals: 442 B a record in the memory bench. v2 holds the
engine's vocabulary in the order records are written (the common page offer of an
anonymous visitor nearest), and before it the shipped demo pack's (`rules/`: offers,
rule ids, segment ids), which is what the demo and the benches run: 239 B on the
bench's records, ~403 B for a bank whose rules share none of the demo's words (still
less than v1). Leaving the zero `count_<type>` features out and restoring them on
read saved 1.5 B more on top of v2 (the dictionary already holds that run of zeros):
not worth a second shape of the feature snapshot.

Why v3: a bank runs its own rule pack, whose offer texts, rule ids and segment ids v2
does not hold: 421 B a record in the memory bench's `--pack bank`, 249 B under v3.
`\\x03` deflates against a dictionary built from the record's own rule set
(`rule_set_dictionary`: its offers, rule ids and segment ids as records write them,
then v2's engine part, nearest the record), named in the record by the first 8 bytes of
its sha256. It is not frozen in the code, so it is stored in Valkey
(engine/delivery/records.py) for longer than any record that uses it; a reader finds it
in this process's cache (`known_dictionary`) or there. The shipped demo pack, whose
words v2 already holds, keeps writing v2 (9 B shorter: no id).
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from engine.decisions.loader import RuleSet

__all__ = [
    "DICTIONARY_V1",
    "DICTIONARY_V2",
    "ENGINE_VOCABULARY",
    "RuleSetDictionary",
    "build_dictionary",
    "decode",
    "dictionary_id",
    "encode",
    "forget_dictionaries",
    "known_dictionary",
    "remember_dictionary",
    "rule_set_dictionary",
]

_V1 = b"\x01"
_V2 = b"\x02"
_V3 = b"\x03"
_ID_LEN = 8  # bytes of the dictionary's sha256 a v3 record starts with
_WBITS = -15  # raw deflate, 32 KB window: the dictionary fits whole
_LEVEL = 6  # v1: 386 B at ~40 µs; level 1 gave 453 B at ~28 µs; 9 saves ~3 B on v2

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


# Frozen: see the module docstring. Generated once from the demo pack (`rules/`) and
# the record's shape; the demo's words first, the engine's nearest the record.
DICTIONARY_V2: bytes = (
    b'"offer":{"id":"mortgage_adviser_call","title":"Talk to a mortgage adviser today"'
    b',"text":"One of our advisers can check your numbers with you and show what you c'
    b'ould borrow.","cta_url":"/mortgages/advice","cta_label":"Request a call","produc'
    b't":"mortgage"},"offer":{"id":"personal_loan_finish","title":"Finish your loan ap'
    b'plication in minutes","text":"Your details are saved. Pick up where you left off'
    b', or let us call you.","cta_url":"/personal-loan/apply","cta_label":"Continue ap'
    b'plication","product":"loans"},"offer":{"id":"card_cashback","title":"1% cashback'
    b' on everyday spending","text":"Compare our cards side by side; the Cashback card'
    b' has no annual fee in year one.","cta_url":"/cards/compare","cta_label":"Compare'
    b' cards","product":"cards"},"offer":{"id":"advisor_appointment","title":"Book a f'
    b'ree investment review","text":"Meet an adviser at your branch or by video to rev'
    b'iew which funds fit your goals.","cta_url":"/invest/appointment","cta_label":"Bo'
    b'ok an appointment","product":"investments"},"offer":{"id":"retention_call","titl'
    b'e":"Can we help?","text":"We noticed you were looking at fees. A specialist can '
    b'review your account with you.","cta_url":"/help/contact","cta_label":"Talk to us'
    b'","product":"retention"},"offer":{"id":"savings_rate_for_customers","title":"A b'
    b'etter rate for existing customers","text":"As a customer you can open a fixed-te'
    b'rm saver at our loyalty rate in two minutes.","cta_url":"/savings/fixed-term","c'
    b'ta_label":"See the rate","product":"savings"},{"rule":"call_me_requested","resul'
    b't":"unknown"},{"rule":"card_comparison_offer","result":"unknown"},{"rule":"fund_'
    b'comparison_appointment","result":"unknown"},{"rule":"mortgage_calculator_callbac'
    b'k","result":"unknown"},{"rule":"mortgage_adviser_offer","result":"unknown"},{"ru'
    b'le":"personal_loan_abandoned","result":"unknown"},{"rule":"personal_loan_resume_'
    b'offer","result":"unknown"},{"rule":"churn_risk_retention_call","result":"unknown'
    b'"},{"rule":"churn_risk_help_offer","result":"unknown"},{"rule":"returning_custom'
    b'er_savings","result":"unknown"},"seg_mortgage_researchers":1.0,"seg_high_value_d'
    b'igital":1.0,"seg_returning_after_price_check":1.0,"segments":["mortgage_research'
    b'ers","high_value_digital","returning_after_price_check"],"suppressed":"cooldown_'
    b'rule","suppressed":"cooldown_channel","suppressed":"daily_cap","why":"do_not_cal'
    b'l"},"why":"no_consent"},"why":"outside_hours"},"why":"no_capacity"},"why":"holdo'
    b'ut"},"holdout":true,"action":"notify","channel":"email","channel":"sms","action"'
    b':"callback","channel":"callback","model":{"name":"callback:","version":1,"source'
    b'":"prior"},"source":"model"},{"id":"","at_ms":1796197122546,"site":"","customer_'
    b'id":"","anonymous_id":"","prefix":"rb:{c:","attribution":{"campaign":"","reporte'
    b'd_campaign":"(other)","source":"google","medium":"cpc","term":"","content":"","r'
    b'eferrer":"www.google.com","first_campaign":"","first_source":"","first_medium":"'
    b'","first_referrer":""},"features":{"known":1.0,"utm_source":"","utm_medium":"","'
    b'utm_campaign":"","referrer_host":"","value_tier":"standard","value_tier":"vip","'
    b'value_tier":"private","segment":"","branch":"","holds_current_account":1.0,"hold'
    b's_"calc_personal_loan_count":1.0,"calc_personal_loan_amount":0.0,"calc_personal_'
    b'loan_term_months":0.0,"calc_personal_loan_max_amount":0.0,"intent_personal_loan"'
    b':0.0,"category_personal_loan":0.0,"calc_loans_count":1.0,"calc_loans_amount":0.0'
    b',"calc_loans_term_months":0.0,"calc_loans_max_amount":0.0,"intent_loans":0.0,"ca'
    b'tegory_loans":0.0,"calc_cards_count":1.0,"calc_cards_amount":0.0,"calc_cards_ter'
    b'm_months":0.0,"calc_cards_max_amount":0.0,"intent_cards":0.0,"category_cards":0.'
    b'0,"calc_savings_count":1.0,"calc_savings_amount":0.0,"calc_savings_term_months":'
    b'0.0,"calc_savings_max_amount":0.0,"intent_savings":0.0,"category_savings":0.0,"c'
    b'alc_investments_count":1.0,"calc_investments_amount":0.0,"calc_investments_term_'
    b'months":0.0,"calc_investments_max_amount":0.0,"intent_investments":0.0,"category'
    b'_investments":0.0,"calc_mortgage_count":1.0,"calc_mortgage_amount":0.0,"calc_mor'
    b'tgage_term_months":0.0,"calc_mortgage_max_amount":0.0,"intent_mortgage":0.0,"cat'
    b'egory_mortgage":0.0,"since_call_request_s":0.0,{"id":"","at_ms":1796197122546,"s'
    b'ite":"","customer_id":null,"anonymous_id":"","prefix":"rb:{a:","rule":"","action'
    b'":"offer","channel":"web","offer":{"id":"","title":"","text":"","cta_url":"/","c'
    b'ta_label":"","product":""},"rule_set":"","model":{"name":"offer:","version":null'
    b',"source":"none"},"factors":{"propensity":1.0,"value":100.0,"lever":1.0,"score":'
    b'100.0},"features":{"known":0.0,"hour":12.0,"weekday":"mon","weekday":"tue","week'
    b'day":"thu","weekday":"fri","weekday":"sat","weekday":"sun","weekday":"wed","dayp'
    b'art":"night","daypart":"evening","daypart":"late","daypart":"morning","daypart":'
    b'"afternoon","event_type":"page_view","event_type":"calc","session_number":1.0,"s'
    b'ession_pages":0.0,"session_events":0.0,"session_dwell_s":0.0,"dwell_s":0.0,"coun'
    b't_page_view":0.0,"count_click":0.0,"count_scroll":0.0,"count_heartbeat":0.0,"cou'
    b'nt_calc":0.0,"count_form":0.0,"count_interest":0.0,"count_custom":0.0,"forms_sub'
    b'mitted":0.0,"forms_abandoned":0.0,"calc_count":0.0,"calc_mortgage_count":0.0,"ca'
    b'lc_mortgage_amount":0.0,"calc_mortgage_term_months":300.0,"calc_mortgage_max_amo'
    b'unt":0.0,"intent_mortgage":0.0,"category_mortgage":0.0,"since_last_calc_s":0.0,"'
    b'since_first_seen_days":0.0,"seg_},"holdout":false,"inputs":["customer","profile"'
    b'],"trace":[{"rule":"","result":"suppressed","why":"slot_taken"},{"rule":"","resu'
    b'lt":"suppressed","why":"lower_ranked_contact"},{"rule":"","result":"no_match"},{'
    b'"rule":"","result":"unknown","why":"a value it needs is missing"},{"rule":"","re'
    b'sult":"suppressed","why":"anonymous"},{"rule":"","result":"matched","channel":"w'
    b'eb"}],"attribution":{},"segments":[],"branch":"","customer_value":0.0}'
)

_DICTIONARIES: dict[bytes, bytes] = {_V1: DICTIONARY_V1, _V2: DICTIONARY_V2}

# v2 after the demo pack's words: the engine's vocabulary, which every v3 dictionary
# ends with (nearest the record).
ENGINE_VOCABULARY: bytes = DICTIONARY_V2[DICTIONARY_V2.index(b'"suppressed":"cooldown_rule"') :]
_MAX_DICTIONARY = 32 * 1024  # deflate's window: older bytes could not be referenced
_KNOWN_MAX = 64  # dictionaries a process keeps by id (one per rule set version seen)
_RULE_SETS_MAX = 8  # rule sets a process keeps a dictionary for (reloads replace them)
STORE_EVERY_S = 3600.0  # a writer re-stores its dictionary at most this often


@dataclass(eq=False)
class RuleSetDictionary:
    """A rule set's v3 dictionary: its bytes, its id (what a record names), and when
    this process last stored it in Valkey (`due`)."""

    data: bytes
    id: bytes
    covered: bool  # every word of the pack is already in v2: write v2, no id needed
    stored_at: float = field(default=float("-inf"))

    def due(self, now: float | None = None) -> bool:
        """Whether to store the dictionary with this write (first use, then hourly),
        marking it stored; `undue` takes the mark back if that write failed."""
        now = time.monotonic() if now is None else now
        if now - self.stored_at < STORE_EVERY_S:
            return False
        self.stored_at = now
        return True

    def undue(self) -> None:
        self.stored_at = float("-inf")


def _id_of(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:_ID_LEN]


def _pack_words(rs: RuleSet) -> list[bytes]:
    """The rule set's own words as a record writes them, one entry each, in v2's
    order: offers, the trace's rule ids, segment features and the segments list."""
    words = [b'"offer":' + orjson.dumps(o.public()) + b"," for o in rs.offers.values()]
    words += [b'{"rule":' + orjson.dumps(r.id) + b',"result":"unknown"},' for r in rs.rules]
    seg_ids = [s.id for s in rs.segments.segments]
    words += [orjson.dumps(f"seg_{i}") + b":1.0," for i in seg_ids]
    if seg_ids:
        words.append(b'"segments":' + orjson.dumps(seg_ids) + b",")
    return words


def build_dictionary(words: list[bytes]) -> RuleSetDictionary:
    """The dictionary of these pack words followed by the engine's vocabulary, at most
    32 KB: a large pack loses its first words (the farthest from the record)."""
    room = _MAX_DICTIONARY - len(ENGINE_VOCABULARY)
    kept: list[bytes] = []
    for word in reversed(words):
        if len(word) > room:
            break
        kept.append(word)
        room -= len(word)
    data = b"".join(reversed(kept)) + ENGINE_VOCABULARY
    covered = all(w in DICTIONARY_V2 for w in words)
    return RuleSetDictionary(data, _id_of(data), covered)


_RULE_SETS: OrderedDict[tuple[str, int], tuple[RuleSet, RuleSetDictionary]] = OrderedDict()
_KNOWN: OrderedDict[bytes, bytes] = OrderedDict()


def rule_set_dictionary(rs: RuleSet) -> RuleSetDictionary:
    """The rule set's dictionary, built once per rule set (a reload builds its own).
    Keyed by version and identity; the entry keeps the rule set, so its id is not
    reused by another while cached."""
    key = (rs.version, id(rs))
    hit = _RULE_SETS.get(key)
    if hit is not None and hit[0] is rs:
        return hit[1]
    made = build_dictionary(_pack_words(rs))
    _RULE_SETS[key] = (rs, made)
    while len(_RULE_SETS) > _RULE_SETS_MAX:
        _RULE_SETS.popitem(last=False)
    remember_dictionary(made.data)
    return made


def remember_dictionary(data: bytes) -> bytes:
    """Keep a dictionary in this process's bounded cache; its id."""
    did = _id_of(data)
    _KNOWN[did] = data
    _KNOWN.move_to_end(did)
    while len(_KNOWN) > _KNOWN_MAX:
        _KNOWN.popitem(last=False)
    return did


def known_dictionary(did: bytes) -> bytes | None:
    """A dictionary this process built or read, by id (most recently used kept)."""
    data = _KNOWN.get(did)
    if data is not None:
        _KNOWN.move_to_end(did)
    return data


def forget_dictionaries() -> None:
    """Empty this process's caches (what a restarted process starts with): tests."""
    _KNOWN.clear()
    _RULE_SETS.clear()


def _deflate(raw: bytes, dictionary: bytes) -> bytes:
    deflate = zlib.compressobj(
        _LEVEL, zlib.DEFLATED, _WBITS, 8, zlib.Z_DEFAULT_STRATEGY, dictionary
    )
    return deflate.compress(raw) + deflate.flush()


def encode(record: dict[str, Any], dictionary: RuleSetDictionary | None = None) -> bytes:
    """The stored form of `record`: deflated JSON under format byte 3 against the rule
    set's `dictionary`, or under 2 without one (or when the pack's words are all in
    v2); plain JSON should deflating not pay."""
    raw = orjson.dumps(record)
    if dictionary is not None and not dictionary.covered:
        packed = _deflate(raw, dictionary.data)
        if len(packed) + 1 + _ID_LEN < len(raw):
            return _V3 + dictionary.id + packed
        return raw
    packed = _deflate(raw, DICTIONARY_V2)
    return _V2 + packed if len(packed) + 1 < len(raw) else raw


def dictionary_id(stored: bytes) -> bytes | None:
    """The id of the rule-set dictionary a stored record needs, None if it needs none
    (formats 1, 2, plain JSON)."""
    return stored[1 : 1 + _ID_LEN] if stored[:1] == _V3 else None


def decode(stored: bytes, dictionary: bytes | None = None) -> dict[str, Any]:
    """The record from its stored form, whichever format it was written in. A v3
    record needs its `dictionary` (by `dictionary_id`): given, or known to this process;
    else KeyError.

    >>> decode(encode({"id": "d1", "features": {"hour": 7.0}}))
    {'id': 'd1', 'features': {'hour': 7.0}}
    >>> decode(b'{"id": "old"}')
    {'id': 'old'}
    """
    fmt = stored[:1]
    if fmt == _V3:
        did = stored[1 : 1 + _ID_LEN]
        if dictionary is None:
            dictionary = known_dictionary(did)
            if dictionary is None:
                raise KeyError(f"audit dictionary {did.hex()} is not known")
        inflate = zlib.decompressobj(_WBITS, dictionary)
        stored = inflate.decompress(stored[1 + _ID_LEN :]) + inflate.flush()
    else:
        known = _DICTIONARIES.get(fmt)
        if known is not None:
            inflate = zlib.decompressobj(_WBITS, known)
            stored = inflate.decompress(stored[1:]) + inflate.flush()
    record: dict[str, Any] = orjson.loads(stored)
    return record
