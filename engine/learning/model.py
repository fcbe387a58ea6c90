"""One propensity model: river's scaler and logistic regression behind the contract's
transform, validated progressively, exported as plain weights.

Who responds depends on combinations (value tier x amount, campaign x behaviour),
which a linear model of the raw features misses; so the features go through the
snapshot contract's transform (docs: the learning contract, issue 11) before the
logistic regression sees them:

- numeric x -> z = (x - mean) / std with river's running `StandardScaler` (std 0 -> 0);
- categorical v -> `name=v`: 1.0;
- crosses [a, b]: `a=va&b=vb` 1.0, `a=va&b` z_b, `a&b=vb` z_a, `a&b` z_a * z_b.

The regression learns on exactly that transform with the scaler's stats as of the
moment (river's pipeline order: the scaler learns the sample, then transforms it),
and predicts with the stats as they are; so a snapshot of (scale, crosses, weights,
intercept) taken at any moment scores exactly as `predict_one` does then (the
scorer in engine/models computes the same sum).

Uncertainty (the offer bandit's Thompson sampling, a Laplace approximation of the
logistic posterior, diagonal as in Chapelle & Li 2011): each weight keeps a precision,
the inverse of its kind's prior variance to start (`PRIOR_VARIANCE` for a one-hot,
`PRIOR_VARIANCE_NUMERIC` for a numeric z, `PRIOR_VARIANCE_CROSS` for a cross), plus
p (1 - p) x_i**2 per sample learned (x_i the transformed value the weight multiplied,
p the prediction made before learning; the intercept's x is 1). The snapshot carries
1 / precision as `variances` and `intercept_variance`: what a feature has been seen
with often is known well, what it has never been seen with keeps the prior's width,
and exploration goes there.

The same precisions set the step sizes (`LaplaceStep`: each weight moves by its
gradient over its precision, a diagonal Newton step, half of it by default): a weight
seen rarely learns fast, one seen often settles. Against plain SGD at its best fixed
rate (0.01), this halves the offer bandit's regret (benchmarks/bandit_bench.py: 30.9 %
of random's -> under 10 % at 10,000 impressions) and matches it on the callback
model's AUC (benchmarks/learning_bench.py). Half a step, because a visitor's one-hot
features move together (weekday, daypart, their cross, the intercept) and each takes
its own Newton step on the same error. Its only state is the weights and precisions,
both in the snapshot, so a learner that takes over restores a model from the last
snapshot (`restore`) and goes on where it left off (up to the scaler's per-feature
counts, restored as `samples`). `optimizer="sgd"` keeps plain SGD at `lr`, for
comparison.

>>> m = PropensityModel("offer:o1", crosses=[("tier", "amount")])
>>> for i in range(400):
...     vip = i % 2 == 0
...     _ = m.learn({"tier": "vip" if vip else "std", "amount": float(i % 7)}, vip and i % 4 == 0)
>>> m.samples, m.positives, m.mature
(400, 100, True)
>>> m.predict_one({"tier": "vip", "amount": 3.0}) > m.predict_one({"tier": "std", "amount": 3.0})
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec
from river import linear_model, metrics, optim, preprocessing, utils

from engine.models.snapshot import (
    PRIOR_VARIANCE,
    PRIOR_VARIANCE_CROSS,
    PRIOR_VARIANCE_NUMERIC,
    Snapshot,
    clip_z,
    is_mature,
)

__all__ = [
    "Features",
    "LaplaceStep",
    "PropensityModel",
    "transform",
]

Features = Mapping[str, float | str]

VALIDATION_WINDOW = 2000  # rolling AUC and log loss over the last this many samples


def _z(x: float, mean: float, var: float) -> float:
    # river's StandardScaler.transform_one, term for term (same float operations), then
    # clipped to +-Z_CLIP as the scorer does (engine/models/snapshot.py's contract).
    return clip_z((x - mean) / var**0.5) if var else 0.0


def transform(
    x: Features,
    means: Mapping[str, float],
    vars_: Mapping[str, float],
    crosses: Sequence[tuple[str, str]],
) -> dict[str, float]:
    """The contract's transform of one feature dict, with the scaler's `means`/`vars_`
    (variances: std = sqrt(var)); what the regression learns on and predicts from.

    >>> transform({"tier": "vip", "amount": 3.0, "hour": 2.0}, {"amount": 1.0, "hour": 2.0},
    ...           {"amount": 4.0}, [("tier", "amount"), ("amount", "hour"), ("tier", "x")])
    {'amount': 1.0, 'hour': 0.0, 'tier=vip': 1.0, 'tier=vip&amount': 1.0, 'amount&hour': 0.0}
    """
    z = {
        name: _z(float(v), means.get(name, 0.0), vars_.get(name, 0.0))
        for name, v in x.items()
        if not isinstance(v, str)
    }
    out = dict(z)
    out.update({f"{name}={v}": 1.0 for name, v in x.items() if isinstance(v, str)})
    for a, b in crosses:
        va, vb = x.get(a), x.get(b)
        if va is None or vb is None:
            continue
        if isinstance(va, str) and isinstance(vb, str):
            out[f"{a}={va}&{b}={vb}"] = 1.0
        elif isinstance(va, str):
            out[f"{a}={va}&{b}"] = z[b]
        elif isinstance(vb, str):
            out[f"{a}&{b}={vb}"] = z[a]
        else:
            out[f"{a}&{b}"] = z[a] * z[b]
    return out


class LaplaceStep(optim.base.Optimizer):
    """Each weight moves by its gradient over its posterior precision: a diagonal Newton
    step, the recursive form of the Laplace posterior this model already keeps (an
    extended-Kalman update of Bayesian logistic regression). A weight seen rarely takes
    a big step (its precision is the prior's), one seen a thousand times a step of about
    1 / (n p (1 - p)): fast at the start, where plain SGD at a fixed rate crawls, and
    settling by itself, with no rate to tune. `lr` scales the step (1.0: Newton)."""

    def __init__(self, precision: Mapping[str, float], prior: float, lr: float = 1.0) -> None:
        super().__init__(lr)
        self.precision = precision
        self.prior = prior

    def _step_with_dict(self, w: Any, g: Any) -> Any:
        rate, precision, prior = self.learning_rate, self.precision, self.prior
        for i, gi in g.items():
            w[i] -= rate * gi / precision.get(i, prior)
        return w


class _InterceptRate(optim.base.Scheduler):
    """The intercept's step under `LaplaceStep`: lr / its own precision."""

    def __init__(self, model: PropensityModel, lr: float) -> None:
        self.model = model
        self.lr = lr

    def get(self, t: int) -> float:
        return self.lr / self.model.intercept_precision


_ONE_HOT_PRECISION = 1.0 / PRIOR_VARIANCE
_NUMERIC_PRECISION = 1.0 / PRIOR_VARIANCE_NUMERIC
_CROSS_PRECISION = 1.0 / PRIOR_VARIANCE_CROSS


def _prior_precision(key: str, x: Features) -> float:
    """The prior precision of a transformed key of `x`, by its kind (the snapshot
    contract's priors): a numeric feature's own name, a categorical's `name=value`, else
    a cross. Exact even where a categorical value holds "&" or "=".

    >>> x = {"amount": 3.0, "tier": "a&b"}
    >>> [_prior_precision(k, x) for k in ("amount", "tier=a&b", "tier=a&b&amount")]
    [16.0, 4.0, 64.0]
    """
    v = x.get(key)
    if v is not None and not isinstance(v, str):
        return _NUMERIC_PRECISION
    name, eq, value = key.partition("=")
    if eq and x.get(name) == value:
        return _ONE_HOT_PRECISION
    return _CROSS_PRECISION


def _numeric(x: Features) -> dict[str, float]:
    return {k: float(v) for k, v in x.items() if not isinstance(v, str)}


class PropensityModel:
    """P(positive outcome | features) for one model name (`callback:<rule>`,
    `offer:<offer>`), learned online, with progressive validation (each sample is
    predicted before it is learned)."""

    def __init__(
        self,
        name: str,
        crosses: Iterable[Sequence[str]] = (),
        *,
        optimizer: Literal["laplace", "sgd"] = "laplace",
        step: float = 0.5,  # laplace: the share of the Newton step taken
        lr: float = 0.01,  # sgd: benchmarks/learning_bench.py: 0.005-0.01 best, 0.05 worst
        l2: float = 1e-4,
        window: int = VALIDATION_WINDOW,
    ) -> None:
        if not lr > 0 or not step > 0:
            raise ValueError("lr and step must be > 0")
        if optimizer not in ("laplace", "sgd"):
            raise ValueError(f"optimizer must be laplace or sgd, not {optimizer!r}")
        if window < 2:
            raise ValueError("window must be >= 2")
        self.name = name
        self.crosses: list[tuple[str, str]] = [(str(a), str(b)) for a, b in crosses]
        # river is untyped: its objects are `Any` here, their use kept to this class.
        self.scaler: Any = preprocessing.StandardScaler()
        self.samples = 0
        self.positives = 0
        # Diagonal posterior precision per transformed key (absent: the prior's).
        self.precision: dict[str, float] = {}
        self.intercept_precision = 1.0 / PRIOR_VARIANCE
        if optimizer == "laplace":
            self.regression: Any = linear_model.LogisticRegression(
                optimizer=LaplaceStep(self.precision, 1.0 / PRIOR_VARIANCE, step),
                l2=l2,
                intercept_lr=_InterceptRate(self, step),
            )
        else:
            self.regression = linear_model.LogisticRegression(
                optimizer=optim.SGD(lr), l2=l2, intercept_lr=lr
            )
        rolling_auc: Any = metrics.RollingROCAUC
        self._auc: Any = rolling_auc(window_size=window)
        self._log_loss: Any = utils.Rolling(metrics.LogLoss, window_size=window)

    # -- learning --------------------------------------------------------------------

    def features(self, x: Features) -> dict[str, float]:
        """`transform` with the scaler's stats as they are now."""
        return transform(x, self.scaler.means, self.scaler.vars, self.crosses)

    def predict_one(self, x: Features) -> float:
        p = self.regression.predict_proba_one(self.features(x))[True]
        return float(p)

    def learn(self, x: Features, y: bool) -> float:
        """Predict (for validation), then learn; returns the prediction made before."""
        p = self.predict_one(x)
        self._auc.update(y, p)
        self._log_loss.update(y, p)
        self.scaler.learn_one(_numeric(x))
        xt = self.features(x)
        # Laplace: the log-likelihood's curvature p(1-p) x_i^2 adds to each precision
        # (first, so that a `LaplaceStep` divides by the precision including this sample).
        curvature = p * (1.0 - p)
        precision = self.precision
        for key, value in xt.items():
            if value:
                known = precision.get(key)
                if known is None:
                    known = _prior_precision(key, x)
                precision[key] = known + curvature * value * value
        self.intercept_precision += curvature
        self.regression.learn_one(xt, y)
        self.samples += 1
        self.positives += int(y)
        return p

    # -- what a snapshot says ----------------------------------------------------------

    @property
    def mature(self) -> bool:
        return is_mature(self.samples, self.positives)

    @property
    def prior(self) -> float:
        return self.positives / self.samples if self.samples else 0.0

    @property
    def auc(self) -> float | None:
        """Rolling AUC of the predictions made before learning; None while undefined
        (one class seen in the window)."""
        return _finite(self._auc.get()) if 0 < self.positives < self.samples else None

    @property
    def log_loss(self) -> float | None:
        return _finite(self._log_loss.get()) if self.samples else None

    def weights(self) -> dict[str, Any]:
        """The plain-weights part of a snapshot: intercept, scale, crosses, weights, and
        the posterior variances (1 / precision)."""
        scale = {
            name: [float(mean), math.sqrt(self.scaler.vars[name])]
            for name, mean in self.scaler.means.items()
        }
        return {
            "intercept": float(self.regression.intercept),
            "scale": scale,
            "crosses": [list(c) for c in self.crosses],
            "weights": {k: float(w) for k, w in self.regression.weights.items() if w != 0.0},
            "variances": {k: 1.0 / prec for k, prec in self.precision.items()},
            "intercept_variance": 1.0 / self.intercept_precision,
        }

    def snapshot_fields(self, version: int, now_ms: int) -> dict[str, Any]:
        """Every field of the contract's snapshot JSON."""
        return {
            "name": self.name,
            "version": version,
            "created_ms": now_ms,
            "samples": self.samples,
            "positives": self.positives,
            "auc": self.auc,
            "log_loss": self.log_loss,
            "mature": self.mature,
            "prior": self.prior,
            **self.weights(),
        }

    def export(self, version: int, now_ms: int) -> Snapshot:
        """The model as it is now, as the snapshot every worker scores with."""
        return msgspec.convert(self.snapshot_fields(version, now_ms), Snapshot)

    @classmethod
    def restore(
        cls, snap: Snapshot, crosses: Iterable[Sequence[str]] | None = None, **kw: Any
    ) -> PropensityModel:
        """A model that goes on from a published snapshot (a learner taking over): the
        weights, intercept, precisions, scaler stats and counts; validation starts a new
        window."""
        model = cls(snap.name, snap.crosses if crosses is None else crosses, **kw)
        model.samples = snap.samples
        model.positives = snap.positives
        model.regression.intercept = float(snap.intercept)
        for k, w in snap.weights.items():
            model.regression._weights[k] = float(w)
        for k, var in snap.variances.items():
            if var > 0.0:
                model.precision[k] = 1.0 / var
        if snap.intercept_variance:
            model.intercept_precision = 1.0 / snap.intercept_variance
        for name, (mean, std) in snap.scale.items():
            model.scaler.counts[name] = max(model.samples, 1)
            model.scaler.means[name] = float(mean)
            model.scaler.vars[name] = float(std) ** 2
        return model


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
