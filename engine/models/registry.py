"""The models a worker scores with: published snapshots, polled and swapped in whole.

The learner publishes with `publish` (snapshot first, then its version in the index
hash, so a reader that sees a version finds its snapshot). Every worker runs a
`ModelRegistry`: each poll reads the index (one HGETALL), fetches only the snapshots
whose version changed, decodes and compiles them here, off the request path, and
replaces its whole set with ONE assignment. A request reads `registry.current`
once and never waits on a lock or sees half a set. A snapshot that does not decode
is refused, the model keeps its previous version, and the failure is logged and
counted like any background failure (once per published version).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from typing import Literal

import msgspec

from engine.core.errors import ConfigError
from engine.core.metrics import Metrics
from engine.core.tasks import Periodic
from engine.models.snapshot import Scorer, Snapshot, decode, encode, sigmoid
from engine.valkey import keys
from engine.valkey.store import Store

__all__ = [
    "NO_MODELS",
    "THOMPSON_SCALE",
    "Estimate",
    "LoadedModel",
    "ModelRegistry",
    "Models",
    "beta_sample",
    "estimate",
    "publish",
]

log = logging.getLogger("ringback.models")

Source = Literal["model", "prior", "none"]

# A mature model's Thompson draw is made at this many posterior standard deviations
# per unit of z: the diagonal Laplace posterior is too wide (every one of a visitor's
# correlated features keeps its own full variance), and sampling it narrower is what
# Chapelle and Li found best for click models ("An Empirical Evaluation of Thompson
# Sampling", 2011: 0.5 and 0.25 beat 1). benchmarks/bandit_bench.py measures it beside
# the full width (its "spread x 2": 15.5 % of random's regret against 9.7 %) and greedy.
THOMPSON_SCALE = 0.5


class Estimate(msgspec.Struct, frozen=True):
    """A propensity and where it came from: the model (`mature`), the observed rate
    of an immature one (`prior`), or nothing published (`none`, 1.0: rank as if
    there were no model). `sampled` is a draw from the posterior (the offer bandit's
    Thompson sample) when a draw was asked for and there is a model; else None."""

    propensity: float
    model: str
    version: int | None
    mature: bool
    source: Source
    sampled: float | None = None


class LoadedModel(msgspec.Struct, frozen=True):
    """A snapshot and its compiled scorer (compiled once, when it was loaded)."""

    snapshot: Snapshot
    scorer: Scorer


async def publish(store: Store, snapshot: Snapshot) -> None:
    """Make `snapshot` the model's current version for every worker. Two awaited
    writes, in order: the index never names a version whose snapshot is not stored."""
    await store.call("SET", keys.model_snapshot(snapshot.name), encode(snapshot), writes=True)
    await store.call("HSET", keys.MODEL_INDEX, snapshot.name, snapshot.version, writes=True)


Models = Mapping[str, LoadedModel]
NO_MODELS: Models = {}


class ModelRegistry(Periodic):
    """The current model set of this worker, refreshed every `poll_s`."""

    name = "model_registry"

    def __init__(self, store: Store, metrics: Metrics | None = None, poll_s: float = 1.0) -> None:
        super().__init__(poll_s, metrics)
        self.store = store
        # Replaced whole, never mutated: readers take a consistent set with one load.
        self.current: Mapping[str, LoadedModel] = {}
        # name -> index version that failed to decode, so it is not re-fetched (and
        # re-counted) every poll; a newer publish clears it.
        self._refused: dict[str, str] = {}

    async def tick(self) -> None:
        await self.refresh()

    async def refresh(self) -> Mapping[str, LoadedModel]:
        """Load what changed since the last poll and swap it in; returns the new set.
        Raises `ConfigError` after the swap if a snapshot was refused."""
        index: dict[str, str] = await self.store.call("HGETALL", keys.MODEL_INDEX) or {}
        old = self.current
        changed = [
            name
            for name, version in index.items()
            if self._refused.get(name) != version
            and (name not in old or str(old[name].snapshot.version) != version)
        ]
        raws = await asyncio.gather(
            *(self.store.call("GET", keys.model_snapshot(name)) for name in changed)
        )
        fresh = {name: model for name, model in old.items() if name in index}
        refused: list[str] = []
        for name, raw in zip(changed, raws, strict=True):
            try:
                if raw is None:
                    raise ValueError("the index names it but no snapshot is stored")
                snapshot = decode(raw)
                if snapshot.name != name:
                    raise ValueError(f"the snapshot is named {snapshot.name!r}")
                fresh[name] = LoadedModel(snapshot, snapshot.compile())
                self._refused.pop(name, None)
            except (msgspec.DecodeError, ValueError, TypeError) as exc:
                self._refused[name] = index[name]
                refused.append(f"{name} v{index[name]}: {exc}")
        for name in list(self._refused):
            if name not in index:
                del self._refused[name]
        if changed or len(fresh) != len(old):
            self.current = fresh  # the one assignment readers can observe
            self._export(old, fresh)
        if refused:
            raise ConfigError(keys.MODEL_INDEX, "snapshot", "refused " + "; ".join(refused))
        return fresh

    def _export(self, old: Mapping[str, LoadedModel], fresh: Mapping[str, LoadedModel]) -> None:
        if self.metrics is None:
            return
        m = self.metrics
        for name, model in fresh.items():
            s = model.snapshot
            m.model_auc.labels(name).set(s.auc if s.auc is not None else float("nan"))
            m.model_log_loss.labels(name).set(
                s.log_loss if s.log_loss is not None else float("nan")
            )
            m.model_samples.labels(name).set(s.samples)
        for name in old:
            if name not in fresh:
                for gauge in (m.model_auc, m.model_log_loss, m.model_samples):
                    try:
                        gauge.remove(name)
                    except KeyError:
                        pass

    def estimate(
        self, name: str, features: Mapping[str, float | str], z: float | None = None
    ) -> Estimate:
        """The propensity for one candidate from the current set: no I/O, a few µs."""
        return estimate(self.current, name, features, z)


def estimate(
    models: Models, name: str, features: Mapping[str, float | str], z: float | None = None
) -> Estimate:
    """The propensity for one candidate from a model set (`ModelRegistry.current`, an
    immutable snapshot, so deciding stays a pure function of its inputs): a mature
    model's prediction; an immature one's observed rate (its prior); 1.0 with no model
    (ranking by value x lever, as before there were models).

    With `z` (a standard-normal draw the caller makes, deterministically: the result is
    a pure function of the inputs) the estimate also carries `sampled`, a Thompson
    sample: a mature model's `Scorer.sample(features, z x THOMPSON_SCALE)` (its Laplace
    posterior); an immature one's draw from Beta(positives + 1, samples - positives +
    1), the observed rate's posterior under a uniform prior (`beta_sample`:
    context-free, as the model is not trusted yet); with no model, Beta(1, 1)'s.
    `propensity` stays the mean either way.
    """
    model = models.get(name)
    if model is None:
        # Nothing learnt yet: a draw from Beta(1, 1), so that until the first snapshot
        # the slot goes to each offer alike (the learner hears about every one) instead
        # of always to the same one.
        sampled = None if z is None else beta_sample(1.0, 1.0, z)
        return Estimate(1.0, name, None, False, "none", sampled)
    s = model.snapshot
    if not s.mature:
        sampled = (
            None if z is None else beta_sample(s.positives + 1, s.samples - s.positives + 1, z)
        )
        return Estimate(s.prior, name, s.version, False, "prior", sampled)
    if z is None:
        return Estimate(model.scorer.predict(features), name, s.version, True, "model")
    p, sampled = model.scorer.mean_and_sample(features, z * THOMPSON_SCALE)
    return Estimate(p, name, s.version, True, "model", sampled)


def beta_sample(a: float, b: float, z: float) -> float:
    """The Beta(a, b) quantile at Phi(z), approximately (a, b >= 1): logit(X) is close
    to normal with mean digamma(a) - digamma(b) and variance trigamma(a) + trigamma(b)
    (the logistic-normal approximation; exact in variance for Beta(1, 1), whose logit
    is the logistic distribution). Monotone in z, always inside (0, 1), no special
    functions: digamma and trigamma by their asymptotic series after shifting the
    argument to >= 6, where the series are accurate to ~1e-8. Against the exact
    quantiles: within ~0.002 from a, b ~ 20 on; coarser with no positive yet (a = 1),
    where its upper tail is heavier (Beta(1, 20) at 95 %: 0.197, exact 0.139), which
    only explores a little more.

    >>> beta_sample(1, 1, 0.0)
    0.5
    >>> round(beta_sample(21, 181, 0.0), 3), round(beta_sample(21, 181, 2.0), 3)
    (0.102, 0.153)
    """
    m = _digamma(a) - _digamma(b)
    v = _trigamma(a) + _trigamma(b)
    return sigmoid(m + z * math.sqrt(v))


def _digamma(x: float) -> float:
    shift = 0.0
    while x < 6.0:
        shift -= 1.0 / x
        x += 1.0
    f = 1.0 / (x * x)
    return shift + math.log(x) - 0.5 / x - f * (1 / 12 - f * (1 / 120 - f * (1 / 252)))


def _trigamma(x: float) -> float:
    shift = 0.0
    while x < 6.0:
        shift += 1.0 / (x * x)
        x += 1.0
    f = 1.0 / (x * x)
    return shift + 1.0 / x + 0.5 * f + (1.0 / x) * f * (1 / 6 - f * (1 / 30 - f * (1 / 42)))
