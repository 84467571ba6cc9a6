"""Differential privacy of updates: noise calibration, the epsilon spent, clipping and private Gaussian noise.

Two modes, as the genesis [privacy] table names them (swarmnode/privacy/config.py):

- "participant" (DP-FedAvg, McMahan et al. 2018): one Gaussian release per round. The whole update is
  clipped to L2 norm S and N(0, (z * S)^2) is added per coordinate: `clip_and_noise`.
- "example" (DP-SGD, Abadi et al. 2016): inside local training, each example's gradient is clipped to S and
  N(0, (z * S)^2) is added to every Poisson-sampled batch's sum: `DPSGD`, consumed by
  swarmnode.learning.train.train_local.

The accountant is dp_accounting's RDP accountant under add-or-remove-one adjacency (of a participant's whole
data in participant mode, of one example in example mode); nothing here composes privacy losses by hand.
`dp_noise_for` turns a [privacy] table, the task and the size of a participant's training split into the
`DPNoise` it applies; the daemon and the simulation (swarmnode.experiment) both call it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from swarmnode.privacy.config import PrivacyConfig

if TYPE_CHECKING:
    from swarmnode.learning.tasks import Task

MAX_NOISE_MULTIPLIER = 1e4  # as PrivacyConfig bounds noise_multiplier
CALIBRATION_RTOL = 1e-3  # the returned z is at most this much (relative) above the smallest z meeting the budget


class DPError(ValueError):
    """Root of the privacy package's DP errors: invalid parameters or input; the message names the value."""


class NotPrivate(DPError):
    """A DP function was asked for with dp = "off", or for a mode it does not serve."""


class NonFiniteUpdate(DPError):
    """An update (or gradient) holds NaN or Inf: its norm, hence its clipping, is undefined."""


class BudgetUnreachable(DPError):
    """No noise multiplier up to MAX_NOISE_MULTIPLIER meets (epsilon, delta) over the horizon."""


@dataclass(frozen=True)
class DPSGD:
    """Example-level DP-SGD for one local training run (swarmnode.learning.train.train_local).

    Each example's gradient is clipped to `clip_norm`; the batch's sum gets N(0, noise_std^2) per coordinate
    and is divided by the expected batch size. `generator` samples both the Poisson batches and the noise:
    it must be `private_generator()`, never one seeded from the task or the chain.
    """

    clip_norm: float
    noise_std: float  # z * clip_norm
    generator: torch.Generator

    def __post_init__(self) -> None:
        _check_clip(self.clip_norm)
        _check_std(self.noise_std)


@dataclass(frozen=True)
class DPNoise:
    """What one participant applies, derived from the [privacy] table by `dp_noise_for`.

    participant mode: clip the round's update to `clip_norm`, add N(0, noise_std^2) per coordinate.
    example mode: train with DPSGD(clip_norm, noise_std, private generator); `sampling_rate` and
    `steps_per_round` are what the accountant composes.
    """

    cfg: PrivacyConfig
    noise_multiplier: float  # z
    noise_std: float
    sampling_rate: float | None = None  # example mode only
    steps_per_round: int | None = None  # example mode only

    @property
    def mode(self) -> str:
        return self.cfg.dp

    @property
    def clip_norm(self) -> float:
        return self.cfg.clip_norm

    def epsilon_after(self, releases: int) -> float:
        """The epsilon this participant has spent after `releases` committed updates."""
        return epsilon_after(self.cfg, releases, self.noise_multiplier, sampling_rate=self.sampling_rate,
                             steps_per_round=self.steps_per_round)

    def dpsgd(self, generator: torch.Generator) -> DPSGD:
        if self.mode != "example":
            raise NotPrivate(f"DP-SGD is for privacy.dp = \"example\", not {self.mode!r}")
        return DPSGD(self.clip_norm, self.noise_std, generator)


# ---- accounting ----

def _check_clip(clip_norm: float) -> None:
    if isinstance(clip_norm, bool) or not isinstance(clip_norm, int | float) or not 0.0 < clip_norm < math.inf:
        raise DPError(f"clip_norm must be a finite number > 0, got {clip_norm!r}")


def _check_std(noise_std: float) -> None:
    if isinstance(noise_std, bool) or not isinstance(noise_std, int | float) or not 0.0 <= noise_std < math.inf:
        raise DPError(f"noise_std must be a finite number >= 0, got {noise_std!r}")


def sampling_rate(batch_size: int, n_train: int) -> float:
    """q of Poisson sampling: each of `n_train` examples joins a batch with probability batch_size / n_train
    (capped at 1), so a batch holds `batch_size` examples on average."""
    if batch_size < 1 or n_train < 1:
        raise DPError(f"batch_size and n_train must be >= 1, got {batch_size}, {n_train}")
    return min(1.0, batch_size / n_train)


def _mechanism(mode: str, sampling_rate: float | None, steps_per_round: int | None) -> tuple[float, int]:
    """(q, releases per round) of a mode: participant 1.0 and 1; example the DP-SGD batch rate and steps."""
    if mode == "participant":
        return 1.0, 1
    if mode != "example":
        raise NotPrivate(f"privacy.dp = {mode!r}: no mechanism to account")
    if sampling_rate is None or not 0.0 < sampling_rate <= 1.0:
        raise DPError(f"example mode needs a sampling_rate in (0, 1], got {sampling_rate!r}")
    if steps_per_round is None or isinstance(steps_per_round, bool) or steps_per_round < 1:
        raise DPError(f"example mode needs steps_per_round >= 1, got {steps_per_round!r}")
    return float(sampling_rate), int(steps_per_round)


@contextlib.contextmanager
def _absl_errors_only() -> Iterator[None]:
    """dp_accounting logs (through absl) a warning for each fractional RDP order whose series does not
    converge, and leaves that order out of the minimum over orders, which can only raise epsilon: the
    figure stays an upper bound, and a calibration would otherwise print dozens of lines."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@functools.lru_cache(maxsize=4096)
def _epsilon(q: float, count: int, z: float, delta: float) -> float:
    """epsilon of `count` compositions of the (Poisson-subsampled at q) Gaussian mechanism with multiplier z."""
    import dp_accounting  # deferred: importing it takes over a second, and most processes never account
    from dp_accounting import rdp

    if count == 0:
        return 0.0
    if z == 0.0:
        return math.inf
    event: Any = dp_accounting.GaussianDpEvent(z)
    if q < 1.0:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    accountant = rdp.RdpAccountant()
    with _absl_errors_only():
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, count))
        return float(accountant.get_epsilon(delta))


def epsilon_after(cfg: PrivacyConfig, releases: int, z: float, *, sampling_rate: float | None = None,
                  steps_per_round: int | None = None) -> float:
    """The epsilon spent at cfg.delta after `releases` rounds (commits) with noise multiplier z
    (0 releases: 0.0; z == 0: inf). Example mode composes steps_per_round DP-SGD steps per release."""
    if isinstance(releases, bool) or not isinstance(releases, int) or releases < 0:
        raise DPError(f"releases must be an integer >= 0, got {releases!r}")
    if not 0.0 <= z < math.inf:
        raise DPError(f"noise multiplier must be a finite number >= 0, got {z!r}")
    q, per_round = _mechanism(cfg.dp, sampling_rate, steps_per_round)
    return _epsilon(q, releases * per_round, float(z), cfg.delta)


@functools.lru_cache(maxsize=1024)
def _calibrate(q: float, count: int, epsilon: float, delta: float) -> float:
    """Bisection on z, whose epsilon decreases monotonically: the bracket [lo, hi] keeps epsilon(lo) over
    the budget and epsilon(hi) within it, found by doubling or halving from 1 (small z with large q makes
    the accountant's series slow to converge, so the bracket avoids z near 0)."""
    hi = 1.0
    while _epsilon(q, count, hi, delta) > epsilon:
        hi *= 2.0
        if hi > MAX_NOISE_MULTIPLIER:
            raise BudgetUnreachable(f"epsilon {epsilon} at delta {delta} needs a noise multiplier above "
                                    f"{MAX_NOISE_MULTIPLIER:g} ({count} releases, q {q:.4g})")
    lo = hi / 2.0
    while _epsilon(q, count, lo, delta) <= epsilon:
        hi, lo = lo, lo / 2.0
        if lo < 1e-6:
            return hi  # any budget this large is met by (almost) no noise; PrivacyConfig caps epsilon anyway
    while hi - lo > CALIBRATION_RTOL * hi:
        mid = 0.5 * (lo + hi)
        if _epsilon(q, count, mid, delta) > epsilon:
            lo = mid
        else:
            hi = mid
    return hi


def noise_multiplier_for(cfg: PrivacyConfig, *, sampling_rate: float | None = None,
                         steps_per_round: int | None = None) -> float:
    """The smallest z (to a relative 1e-3, rounded up) whose epsilon after cfg.rounds rounds is at most
    cfg.epsilon at cfg.delta. participant mode: one Gaussian release per round; example mode: steps_per_round
    Poisson-subsampled Gaussian steps at `sampling_rate` per round."""
    if not cfg.dp_on:
        raise NotPrivate("privacy.dp = \"off\": there is no noise to calibrate")
    if not 0.0 < cfg.epsilon < math.inf or not 0.0 < cfg.delta < 1.0:
        raise DPError(f"calibration needs epsilon > 0 and delta in (0, 1), got {cfg.epsilon!r}, {cfg.delta!r}")
    q, per_round = _mechanism(cfg.dp, sampling_rate, steps_per_round)
    return _calibrate(q, cfg.rounds * per_round, float(cfg.epsilon), float(cfg.delta))


def participant_noise_std(cfg: PrivacyConfig, z: float, min_participants: int | None) -> float:
    """Per-coordinate noise std one participant adds to its clipped update (participant mode).

    Without secure aggregation every update is revealed, so each carries the whole N(0, (zS)^2) (local DP).
    With it only the sum of at least `min_participants` updates is revealed: each adds (zS) / sqrt(m), and
    the sum carries N(0, (zS)^2) (distributed DP; fewer honest contributors than m means less privacy).
    """
    if cfg.dp != "participant":
        raise NotPrivate(f"participant noise is for privacy.dp = \"participant\", not {cfg.dp!r}")
    if not 0.0 <= z < math.inf:
        raise DPError(f"noise multiplier must be a finite number >= 0, got {z!r}")
    std = z * cfg.clip_norm
    if not cfg.secure_aggregation:
        return std
    if isinstance(min_participants, bool) or not isinstance(min_participants, int) or min_participants < 1:
        raise DPError(f"secure aggregation splits the noise over min_participants >= 1, got {min_participants!r}")
    return std / math.sqrt(min_participants)


def dp_noise_for(cfg: PrivacyConfig, task: Task, n_train: int, *, min_participants: int | None = None) -> DPNoise:
    """The noise one participant with `n_train` training examples applies under `cfg` for `task`.

    z is cfg.noise_multiplier when nonzero (pinned by the genesis), else calibrated so that cfg.rounds
    commits spend cfg.epsilon. Example mode samples batches at q = batch_size / n_train for the task's local
    steps. `min_participants` matters only with secure aggregation (participant_noise_std).
    """
    if not cfg.dp_on:
        raise NotPrivate("privacy.dp = \"off\": there is no noise to apply")
    if cfg.dp == "participant":
        z = cfg.noise_multiplier or noise_multiplier_for(cfg)
        return DPNoise(cfg, z, participant_noise_std(cfg, z, min_participants))
    if task.logit_adjust != 0.0:
        raise DPError("task.logit_adjust reads the local label counts outside the clipped gradients: DP-SGD "
                      "(privacy.dp = \"example\") does not cover it; set it to 0 or use participant mode")
    q = sampling_rate(task.batch_size, n_train)
    steps = task.train_config().num_steps(n_train)
    z = cfg.noise_multiplier or noise_multiplier_for(cfg, sampling_rate=q, steps_per_round=steps)
    return DPNoise(cfg, z, z * cfg.clip_norm, q, steps)


# ---- mechanisms ----

def private_generator() -> torch.Generator:
    """A CPU generator seeded with 64 bits from the OS's entropy (secrets), never from a chain or task seed:
    noise anyone can regenerate from a public seed can be subtracted, and gives no privacy.

    Caveats, not addressed here: the samples are floating-point Gaussians, and Mironov (2012, "On
    significance of the least significant bits for differential privacy") shows that the pattern of
    representable values a textbook float sampler produces can reveal the unnoised value; the remedies
    (snapping, a discrete Gaussian on the fixed-point grid) are not implemented. torch's CPU stream is
    mt19937, which is not a cryptographic generator: its 64-bit seed is secret, its outputs are not
    guaranteed unpredictable from many earlier ones.
    """
    return torch.Generator(device="cpu").manual_seed(secrets.randbits(64))


def _gaussian(shape: torch.Size, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * std


def clip_and_noise(delta: Mapping[str, torch.Tensor], clip_norm: float, noise_std: float,
                   gen: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
    """Scale the whole update (all floating tensors together) to L2 norm <= clip_norm, then add
    N(0, noise_std^2) to each coordinate from `gen` (no draw when noise_std is 0). Computed in float64,
    returned as float32 under the same names; integer tensors (step counters) pass unchanged. Returns the
    noised update and its pre-clip norm (private: it must not be published)."""
    _check_clip(clip_norm)
    _check_std(noise_std)
    names = list(delta)
    wide = {n: delta[n].detach().to(torch.float64) for n in names if delta[n].is_floating_point()}
    for n, t in wide.items():
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteUpdate(f"update tensor {n!r} contains NaN or Inf")
    norm = math.sqrt(sum(float(t.square().sum()) for t in wide.values()))
    scale = min(1.0, clip_norm / norm) if norm > 0.0 else 1.0
    out: dict[str, torch.Tensor] = {}
    for n in names:
        if n not in wide:
            out[n] = delta[n]
            continue
        t = wide[n] * scale if scale < 1.0 else wide[n]
        if noise_std > 0.0:
            t = t + _gaussian(t.shape, noise_std, gen)
        out[n] = t.to(torch.float32)
    return out, norm


def clip_per_example(grads: Mapping[str, torch.Tensor], clip_norm: float) -> tuple[dict[str, torch.Tensor],
                                                                                     torch.Tensor]:
    """The sum over a batch of per-example gradients, each first scaled to L2 norm <= clip_norm.

    `grads` maps a parameter name to its per-example gradients (B, *param_shape). Returns the sum
    {name: (*param_shape)} as float64, and the pre-clip norms (B,). The norms and the weighted sum are
    float32 reductions, as in Opacus: in float64 they made a DP-SGD step of the small CNN 3x slower
    (measured, batch 32, one thread), and a clipped example's norm is S up to float32 rounding (~1e-6).
    """
    _check_clip(clip_norm)
    flat = {n: g.detach().flatten(1) for n, g in grads.items()}  # {name: (B, P)}
    if not flat:
        return {}, torch.zeros(0, dtype=torch.float64)
    sq = sum(torch.linalg.vector_norm(g, dim=1).to(torch.float64).square() for g in flat.values())
    norms = torch.as_tensor(sq, dtype=torch.float64).sqrt()  # (B,)
    if not bool(torch.isfinite(norms).all()):
        raise NonFiniteUpdate("a per-example gradient contains NaN or Inf")
    scale = torch.where(norms > clip_norm, clip_norm / norms.clamp_min(1e-300), torch.ones_like(norms))  # (B,)
    return {n: (scale.to(g.dtype) @ g).to(torch.float64).reshape(grads[n].shape[1:])
            for n, g in flat.items()}, norms


def add_noise(tensors: Mapping[str, torch.Tensor], noise_std: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """N(0, noise_std^2) added to every coordinate, in float64, names in their given order (no draw at 0)."""
    _check_std(noise_std)
    if noise_std == 0.0:
        return {n: t.to(torch.float64) for n, t in tensors.items()}
    return {n: t.to(torch.float64) + _gaussian(t.shape, noise_std, gen) for n, t in tensors.items()}


def noise_norm_bound(noise_std: float, num_coords: int, sigmas: float = 8.0) -> float:
    """A high-probability bound on the L2 norm of N(0, noise_std^2 I_d) noise: std * (sqrt(d) + sigmas).
    (The norm concentrates at std * sqrt(d) with spread about std / sqrt(2).) A genesis with participant-mode
    DP needs task.max_update_norm above clip_norm plus this, or validators refuse every noised update."""
    _check_std(noise_std)
    return noise_std * (math.sqrt(num_coords) + sigmas)
