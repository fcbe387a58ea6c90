"""Customer value: one documented score, 0..100, from what the bank knows and what the
visitor does.

The bank's CRM already sends a `value_tier`, but a tier is a coarse label someone else
computed; marketing wants one number that rules can compare (`customer.value >= 67`),
arbitration can weigh (`arbitration: {customer_value_weight: ...}`) and reports can
band (low / mid / high). The score is a weighted mean of seven parts, each 0..1:

| part       | from                                  | 0 .. 1                                     |
|------------|---------------------------------------|--------------------------------------------|
| `products` | CRM `products_held`                   | held / `products_full` (capped at 1)       |
| `tier`     | CRM `value_tier`                      | `tiers[value_tier]` (standard 0, vip 0.6,  |
|            |                                       | private 1)                                 |
| `balance`  | CRM `balance` (optional, >= 0)        | log(1 + balance) / log(1 + `balance_full`) |
| `sessions` | sessions started                      | sessions / `sessions_full`                 |
| `dwell`    | visible dwell, all sessions           | dwell_s / `dwell_full_s`                   |
| `intent`   | the strongest decayed intent          | intent / `intent_full`                     |
| `recency`  | time since the last event             | halves every `recency_half_life_days`      |

    value = 100 x sum(weight x part) / sum(weight)

Weights default to 20 for each CRM part and 10 for each engagement part (so the CRM is
60 % of the score), and every number above can be set in one rules file's
`customer_value:` section (unknown keys refused). Everyone is scored on the same scale:
an anonymous visitor, or a customer the CRM says nothing about, scores 0 on the CRM
parts, so engagement alone reaches at most the engagement weights' share (40 by
default: never "high"). Balances are on a log scale: 10 k and 1 M are far apart in
value, 1.00 M and 1.01 M are not. Recency is measured to the last event, so inside a
batch it is full; it matters where the score is read later (an agent's screen-pop).

It is pure and cheap (~3 µs): `decide` computes it once per plan, and only when a rule
or segment reads `customer.value`, arbitration weighs it, or a decision is recorded.

>>> cfg = CustomerValue()
>>> visitor = {"session": {"number": 3}, "dwell_ms": 900_000, "intent": {"mortgage": 5.0},
...            "last_seen": 1_000}
>>> score(cfg, visitor, {}, now_ms=1_000)  # 10 x (0.3 + 0.5 + 0.5 + 1.0)
23.0
>>> vip = {"products_held": ["current", "savings", "cards"], "value_tier": "vip",
...        "balance": 50_000}
>>> score(cfg, visitor, vip, now_ms=1_000)  # + 20 x (0.6 + 0.6 + 0.783)
62.7
>>> band(62.7), band(score(cfg, visitor, vip | {"value_tier": "private"}, now_ms=1_000))
('mid', 'high')
>>> score(cfg, {}, {}, now_ms=1_000)  # never seen: nothing to go on
0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

__all__ = ["BANDS", "CustomerValue", "ValueWeights", "band", "parts", "score"]

Weight = Annotated[float, Meta(ge=0, le=1000)]
Share = Annotated[float, Meta(ge=0, le=1)]

# Report bands of the score: low < 34 <= mid < 67 <= high.
BANDS = (("low", 34.0), ("mid", 67.0), ("high", math.inf))

_DAY_MS = 86_400_000
_EMPTY: Mapping[str, Any] = {}


class ValueWeights(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How much each part counts; only their ratios matter (at least one above 0)."""

    products: Weight = 20.0
    tier: Weight = 20.0
    balance: Weight = 20.0
    sessions: Weight = 10.0
    dwell: Weight = 10.0
    intent: Weight = 10.0
    recency: Weight = 10.0


class CustomerValue(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A rules file's `customer_value:` section: the weights and where each part is full."""

    weights: ValueWeights = msgspec.field(default_factory=ValueWeights)
    tiers: dict[str, Share] = msgspec.field(
        default_factory=lambda: {"standard": 0.0, "vip": 0.6, "private": 1.0}
    )
    products_full: Annotated[int, Meta(ge=1, le=100)] = 5
    balance_full: Annotated[float, Meta(gt=1)] = 1_000_000.0
    sessions_full: Annotated[int, Meta(ge=1)] = 10
    dwell_full_s: Annotated[float, Meta(gt=0)] = 1800.0
    intent_full: Annotated[float, Meta(gt=0)] = 10.0
    recency_half_life_days: Annotated[float, Meta(gt=0)] = 7.0


def _number(v: Any) -> float:
    """A finite, non-negative number, else 0 (missing, text, a flag, NaN)."""
    if (v.__class__ is int or v.__class__ is float) and 0 <= v < 1e300:
        return float(v)
    return 0.0


_PARTS = ("products", "tier", "balance", "sessions", "dwell", "intent", "recency")


def parts(
    cfg: CustomerValue, profile: Mapping[str, Any], customer: Mapping[str, Any], now_ms: int
) -> dict[str, float]:
    """Each part of the score, 0..1 (what an explanation shows next to the weights).

    >>> parts(CustomerValue(), {"session": {"number": 5}}, {"value_tier": "vip"}, 0)["tier"]
    0.6
    """
    return dict(zip(_PARTS, _parts(cfg, profile, customer, now_ms), strict=True))


def _parts(
    cfg: CustomerValue, profile: Mapping[str, Any], customer: Mapping[str, Any], now_ms: int
) -> tuple[float, float, float, float, float, float, float]:
    held = customer.get("products_held")
    n_held = len(held) if isinstance(held, list) else 0
    tier = customer.get("value_tier")
    balance = _number(customer.get("balance"))
    session = profile.get("session") or _EMPTY
    strongest = 0.0
    for v in (profile.get("intent") or _EMPTY).values():  # a loop: no generator per call
        if (v.__class__ is float or v.__class__ is int) and strongest < v < 1e300:
            strongest = float(v)
    last_seen = _number(profile.get("last_seen"))
    recency = 0.0
    if last_seen > 0:
        age_days = max(0.0, now_ms - last_seen) / _DAY_MS
        recency = 0.5 ** (age_days / cfg.recency_half_life_days)
    return (
        min(n_held / cfg.products_full, 1.0),
        cfg.tiers.get(tier, 0.0) if isinstance(tier, str) else 0.0,
        min(math.log1p(balance) / math.log1p(cfg.balance_full), 1.0) if balance else 0.0,
        min(_number(session.get("number")) / cfg.sessions_full, 1.0),
        min(_number(profile.get("dwell_ms")) / 1000 / cfg.dwell_full_s, 1.0),
        min(strongest / cfg.intent_full, 1.0),
        recency,
    )


def score(
    cfg: CustomerValue, profile: Mapping[str, Any], customer: Mapping[str, Any], now_ms: int
) -> float:
    """The customer value, 0..100 (one decimal): `parts` weighted by `cfg.weights`."""
    w = cfg.weights
    products, tier, balance, sessions, dwell, intent, recency = _parts(
        cfg, profile, customer, now_ms
    )
    total = w.products + w.tier + w.balance + w.sessions + w.dwell + w.intent + w.recency
    if total <= 0:
        return 0.0
    got = (
        w.products * products
        + w.tier * tier
        + w.balance * balance
        + w.sessions * sessions
        + w.dwell * dwell
        + w.intent * intent
        + w.recency * recency
    )
    return round(100.0 * got / total, 1)


def band(value: float) -> str:
    """The report band of a score.

    >>> band(0), band(33.9), band(34), band(66.9), band(67), band(100)
    ('low', 'low', 'mid', 'mid', 'high', 'high')
    """
    for name, below in BANDS:
        if value < below:
            return name
    return "high"
