"""The genesis [privacy] table: differential privacy and secure aggregation, as every node must read them.

    [privacy]
    dp = "off"                 # "off" | "participant" | "example"
    epsilon = 3.0              # the budget of every participant (the contract refuses a commit beyond it)
    delta = 1e-5
    rounds = 60                # the horizon the noise is calibrated for: `rounds` commits spend `epsilon`
    noise_multiplier = 0.0     # z, pinned by `genesis new` from (epsilon, delta, rounds); 0: derive it
    clip_norm = 1.0            # participant mode: the L2 bound S of each update; example mode: of each gradient
    secure_aggregation = false # pairwise masks over Z_2^32 (swarmnode/privacy/secagg.py)
    secagg_threshold = 0       # Shamir threshold t; 0: a majority of the round's key set
    secagg_bound = 0.0         # every coordinate of an update is clamped to [-B, B] before masking; 0: 4 * clip_norm

dp = "participant" is DP-FedAvg (McMahan et al. 2018): each participant clips its whole update to S and adds
Gaussian noise N(0, (z * S)^2) per coordinate, from its own private randomness; with secure aggregation on,
the noise is split over the round's minimum number of participants (distributed DP: the sum carries
N(0, (z * S)^2), and only the sum is ever revealed). dp = "example" is DP-SGD inside each participant
(Abadi et al. 2016): every example's gradient is clipped to S and noise N(0, (z * S)^2) is added to each
batch sum; batches are Poisson-sampled with the participant's private randomness.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

DP_MODES = ("off", "participant", "example")
MICRO = 1_000_000  # epsilon on chain: micro-units (uint256)
MAX_EPSILON = 1_000.0
MAX_ROUNDS = 1_000_000


class PrivacyConfigError(ValueError):
    """The [privacy] table is malformed; the message names the key (`privacy.epsilon: ...`)."""


def _number(table: dict[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PrivacyConfigError(f"privacy.{key}: expected a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PrivacyConfig:
    dp: str = "off"
    epsilon: float = 0.0
    delta: float = 1e-5
    rounds: int = 60
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    secure_aggregation: bool = False
    secagg_threshold: int = 0
    secagg_bound: float = 0.0

    @classmethod
    def from_dict(cls, table: dict[str, Any] | None) -> PrivacyConfig:
        table = dict(table or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise PrivacyConfigError(f"privacy: unknown keys {unknown}; known: {sorted(known)}")
        dp = table.get("dp", "off")
        if dp not in DP_MODES:
            raise PrivacyConfigError(f"privacy.dp: {dp!r} unknown; known: {', '.join(DP_MODES)}")
        rounds = table.get("rounds", 60)
        if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
            raise PrivacyConfigError(f"privacy.rounds: expected an integer in [1, {MAX_ROUNDS}], got {rounds!r}")
        t = table.get("secagg_threshold", 0)
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= 128:
            raise PrivacyConfigError(f"privacy.secagg_threshold: expected an integer in [0, 128], got {t!r}")
        sa = table.get("secure_aggregation", False)
        if not isinstance(sa, bool):
            raise PrivacyConfigError(f"privacy.secure_aggregation: expected true or false, got {sa!r}")
        cfg = cls(dp=dp, epsilon=_number(table, "epsilon", 0.0), delta=_number(table, "delta", 1e-5),
                  rounds=rounds, noise_multiplier=_number(table, "noise_multiplier", 0.0),
                  clip_norm=_number(table, "clip_norm", 1.0), secure_aggregation=sa, secagg_threshold=t,
                  secagg_bound=_number(table, "secagg_bound", 0.0))
        if cfg.dp != "off":
            if not 0.0 < cfg.epsilon <= MAX_EPSILON:
                raise PrivacyConfigError(f"privacy.epsilon: expected a number in (0, {MAX_EPSILON}] with dp on, "
                                         f"got {cfg.epsilon!r}")
            if not 0.0 < cfg.delta < 1.0:
                raise PrivacyConfigError(f"privacy.delta: expected a number in (0, 1), got {cfg.delta!r}")
        elif cfg.epsilon != 0.0:
            raise PrivacyConfigError("privacy.epsilon: a budget needs dp = \"participant\" or \"example\"")
        if not 0.0 < cfg.clip_norm <= 1e6:
            raise PrivacyConfigError(f"privacy.clip_norm: expected a number in (0, 1e6], got {cfg.clip_norm!r}")
        if not 0.0 <= cfg.noise_multiplier <= 1e4:
            raise PrivacyConfigError(f"privacy.noise_multiplier: expected a number in [0, 1e4], got "
                                     f"{cfg.noise_multiplier!r}")
        if not 0.0 <= cfg.secagg_bound <= 1e6:
            raise PrivacyConfigError(f"privacy.secagg_bound: expected a number in [0, 1e6], got {cfg.secagg_bound!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def dp_on(self) -> bool:
        return self.dp != "off"

    @property
    def epsilon_budget_micro(self) -> int:
        """The budget the contract enforces, in micro-epsilon (0: no DP, every commit reports 0)."""
        return round(self.epsilon * MICRO) if self.dp_on else 0

    @property
    def value_bound(self) -> float:
        """B: secure aggregation clamps every coordinate to [-B, B] before it is masked."""
        return self.secagg_bound or 4.0 * self.clip_norm


def epsilon_to_micro(epsilon: float) -> int:
    """An epsilon as the contract stores it, rounded up (a claim never understates the spend)."""
    return math.ceil(epsilon * MICRO - 1e-9)
