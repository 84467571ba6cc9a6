"""A library of Byzantine participants: poisoned deltas, lying reports, malformed or missing bytes.

Each attack is a pure function of what the attacker knows in one round (`RoundContext`: its own honest
delta and blob, optionally the honest deltas of the round, its earlier commits, the blobs announced this
round) and returns what it does on the protocol (`Submission`: the hash it commits, the sample count it
reports, the bytes it serves, if any). Label flipping instead changes the attacker's training data
before it trains (`Attack.labels`). Nothing here touches the network or a chain, so the same attacks
drive the in-process simulation (`swarmnode.experiment.Swarm`) and could drive a hostile daemon.

| name | changes | what it does |
| --- | --- | --- |
| sign-flip | delta | -delta |
| scaling | delta | factor * delta (default 10) |
| gaussian | delta | delta + N(0, sigma^2) per coordinate (default sigma 0.1), seeded |
| alie | delta, omniscient | Baruch et al. 2019: mean - z * std of the honest deltas, z from (n, f) |
| ipm | delta, omniscient | Xie et al. 2019: -epsilon * mean of the honest deltas (default 0.1) |
| min-max | delta, omniscient | Shejwalkar & Houmansadr 2021: mean + gamma * (-unit mean), the largest gamma whose
  distance to every honest delta stays within the honest deltas' largest pairwise distance |
| label-flip | data | trains honestly on labels y -> 9 - y |
| nan, inf | bytes | an update blob whose tensors are float32 NaN / Inf (the wire format allows int32 only) |
| absurd-norm | bytes | int32 values at the largest scale the codec allows: decodes, norm ~ 2**100 |
| wrong-shape | bytes | canonical bytes that decode, every tensor one row short of the model's shape |
| inflated-samples | samples | the honest delta, reporting numSamples = 2**24 |
| replay-old | bytes | re-commits its own blob of an earlier round (a new hash within this round) |
| replay-peer | bytes | commits another participant's blob of this round (same bytes, same hash) |
| withhold | bytes | commits the hash of a sign-flipped update and never serves the blob |
| equivocate | bytes | commits the hash of a sign-flipped update and serves its honest blob instead |

The omniscient attacks send one vector from every attacker; each attacker moves one quantized value by
(its index + 1) units of the last place so that their blobs, and so their hashes, differ (the contract
refuses a hash already committed in the round).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from swarmnode.aggregation.codec import (
    KIND_UPDATE,
    MAGIC,
    MIN_EXPONENT,
    Q_BITS,
    VERSION,
    QTensor,
    content_id,
    encode_update,
    quantize_delta,
)

Delta = dict[str, torch.Tensor]
NUM_CLASSES = 10
INFLATED_SAMPLES = 1 << 24


class AttackError(ValueError):
    """An unknown attack, a bad parameter, or an attack run without the knowledge it needs."""


# ---------------------------------------------------------------- what an attack knows and does


@dataclass(frozen=True)
class Changes:
    """What an attack changes compared with an honest participant."""

    delta: bool = False  # the values of the update it commits
    samples: bool = False  # the numSamples it reports
    served: bool = False  # the bytes it serves for its commit: malformed, none, someone else's, old ones
    data: bool = False  # its local training data
    omniscient: bool = False  # it reads the honest deltas of the round
    reveals: bool = False  # with secure aggregation: it commits, then withholds its shares (never reveals)


@dataclass(frozen=True)
class RoundContext:
    """What one attacker knows in one round."""

    round: int
    index: int  # the attacker's participant index
    own: Mapping[str, torch.Tensor]  # its honest delta of this round
    own_blob: bytes  # its honest update, canonically encoded
    num_samples: int  # its honest sample count
    honest: Sequence[Mapping[str, torch.Tensor]] = ()  # the honest participants' deltas (omniscient attacks)
    n: int = 0  # participants in the round
    f: int = 0  # attackers among them
    history: Sequence[bytes] = ()  # blobs this attacker committed in earlier rounds, oldest first
    peer_blobs: Sequence[bytes] = ()  # other participants' blobs announced this round
    seed: int = 0


@dataclass(frozen=True)
class Submission:
    """What a participant does on the protocol in one round: commit `committed_hash` with `num_samples`
    and serve `served` when asked for that hash (None: serves nothing)."""

    committed_hash: bytes
    num_samples: int
    served: bytes | None

    @classmethod
    def of(cls, blob: bytes, num_samples: int) -> Submission:
        """The honest form: commit the blob's own hash and serve the blob."""
        return cls(content_id(blob), num_samples, blob)

    def available(self) -> bool:
        """Whether a peer fetching `committed_hash` gets bytes that verify against it."""
        return self.served is not None and content_id(self.served) == self.committed_hash


@dataclass(frozen=True)
class Attack:
    """A named attack: `craft` turns a round's context into a submission; `label_map` (if any) transforms
    the attacker's training labels before it trains."""

    name: str
    changes: Changes
    craft: Callable[[RoundContext], Submission]
    label_map: Callable[[torch.Tensor], torch.Tensor] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.label_map is None else self.label_map(labels)


@dataclass(frozen=True)
class Adversary:
    """An attack played by a set of participant indices: the simulation's plug-in."""

    attack: Attack
    attackers: frozenset[int]
    seed: int = 0


# ---------------------------------------------------------------- malicious deltas (pure)


def sign_flip(delta: Mapping[str, torch.Tensor]) -> Delta:
    return {n: -t for n, t in delta.items()}


def scale(delta: Mapping[str, torch.Tensor], factor: float) -> Delta:
    return {n: t * factor for n, t in delta.items()}


def gaussian_noise(delta: Mapping[str, torch.Tensor], sigma: float, seed: int) -> Delta:
    """delta + N(0, sigma^2) on every coordinate, from a generator seeded with `seed` (tensors in name order)."""
    g = torch.Generator().manual_seed(seed)
    return {n: delta[n] + (sigma * torch.randn(delta[n].shape, generator=g, dtype=torch.float64)).to(delta[n].dtype)
            for n in sorted(delta)}


def _flatten(deltas: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """(k, d) float64, tensors in name order."""
    names = sorted(deltas[0])
    return torch.stack([torch.cat([d[n].reshape(-1).to(torch.float64) for n in names]) for d in deltas])


def _unflatten(vec: torch.Tensor, template: Mapping[str, torch.Tensor]) -> Delta:
    out: Delta = {}
    pos = 0
    for n in sorted(template):
        size = template[n].numel()
        out[n] = vec[pos : pos + size].reshape(template[n].shape).to(template[n].dtype)
        pos += size
    return out


def _need_honest(honest: Sequence[Mapping[str, torch.Tensor]], what: str, at_least: int = 1) -> None:
    if len(honest) < at_least:
        raise AttackError(f"{what} needs at least {at_least} honest deltas of the round, got {len(honest)}")


def alie_z(n: int, f: int) -> float:
    """Baruch, Baruch, Goldberg 2019 ("A little is enough"): s = floor(n/2 + 1) - f supporters are needed,
    z = Phi^-1((n - s) / n). For n = 10: z = 0 at f = 1, 0.253 at f = 2, 0.524 at f = 3."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        raise AttackError(f"ALIE is undefined for n = {n}, f = {f} (quantile {p})")
    return NormalDist().inv_cdf(p)


def alie(honest: Sequence[Mapping[str, torch.Tensor]], n: int, f: int, z: float | None = None) -> Delta:
    """mean - z * std of the honest deltas, coordinate-wise (z from alie_z unless given)."""
    _need_honest(honest, "ALIE", 2)
    x = _flatten(honest)
    zz = alie_z(n, f) if z is None else z
    return _unflatten(x.mean(0) - zz * x.std(0), honest[0])


def ipm(honest: Sequence[Mapping[str, torch.Tensor]], epsilon: float) -> Delta:
    """Inner product manipulation (Xie, Koyejo, Gupta 2019): -epsilon * the mean of the honest deltas."""
    _need_honest(honest, "IPM")
    return _unflatten(-epsilon * _flatten(honest).mean(0), honest[0])


def min_max(honest: Sequence[Mapping[str, torch.Tensor]], gamma_init: float = 10.0, tol: float = 1e-5) -> Delta:
    """AGR-agnostic min-max (Shejwalkar & Houmansadr 2021, unit-vector perturbation): mu - gamma * mu/||mu||
    with the largest gamma (halving search from gamma_init) such that the malicious delta is no farther
    from any honest delta than the two farthest honest deltas are from each other."""
    _need_honest(honest, "min-max", 2)
    x = _flatten(honest)
    mu = x.mean(0)
    p = -mu / mu.norm().clamp(min=1e-30)
    max_pair = float(torch.cdist(x, x).max())
    gamma, step, good = gamma_init, gamma_init / 2, 0.0
    while abs(good - gamma) > tol:
        if float((x - (mu + gamma * p)).norm(dim=1).max()) <= max_pair:
            good = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return _unflatten(mu + good * p, honest[0])


def flip_labels(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """y -> (num_classes - 1) - y (9 - y for 10 classes)."""
    return (num_classes - 1) - labels


# ---------------------------------------------------------------- bytes (pure)


def encode(delta: Mapping[str, torch.Tensor]) -> bytes:
    """What an honest node would serve for this delta."""
    return encode_update(quantize_delta(delta))


def encode_distinct(delta: Mapping[str, torch.Tensor], salt: int) -> bytes:
    """encode(delta) with the first value of the first tensor moved by `salt` units of the last place, so
    attackers sending one vector still commit distinct hashes."""
    q = quantize_delta(delta)
    first = sorted(q)[0]
    values = q[first].values.clone()
    flat = values.view(-1)
    limit = (1 << (Q_BITS - 1)) - 1
    flat[0] = int(max(-limit, min(limit, int(flat[0]) + salt)))
    q[first] = QTensor(values, q[first].exponent)
    return encode_update(q)


def _raw_update(items: Sequence[tuple[str, int, tuple[int, ...], int, bytes]]) -> bytes:
    """Bytes in the update layout with any dtype code: (name, dtype code, shape, exponent, data)."""
    parts = [struct.pack("<4sBBI", MAGIC, VERSION, KIND_UPDATE, len(items))]
    for name, code, shape, exponent, data in sorted(items):
        raw = name.encode()
        parts.append(struct.pack("<H", len(raw)) + raw + struct.pack("<BB", code, len(shape)))
        parts.append(struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<h", exponent) + data)
    return b"".join(parts)


def non_finite_blob(delta: Mapping[str, torch.Tensor], value: float = math.nan, salt: int = 0) -> bytes:
    """The delta's tensors as float32 filled with `value` (NaN or Inf), in the update layout; the first value
    is `salt` when nonzero (distinct bytes per attacker). Updates carry int32 only, so these bytes are
    refused when decoded (MalformedBlob)."""
    code_f32 = 1
    items = []
    for i, (n, t) in enumerate(sorted(delta.items())):
        data = np.full(tuple(t.shape), value, dtype="<f4")
        if i == 0 and salt and data.size:
            data.reshape(-1)[0] = salt
        items.append((n, code_f32, tuple(t.shape), 0, data.tobytes()))
    return _raw_update(items)


def absurd_norm_blob(delta: Mapping[str, torch.Tensor], salt: int = 0) -> bytes:
    """Valid int32 update bytes with every value at the largest magnitude and scale the codec allows (the
    first one `salt` smaller: distinct bytes per attacker)."""
    big = (1 << (Q_BITS - 1)) - 1
    out = {}
    for i, (n, t) in enumerate(sorted(delta.items())):
        values = torch.full(tuple(t.shape), big, dtype=torch.int32)
        if i == 0 and values.numel():
            values.view(-1)[0] = big - salt
        out[n] = QTensor(values, MIN_EXPONENT)
    return encode_update(out)


def wrong_shape_blob(delta: Mapping[str, torch.Tensor]) -> bytes:
    """Canonical update bytes that decode but match no model: every tensor loses its last row (dim 0)."""
    q = quantize_delta(delta)
    return encode_update({n: QTensor(t.values[:-1].contiguous() if t.values.dim() else t.values.reshape(1),
                                     t.exponent) for n, t in q.items()})


# ---------------------------------------------------------------- the registry


def _delta_attack(name: str, changes: Changes, make: Callable[[RoundContext], Delta], params: dict[str, Any],
                  distinct: bool = False) -> Attack:
    def craft(ctx: RoundContext) -> Submission:
        bad = make(ctx)
        return Submission.of(encode_distinct(bad, ctx.index + 1) if distinct else encode(bad), ctx.num_samples)

    return Attack(name, changes, craft, params=params)


def _sign_flip() -> Attack:
    return _delta_attack("sign-flip", Changes(delta=True), lambda ctx: sign_flip(ctx.own), {})


def _scaling(factor: float = 10.0) -> Attack:
    return _delta_attack("scaling", Changes(delta=True), lambda ctx: scale(ctx.own, factor), {"factor": factor})


def _gaussian(sigma: float = 0.1) -> Attack:
    if not sigma > 0:
        raise AttackError(f"gaussian sigma must be > 0, got {sigma}")

    def make(ctx: RoundContext) -> Delta:
        return gaussian_noise(ctx.own, sigma, (ctx.seed * 1_000_003 + ctx.round) * 1009 + ctx.index)

    return _delta_attack("gaussian", Changes(delta=True), make, {"sigma": sigma})


def _alie(z: float | None = None) -> Attack:
    return _delta_attack("alie", Changes(delta=True, omniscient=True),
                         lambda ctx: alie(ctx.honest, ctx.n, ctx.f, z), {"z": z}, distinct=True)


def _ipm(epsilon: float = 0.1) -> Attack:
    return _delta_attack("ipm", Changes(delta=True, omniscient=True), lambda ctx: ipm(ctx.honest, epsilon),
                         {"epsilon": epsilon}, distinct=True)


def _min_max(gamma_init: float = 10.0) -> Attack:
    return _delta_attack("min-max", Changes(delta=True, omniscient=True),
                         lambda ctx: min_max(ctx.honest, gamma_init), {"gamma_init": gamma_init}, distinct=True)


def _label_flip() -> Attack:
    return Attack("label-flip", Changes(data=True), lambda ctx: Submission.of(ctx.own_blob, ctx.num_samples),
                  label_map=flip_labels)


def _non_finite(value: float) -> Callable[[], Attack]:
    name = "nan" if math.isnan(value) else "inf"

    def build() -> Attack:
        return Attack(name, Changes(served=True),
                      lambda ctx: Submission.of(non_finite_blob(ctx.own, value, ctx.index + 1), ctx.num_samples))

    return build


def _absurd_norm() -> Attack:
    return Attack("absurd-norm", Changes(served=True),
                  lambda ctx: Submission.of(absurd_norm_blob(ctx.own, ctx.index + 1), ctx.num_samples))


def _wrong_shape() -> Attack:
    return Attack("wrong-shape", Changes(served=True),
                  lambda ctx: Submission.of(wrong_shape_blob(ctx.own), ctx.num_samples))


def _inflated(samples: int = INFLATED_SAMPLES) -> Attack:
    if samples < 1:
        raise AttackError(f"inflated-samples wants a positive count, got {samples}")
    return Attack("inflated-samples", Changes(samples=True), lambda ctx: Submission.of(ctx.own_blob, samples),
                  params={"samples": samples})


def _replay_old(age: int = 0) -> Attack:
    """age 0: its oldest commit (round 0's update, every round); age a > 0: its commit of a rounds ago."""

    def craft(ctx: RoundContext) -> Submission:
        if not ctx.history:
            return Submission.of(ctx.own_blob, ctx.num_samples)  # nothing to replay yet: honest
        blob = ctx.history[0] if age <= 0 else ctx.history[max(0, len(ctx.history) - age)]
        return Submission.of(blob, ctx.num_samples)

    return Attack("replay-old", Changes(served=True), craft, params={"age": age})


def _replay_peer() -> Attack:
    def craft(ctx: RoundContext) -> Submission:
        if not ctx.peer_blobs:
            raise AttackError("replay-peer needs another participant's blob of the round")
        return Submission.of(ctx.peer_blobs[ctx.index % len(ctx.peer_blobs)], ctx.num_samples)

    return Attack("replay-peer", Changes(served=True), craft)


def _withhold() -> Attack:
    return Attack("withhold", Changes(served=True),
                  lambda ctx: Submission(content_id(encode(sign_flip(ctx.own))), ctx.num_samples, None))


def _silent() -> Attack:
    """Commits its honest update, then goes silent: with secure aggregation it never reveals its shares, as
    a participant that crashed right after committing would (without secure aggregation: honest)."""
    return Attack("silent", Changes(reveals=True), lambda ctx: Submission.of(ctx.own_blob, ctx.num_samples))


def _equivocate() -> Attack:
    return Attack("equivocate", Changes(served=True),
                  lambda ctx: Submission(content_id(encode(sign_flip(ctx.own))), ctx.num_samples, ctx.own_blob))


ATTACKS: dict[str, Callable[..., Attack]] = {
    "silent": _silent,
    "sign-flip": _sign_flip,
    "scaling": _scaling,
    "gaussian": _gaussian,
    "alie": _alie,
    "ipm": _ipm,
    "min-max": _min_max,
    "label-flip": _label_flip,
    "nan": _non_finite(math.nan),
    "inf": _non_finite(math.inf),
    "absurd-norm": _absurd_norm,
    "wrong-shape": _wrong_shape,
    "inflated-samples": _inflated,
    "replay-old": _replay_old,
    "replay-peer": _replay_peer,
    "withhold": _withhold,
    "equivocate": _equivocate,
}


def make_attack(name: str, **params: Any) -> Attack:
    """The registered attack `name` with its parameters (each has a default); AttackError when unknown."""
    builder = ATTACKS.get(name)
    if builder is None:
        raise AttackError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    try:
        return builder(**params)
    except TypeError as exc:
        raise AttackError(f"attack {name!r}: bad parameters {params}: {exc}") from None
