"""Aggregation rules as pure functions over fixed-point updates: exact integers, order-independent.

Every rule first sorts its inputs by update id and aligns each tensor to one common scale (the median of
the inputs' exponents, so an outlier cannot coarsen the honest updates), then works in int64. Integer
sums are associative, so the result is bit-identical whatever the input order, machine or thread count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from swarmnode.aggregation.codec import GlobalModel, QTensor
from swarmnode.aggregation.errors import UnknownRule
from swarmnode.aggregation.exact import exact_sum_of_squares, rescale, round_div

MOMENTUM_EXPONENT = 32  # server momentum is kept at a fixed scale of 2**-32
_MOMENTUM_BOUND = 1 << 50  # |m| bound at that scale (2**18 in real units): far beyond any sane delta
MAX_SAMPLES = (1 << 24) - 1  # sample-count weights are capped so weighted int64 sums cannot overflow


@dataclass(frozen=True)
class Contribution:
    """One participant's update with the id the chain stores and its sample count."""

    update_id: bytes
    num_samples: int
    tensors: dict[str, QTensor]


@dataclass(frozen=True)
class AggregationResult:
    """The aggregated delta plus which updates were used and which were excluded (with why)."""

    delta: dict[str, QTensor]
    used: tuple[bytes, ...]
    excluded: tuple[tuple[bytes, str], ...]
    server_state: dict[str, QTensor] = field(default_factory=dict)


def _canonical(contribs: Sequence[Contribution]) -> list[Contribution]:
    return sorted(contribs, key=lambda c: (c.update_id, c.num_samples))


def _aligned(contribs: Sequence[Contribution], name: str) -> tuple[torch.Tensor, int]:
    """Stack one tensor of every contribution at the median exponent: (k, *shape) int64."""
    exps = sorted(c.tensors[name].exponent for c in contribs)
    common = exps[(len(exps) - 1) // 2]
    stacked = torch.stack([rescale(c.tensors[name].values, c.tensors[name].exponent, common) for c in contribs])
    return stacked, common


def _weights(contribs: Sequence[Contribution]) -> list[int]:
    return [max(1, min(int(c.num_samples), MAX_SAMPLES)) for c in contribs]


def _weighted_mean(contribs: Sequence[Contribution], weights: Sequence[int]) -> dict[str, QTensor]:
    total = sum(weights)
    out: dict[str, QTensor] = {}
    for name in sorted(contribs[0].tensors):
        stacked, exp = _aligned(contribs, name)
        w = torch.tensor(weights, dtype=torch.int64).reshape(-1, *([1] * (stacked.dim() - 1)))
        out[name] = QTensor(round_div((stacked * w).sum(dim=0), total), exp)
    return out


def fedavg(contribs: Sequence[Contribution]) -> AggregationResult:
    """McMahan et al. 2017: the mean of the updates weighted by sample count."""
    cs = _canonical(contribs)
    return AggregationResult(_weighted_mean(cs, _weights(cs)), tuple(c.update_id for c in cs), ())


def median(contribs: Sequence[Contribution]) -> AggregationResult:
    """Coordinate-wise median (Yin et al. 2018); the mean of the two middle values for even counts."""
    cs = _canonical(contribs)
    out: dict[str, QTensor] = {}
    k = len(cs)
    for name in sorted(cs[0].tensors):
        stacked, exp = _aligned(cs, name)
        srt = torch.sort(stacked, dim=0).values
        lo, hi = srt[(k - 1) // 2], srt[k // 2]
        out[name] = QTensor(torch.div(lo + hi, 2, rounding_mode="floor"), exp)
    return AggregationResult(out, tuple(c.update_id for c in cs), ())


def trimmed_mean(contribs: Sequence[Contribution], beta: Fraction = Fraction(1, 10)) -> AggregationResult:
    """Coordinate-wise mean after dropping the floor(beta*k) largest and smallest values."""
    cs = _canonical(contribs)
    k = len(cs)
    t = int(Fraction(beta) * k)
    if not 0 <= Fraction(beta) < Fraction(1, 2):
        raise UnknownRule(f"trimmed-mean beta must be in [0, 1/2), got {beta}")
    t = min(t, (k - 1) // 2)
    out: dict[str, QTensor] = {}
    for name in sorted(cs[0].tensors):
        stacked, exp = _aligned(cs, name)
        kept = torch.sort(stacked, dim=0).values[t : k - t]
        out[name] = QTensor(round_div(kept.sum(dim=0), k - 2 * t), exp)
    return AggregationResult(out, tuple(c.update_id for c in cs), ())


def _pairwise_sq_distances(cs: Sequence[Contribution]) -> list[list[Fraction]]:
    k = len(cs)
    dist = [[Fraction(0)] * k for _ in range(k)]
    for name in sorted(cs[0].tensors):
        stacked, exp = _aligned(cs, name)
        scale = Fraction(1, 4**exp) if exp >= 0 else Fraction(4 ** (-exp))
        for i in range(k):
            for j in range(i + 1, k):
                d = exact_sum_of_squares(stacked[i] - stacked[j])
                dist[i][j] += d * scale
                dist[j][i] = dist[i][j]
    return dist


def krum_scores(contribs: Sequence[Contribution], f: int) -> list[Fraction]:
    """Blanchard et al. 2017: sum of squared distances to the k - f - 2 nearest other updates."""
    cs = _canonical(contribs)
    k = len(cs)
    neighbours = max(1, k - f - 2)
    dist = _pairwise_sq_distances(cs)
    return [sum(sorted(dist[i][j] for j in range(k) if j != i)[:neighbours], Fraction(0)) for i in range(k)]


def multi_krum(contribs: Sequence[Contribution], f: int = 1, m: int | None = None) -> AggregationResult:
    """Average (by sample count) the m updates with the lowest Krum scores; m = 1 is Krum itself."""
    cs = _canonical(contribs)
    k = len(cs)
    m = k - f if m is None else m
    m = max(1, min(m, k))
    if k == 1:
        return fedavg(cs)
    scores = krum_scores(cs, f)
    order = sorted(range(k), key=lambda i: (scores[i], cs[i].update_id))  # ties broken by id
    chosen = sorted(order[:m])
    picked = [cs[i] for i in chosen]
    excluded = tuple((cs[i].update_id, f"krum score rank {order.index(i) + 1} of {k}") for i in order[m:])
    result = _weighted_mean(picked, _weights(picked))
    return AggregationResult(result, tuple(c.update_id for c in picked), excluded)


def krum(contribs: Sequence[Contribution], f: int = 1) -> AggregationResult:
    return multi_krum(contribs, f=f, m=1)


def _to_fraction(x: Any, what: str) -> Fraction:
    try:
        return Fraction(str(x)).limit_denominator(1000)
    except (ValueError, TypeError):
        raise UnknownRule(f"{what} must be a number, got {x!r}") from None


def fedavgm(
    contribs: Sequence[Contribution],
    state: dict[str, QTensor],
    server_lr: Fraction = Fraction(1),
    momentum: Fraction = Fraction(9, 10),
) -> AggregationResult:
    """Hsu et al. 2019: server momentum over the FedAvg delta, kept in fixed point so every node agrees.

    m' = momentum * m + fedavg(updates);  delta = server_lr * m'
    """
    base = fedavg(contribs)
    new_state: dict[str, QTensor] = {}
    delta: dict[str, QTensor] = {}
    for name, d in base.delta.items():
        d_fixed = _to_momentum_scale(d)
        prev = state.get(name)
        m = torch.zeros_like(d_fixed) if prev is None else prev.values.to(torch.int64)
        m_new = torch.div(m * momentum.numerator, momentum.denominator, rounding_mode="floor") + d_fixed
        m_new = torch.clamp(m_new, -_MOMENTUM_BOUND, _MOMENTUM_BOUND)
        new_state[name] = QTensor(m_new, MOMENTUM_EXPONENT)
        delta[name] = QTensor(torch.div(m_new * server_lr.numerator, server_lr.denominator, rounding_mode="floor"),
                              MOMENTUM_EXPONENT)
    return AggregationResult(delta, base.used, base.excluded, new_state)


def _to_momentum_scale(d: QTensor) -> torch.Tensor:
    """A delta re-expressed at the momentum scale, exactly (left shift) or rounded half up (right shift)."""
    shift = MOMENTUM_EXPONENT - d.exponent
    v = d.values.to(torch.int64)
    if shift >= 50:
        return torch.sign(v) * _MOMENTUM_BOUND
    if shift >= 0:
        limit = _MOMENTUM_BOUND >> shift
        return torch.clamp(v, -limit, limit) << shift
    d_shift = min(-shift, 62)
    return (v + (1 << (d_shift - 1))) >> d_shift


@dataclass(frozen=True)
class RuleSpec:
    """An aggregation rule by name with its parameters, as written in the genesis task."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


RULES: dict[str, Callable[..., AggregationResult]] = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "median": median,
    "trimmed-mean": trimmed_mean,
    "krum": krum,
    "multi-krum": multi_krum,
}


def run_rule(spec: RuleSpec, contribs: Sequence[Contribution], state: dict[str, QTensor]) -> AggregationResult:
    """Dispatch `spec` over the contributions; `state` is the previous server state (fedavgm)."""
    p = dict(spec.params)
    if spec.name == "fedavg":
        return fedavg(contribs)
    if spec.name == "fedavgm":
        return fedavgm(contribs, state, _to_fraction(p.get("server_lr", 1), "server_lr"),
                       _to_fraction(p.get("momentum", 0.9), "momentum"))
    if spec.name == "median":
        return median(contribs)
    if spec.name == "trimmed-mean":
        return trimmed_mean(contribs, _to_fraction(p.get("beta", 0.1), "beta"))
    if spec.name == "krum":
        return krum(contribs, int(p.get("f", 1)))
    if spec.name == "multi-krum":
        m = p.get("m")
        return multi_krum(contribs, int(p.get("f", 1)), None if m is None else int(m))
    raise UnknownRule(f"unknown aggregation rule {spec.name!r}; known: {', '.join(RULES)}")


def apply_delta(model: GlobalModel, result: AggregationResult) -> GlobalModel:
    """G' = G + delta, elementwise in float32 (no reductions, so bit-identical everywhere)."""
    params = {name: (t + result.delta[name].to_float()) if name in result.delta else t.clone()
              for name, t in model.params.items()}
    return GlobalModel(params, result.server_state if result.server_state else dict(model.server_state))


def aggregate(spec: RuleSpec, model: GlobalModel, contribs: Sequence[Contribution]) -> tuple[GlobalModel, AggregationResult]:
    """One aggregation step: the new global model and what was used. No contributions: unchanged."""
    if not contribs:
        return model, AggregationResult({}, (), (), dict(model.server_state))
    result = run_rule(spec, contribs, dict(model.server_state))
    return apply_delta(model, result), result
