"""A published model as plain weights, and the compiled scorer the hot path calls.

The learner (engine/learning) trains river pipelines off the request path and
publishes what they learned as JSON (never pickle: a snapshot is data any worker,
tool or person can read, and loading it runs no code). Every worker compiles the
snapshot once into a `Scorer` whose `predict` is a few dict lookups per feature.

The transform (issue 11's contract; the learner's pipeline predicts the same):

- numeric x: z = (x - mean) / std from `scale` (std 0 or no scale -> z = 0), clipped
  to +-Z_CLIP: a value the training data never came near (the first hour after a model
  learnt within one hour, where `hour`'s spread was tiny) moves the log-odds by at most
  Z_CLIP x its weight instead of by hundreds; weight key = the feature's name.
- categorical v (a str): key `name=v`, value 1.0.
- crosses [a, b], in the order listed: both categorical -> `a=va&b=vb`, 1.0;
  a categorical, b numeric -> `a=va&b`, z_b; a numeric, b categorical -> `a&b=vb`,
  z_a; both numeric -> `a&b`, z_a * z_b. A cross with a missing side is skipped.
- p = sigmoid(intercept + sum(weights.get(key, 0) * value)).

Uncertainty, for exploration (the offer bandit: Thompson sampling with a Laplace
approximation of the logistic model's posterior): `variances` holds each weight's
posterior variance (diagonal; 1 / precision, the learner's `PropensityModel`) and
`intercept_variance` the intercept's. A key the model has never seen (a new campaign,
a new segment) has the prior's variance: `PRIOR_VARIANCE` for a one-hot,
`PRIOR_VARIANCE_NUMERIC` for a numeric z, `PRIOR_VARIANCE_CROSS` for a cross. The linear predictor's
variance for one feature dict is v = sum(var(key) * value**2) over the transform's keys
(+ intercept_variance), and `Scorer.sample(features, z)` returns sigmoid(m + z * sqrt(v))
for a standard-normal draw z. A snapshot without them (published before they existed:
`intercept_variance` null) has no uncertainty: `sample` is `predict` for every z.

>>> snap = Snapshot(
...     name="callback:demo", version=1, created_ms=0, samples=500, positives=60,
...     auc=0.7, log_loss=0.4, mature=True, prior=0.12, intercept=0.0,
...     scale={"amount": (100.0, 50.0)}, crosses=[("tier", "amount")],
...     weights={"amount": 1.0, "tier=vip": 0.5, "tier=vip&amount": 0.25},
... )
>>> round(snap.compile().predict({"amount": 200.0, "tier": "vip"}), 6)  # 2 + 0.5 + 0.5
0.952574
>>> decode(encode(snap)) == snap
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = [
    "MATURE_POSITIVES",
    "MATURE_SAMPLES",
    "PRIOR_VARIANCE",
    "PRIOR_VARIANCE_CROSS",
    "PRIOR_VARIANCE_NUMERIC",
    "Z_CLIP",
    "Scorer",
    "Snapshot",
    "clip_z",
    "decode",
    "encode",
    "is_mature",
]

MATURE_SAMPLES = 100
MATURE_POSITIVES = 10

# The prior's variance of every weight (and the intercept) in the transformed space (z
# scores, one-hot 1.0): a weight within +-0.5, a log-odds move of about a half, is what
# a single feature plausibly does when a request carries some 60 features and their
# crosses, most of them saying nothing about who responds. The learner starts each
# weight's precision at its inverse (so it also caps a new weight's first Newton steps);
# the scorer gives it to the keys a snapshot has no variance for (never seen). At 1.0
# the noise features of a model with a few hundred samples took steps big enough to
# scatter its estimates (tests/test_learner.py shows it on a toy offer):
# benchmarks/learning_bench.py's engine / oracle AUC at 20,000 decisions 0.950 -> 0.959;
# benchmarks/live_learning_bench.py's pooled engine / oracle 0.953 and 0.963 -> 0.968
# and 0.973 run side by side on a loaded machine, but alone its first seed still ends
# near 0.925. The price is a little less exploration of strong effects
# (benchmarks/bandit_bench.py: 8.3 % -> 9.7 % of random's regret).
PRIOR_VARIANCE = 0.25

# Tighter priors for the weights most of which say nothing: a numeric feature's z
# (some 40 per request: counts, dwell, hour, recency, most of them noise for any one
# model) and a cross (an interaction is a priori smaller than the main effects it
# combines: the usual hierarchy of a Bayesian GLM). A categorical one-hot and the
# intercept keep `PRIOR_VARIANCE`. Replaying the live learning benchmark's labelled
# streams (benchmarks/live_learning_bench.py --dump, two seeds) into the learner:
# pooled engine / oracle AUC 0.960 -> 0.967 and 0.965 -> 0.971 against one prior for
# all (0.25); with no crosses at all, 0.966 and 0.971: at a sixteenth of the prior the
# crosses stop costing what they cost a young model and can still grow where the data
# says so (a weight's prior only holds back its first steps).
PRIOR_VARIANCE_NUMERIC = PRIOR_VARIANCE / 4
PRIOR_VARIANCE_CROSS = PRIOR_VARIANCE / 16

# How many standard deviations from the mean a numeric feature's z may go (the
# transform above). Ten keeps every value a model has really seen (a value within the
# training data's range is rarely 10 deviations out once it has a few dozen samples)
# and bounds what an unseen one can do: a model that learnt within one hour no longer
# sees the next hour at z = 260. Clipping tighter cost the bandit: at 5 its regret went
# 9.7 -> 10.5 % of random's, at 8 10.0 %, at 10 9.9 % (benchmarks/bandit_bench.py), as
# early models do read signal from values far out on a still-narrow scale.
Z_CLIP = 10.0


def clip_z(z: float) -> float:
    """z within +-Z_CLIP.

    >>> clip_z(260.0), clip_z(-17.5), clip_z(1.25)
    (10.0, -10.0, 1.25)
    """
    return Z_CLIP if z > Z_CLIP else -Z_CLIP if z < -Z_CLIP else z


def is_mature(samples: int, positives: int) -> bool:
    """The contract's maturity: enough samples and enough positives to trust the model
    over the observed rate (the learner decides and writes `mature`)."""
    return samples >= MATURE_SAMPLES and positives >= MATURE_POSITIVES


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One model version exactly as stored under `keys.model_snapshot(name)`.

    `auc` and `log_loss` may be null: with one class seen so far AUC is undefined
    (and msgspec writes a NaN as null, so a float-only field could not read it back).
    """

    name: str
    version: int
    created_ms: int
    samples: int
    positives: int
    auc: float | None
    log_loss: float | None
    mature: bool
    prior: float
    intercept: float
    scale: dict[str, tuple[float, float]] = {}
    crosses: list[tuple[str, str]] = []
    weights: dict[str, float] = {}
    # Posterior variances (exploration); optional so snapshots published before them
    # still decode (and then explore nothing).
    variances: dict[str, float] = {}
    intercept_variance: float | None = None

    def compile(self) -> Scorer:
        return Scorer(self)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Snapshot)


def encode(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode(data: bytes | str) -> Snapshot:
    """Parse and validate a stored snapshot; raises `msgspec.ValidationError` (or
    `msgspec.DecodeError`) for anything that is not one."""
    return _decoder.decode(data)


# A cross compiled for every combination of its sides' kinds, so the general path
# builds no key strings: (a, b, mean_a, std_a, mean_b, std_b, cat_cat, cat_num,
# num_cat, num_num), std 0.0 meaning "z = 0", tables keyed by categorical values.
_Cross = tuple[
    str,
    str,
    float,
    float,
    float,
    float,
    dict[str, dict[str, float]],
    dict[str, float],
    dict[str, float],
    float,
]


def _splits(text: str, sep: str) -> list[tuple[str, str]]:
    """Every way to split `text` at one occurrence of `sep`. A weight key such as
    `a=x&b=y&b=z` reads as more than one (va, vb) pair; registering each keeps the
    tables exactly equal to looking up the joined string."""
    out = []
    at = text.find(sep)
    while at >= 0:
        out.append((text[:at], text[at + len(sep) :]))
        at = text.find(sep, at + 1)
    return out


def _compile_cross(
    a: str, b: str, weights: Mapping[str, float], scale: Mapping[str, tuple[float, float]]
) -> _Cross | None:
    """The weights of one cross by kind of its sides, or None if it can add nothing."""
    cat_cat: dict[str, dict[str, float]] = {}
    cat_num: dict[str, float] = {}
    num_cat: dict[str, float] = {}
    head_cat, tail_num, head_num_cat = f"{a}=", f"&{b}", f"{a}&{b}="
    for key, w in weights.items():
        if w == 0.0:
            continue
        if key.startswith(head_cat):
            rest = key[len(head_cat) :]
            if rest.endswith(tail_num):
                cat_num[rest[: -len(tail_num)]] = float(w)
            for va, vb in _splits(rest, f"&{b}="):
                cat_cat.setdefault(va, {})[vb] = float(w)
        if key.startswith(head_num_cat):
            num_cat[key[len(head_num_cat) :]] = float(w)
    mean_a, std_a = (float(x) for x in scale.get(a, (0.0, 0.0)))
    mean_b, std_b = (float(x) for x in scale.get(b, (0.0, 0.0)))
    # A numeric side without scale has z = 0: its tables can add nothing.
    cat_num = cat_num if std_b else {}
    num_cat = num_cat if std_a else {}
    num_num = float(weights.get(f"{a}&{b}", 0.0)) if std_a and std_b else 0.0
    if not (cat_cat or cat_num or num_cat or num_num):
        return None
    return (a, b, mean_a, std_a, mean_b, std_b, cat_cat, cat_num, num_cat, num_num)


_exp = math.exp
_ZC = Z_CLIP


class Scorer:
    """A snapshot compiled for the hot path. Immutable after construction, so any
    number of coroutines may share one.

    The fast path walks the model's own lists (features it has no weight for cost
    nothing) and assumes each feature has the kind its weights show: a numeric name
    holds a number, a cross's sides the kinds of its only non-empty table. Looking a
    number up in a table keyed by strings finds nothing, which is also what the
    contract adds for it; a string where a number is expected raises TypeError, and
    the general path (types checked per value, same result) takes over.
    """

    __slots__ = (
        "_cat_cat",
        "_cat_num",
        "_categorical",
        "_crosses",
        "_intercept",
        "_mixed",
        "_num_cat",
        "_num_num",
        "_numeric",
        "_uncertain",
        "_var_categorical",
        "_var_cross_pairs",
        "_var_intercept",
        "_var_keys",
        "_var_numeric",
        "_var_scale",
    )

    def __init__(self, snapshot: Snapshot) -> None:
        weights = snapshot.weights
        scale = snapshot.scale
        self._intercept = float(snapshot.intercept)
        # (name, mean, weight / std, lowest, highest) for numerics that can contribute:
        # w * z as one multiplication (equal to the contract's within a rounding), the
        # clip to +-Z_CLIP as a clip of x to mean -+ Z_CLIP x std (two comparisons).
        self._numeric = tuple(
            (
                name,
                float(mean),
                float(weights.get(name, 0.0)) / float(std),
                float(mean) - Z_CLIP * abs(float(std)),
                float(mean) + Z_CLIP * abs(float(std)),
            )
            for name, (mean, std) in scale.items()
            if std != 0.0 and weights.get(name, 0.0) != 0.0
        )
        # categorical name -> value -> weight. Feature names are snake_case (the
        # contract), so a key's first "=" ends the name, and a name holding "&" is a
        # cross's, never a feature's.
        categorical: dict[str, dict[str, float]] = {}
        for key, w in weights.items():
            name, eq, value = key.partition("=")
            if eq and w != 0.0 and "&" not in name:
                categorical.setdefault(name, {})[value] = float(w)
        # Tables are read with whatever a feature holds (a float finds nothing): Any keys.
        self._categorical: tuple[tuple[str, dict[Any, float]], ...] = tuple(categorical.items())
        crosses = [_compile_cross(a, b, weights, scale) for a, b in snapshot.crosses]
        self._crosses = tuple(c for c in crosses if c is not None)
        cat_cat: list[tuple[str, str, dict[Any, dict[Any, float]]]] = []
        cat_num: list[tuple[str, str, float, float, dict[Any, float]]] = []
        num_cat: list[tuple[str, str, float, float, dict[Any, float]]] = []
        num_num: list[tuple[str, str, float, float, float, float, float]] = []
        mixed: list[_Cross] = []
        for c in self._crosses:
            a, b, mean_a, std_a, mean_b, std_b, cc, cn, nc, nn = c
            kinds = bool(cc) + bool(cn) + bool(nc) + bool(nn)
            if kinds > 1:
                mixed.append(c)
            elif cc:
                cat_cat.append((a, b, cc))
            elif cn:
                cat_num.append((a, b, mean_b, 1.0 / std_b, cn))
            elif nc:
                num_cat.append((b, a, mean_a, 1.0 / std_a, nc))  # table side first
            else:
                num_num.append((a, b, mean_a, std_a, mean_b, std_b, nn))
        self._cat_cat = tuple(cat_cat)
        self._cat_num = tuple(cat_num)
        self._num_cat = tuple(num_cat)
        self._num_num = tuple(num_num)
        self._mixed = tuple(mixed)
        self._compile_variances(snapshot)

    def _compile_variances(self, snapshot: Snapshot) -> None:
        """The tables `sample` reads: only `predict` is on every candidate's path, so
        these stay apart from its own and cost it nothing."""
        variances = snapshot.variances
        self._uncertain = snapshot.intercept_variance is not None or bool(variances)
        self._var_intercept = float(snapshot.intercept_variance or 0.0)
        self._var_keys = {k: float(v) for k, v in variances.items()}
        self._var_scale = {
            name: (float(mean), float(std)) for name, (mean, std) in snapshot.scale.items()
        }
        # numeric name -> (mean, var / std**2, Z_CLIP x |std|): var * z**2 as
        # var / std**2 * (x - mean)**2, x - mean clipped as z is.
        self._var_numeric = {
            name: (
                mean,
                self._var_keys.get(name, PRIOR_VARIANCE_NUMERIC) / (std * std),
                Z_CLIP * abs(std),
            )
            for name, (mean, std) in self._var_scale.items()
            if std != 0.0
        }
        var_categorical: dict[str, dict[Any, float]] = {}
        for key, var in self._var_keys.items():
            name, eq, value = key.partition("=")
            if eq and "&" not in name:
                var_categorical.setdefault(name, {})[value] = var
        self._var_categorical = var_categorical
        self._var_cross_pairs = tuple((str(a), str(b)) for a, b in snapshot.crosses)

    def predict(self, features: Mapping[str, float | str]) -> float:
        """P(positive | features). Values are floats (numeric) or str (categorical);
        features the model does not know add nothing."""
        try:
            total = self._fast(features)
        except TypeError:  # a value of another kind than the weights suggest
            total = self._general(features)
        if total >= 0.0:  # sigmoid(total), inlined: this is the hot path
            return 1.0 / (1.0 + _exp(-total))
        e = _exp(total)
        return e / (1.0 + e)

    def sample(self, features: Mapping[str, float | str], z: float) -> float:
        """A draw of P(positive | features) from the posterior: sigmoid(m + z * sqrt(v)),
        m the linear predictor `predict` computes, v its variance (sum of var(key) *
        value**2 over the contract's transform of `features`, plus the intercept's; a key
        without a variance has the prior's). `z` is a standard-normal draw the caller
        makes (the scorer stays pure: the same z gives the same answer); z = 0 is
        `predict`. It builds the crosses' key strings, so it costs more than `predict`:
        only the offer bandit calls it, once per offer candidate."""
        return self.mean_and_sample(features, z)[1]

    def mean_and_sample(self, features: Mapping[str, float | str], z: float) -> tuple[float, float]:
        """(`predict(features)`, `sample(features, z)`) with the linear predictor
        computed once: what the bandit needs of each offer (it ranks by the draw and
        reports the mean)."""
        try:
            total = self._fast(features)
        except TypeError:
            total = self._general(features)
        mean = sigmoid(total)
        if z == 0.0 or not self._uncertain:
            return mean, mean
        return mean, sigmoid(total + z * math.sqrt(self._variance(features)))

    def _variance(self, features: Mapping[str, Any]) -> float:
        """The linear predictor's posterior variance (diagonal: the weights independent)."""
        prior = PRIOR_VARIANCE
        cross_prior = PRIOR_VARIANCE_CROSS
        v = self._var_intercept
        numeric = self._var_numeric
        categorical = self._var_categorical
        none: dict[Any, float] = {}
        for name, value in features.items():
            if isinstance(value, str):
                v += categorical.get(name, none).get(value, prior)
            else:
                entry = numeric.get(name)
                if entry is not None:
                    d = min(max(value - entry[0], -entry[2]), entry[2])
                    v += entry[1] * d * d
        keys = self._var_keys
        scale = self._var_scale
        get = features.get

        def z_of(name: str, x: float) -> float:
            mean, std = scale.get(name, (0.0, 0.0))
            return clip_z((x - mean) / std) if std else 0.0

        for a, b in self._var_cross_pairs:
            va = get(a)
            vb = get(b)
            if va is None or vb is None:
                continue
            if isinstance(va, str):
                if isinstance(vb, str):
                    v += keys.get(f"{a}={va}&{b}={vb}", cross_prior)
                else:
                    zb = z_of(b, vb)
                    v += keys.get(f"{a}={va}&{b}", cross_prior) * zb * zb
            elif isinstance(vb, str):
                za = z_of(a, va)
                v += keys.get(f"{a}&{b}={vb}", cross_prior) * za * za
            else:
                zz = z_of(a, va) * z_of(b, vb)
                v += keys.get(f"{a}&{b}", cross_prior) * zz * zz
        return v

    def _fast(self, features: Mapping[str, Any]) -> float:
        get = features.get
        total = self._intercept
        # An absent numeric reads as its mean and an absent categorical finds 0.0:
        # both add nothing, without a branch per feature.
        for name, mean, slope, lo, hi in self._numeric:
            x = get(name, mean)
            if x > hi:
                x = hi
            elif x < lo:
                x = lo
            total += slope * (x - mean)
        for name, table in self._categorical:
            total += table.get(get(name), 0.0)
        for a, b, rows in self._cat_cat:
            row = rows.get(get(a))
            if row is not None:
                w_ab = row.get(get(b))
                if w_ab is not None:
                    total += w_ab
        # The clip inlined (a call per cross costs more than the comparisons).
        for a, b, mean, slope, table in self._cat_num:
            w = table.get(get(a))
            if w is not None:
                x = get(b)
                if x is not None:
                    z = slope * (x - mean)
                    total += w * (_ZC if z > _ZC else -_ZC if z < -_ZC else z)
        for b, a, mean, slope, table in self._num_cat:
            w = table.get(get(b))
            if w is not None:
                x = get(a)
                if x is not None:
                    z = slope * (x - mean)
                    total += w * (_ZC if z > _ZC else -_ZC if z < -_ZC else z)
        for a, b, mean_a, std_a, mean_b, std_b, w in self._num_num:
            x = get(a)
            if x is not None:
                y = get(b)
                if y is not None:
                    za = (x - mean_a) / std_a
                    zb = (y - mean_b) / std_b
                    za = _ZC if za > _ZC else -_ZC if za < -_ZC else za
                    zb = _ZC if zb > _ZC else -_ZC if zb < -_ZC else zb
                    total += w * (za * zb)
        if self._mixed:
            total += self._cross_sum(features, self._mixed)
        return total

    def _general(self, features: Mapping[str, Any]) -> float:
        """The contract with every value's kind checked."""
        total = self._intercept
        numeric = {name: (mean, slope, lo, hi) for name, mean, slope, lo, hi in self._numeric}
        categorical = dict(self._categorical)
        for name, value in features.items():
            if isinstance(value, str):
                w = categorical.get(name, {}).get(value)
                if w is not None:
                    total += w
            elif name in numeric:
                mean, slope, lo, hi = numeric[name]
                total += slope * (min(max(value, lo), hi) - mean)
        return total + self._cross_sum(features, self._crosses)

    @staticmethod
    def _cross_sum(features: Mapping[str, Any], crosses: tuple[_Cross, ...]) -> float:
        total = 0.0
        get = features.get
        for a, b, mean_a, std_a, mean_b, std_b, cat_cat, cat_num, num_cat, num_num in crosses:
            va = get(a)
            vb = get(b)
            if va is None or vb is None:
                continue
            if isinstance(va, str):
                if isinstance(vb, str):
                    w = cat_cat.get(va, {}).get(vb)
                    if w is not None:
                        total += w
                else:
                    w = cat_num.get(va)
                    if w is not None:
                        total += w * clip_z((vb - mean_b) / std_b)
            elif isinstance(vb, str):
                w = num_cat.get(vb)
                if w is not None:
                    total += w * clip_z((va - mean_a) / std_a)
            elif num_num:
                total += num_num * (clip_z((va - mean_a) / std_a) * clip_z((vb - mean_b) / std_b))
        return total


def sigmoid(x: float) -> float:
    """The logistic function without overflow for large |x|.

    >>> sigmoid(0.0), sigmoid(-1000.0), sigmoid(1000.0)
    (0.5, 0.0, 1.0)
    """
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
