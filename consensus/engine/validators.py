"""Stake-weighted validator sets: quorum arithmetic and CometBFT's proposer-priority rotation.

All arithmetic is on integers so that every node derives the same proposer for (height, round).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NewType

from consensus.errors import ConsensusError

Address = NewType("Address", bytes)  # 20 bytes, same as consensus.votes.Address

# CometBFT: PriorityWindowSizeFactor; priorities are rescaled when max - min exceeds this times total power.
PRIORITY_WINDOW_FACTOR = 2


class InvalidValidatorSet(ConsensusError):
    """A validator set is empty, has duplicate addresses, or a non-positive power."""


@dataclass(frozen=True)
class Validator:
    address: bytes
    power: int


@dataclass(frozen=True)
class ValidatorSet:
    """Validators sorted by address; `epoch_start` is the first height at which this set is in force."""

    validators: tuple[Validator, ...]
    epoch_start: int = 1

    def __post_init__(self) -> None:
        if not self.validators:
            raise InvalidValidatorSet("validator set is empty")
        addresses = [v.address for v in self.validators]
        if len(set(addresses)) != len(addresses):
            raise InvalidValidatorSet("validator set has duplicate addresses")
        for v in self.validators:
            if len(v.address) != 20:
                raise InvalidValidatorSet(f"validator address must be 20 bytes, got {len(v.address)}")
            if v.power <= 0:
                raise InvalidValidatorSet(f"validator 0x{v.address.hex()} has non-positive power {v.power}")
        if addresses != sorted(addresses):
            object.__setattr__(self, "validators", tuple(sorted(self.validators, key=lambda v: v.address)))

    @classmethod
    def from_powers(cls, powers: dict[bytes, int], epoch_start: int = 1) -> ValidatorSet:
        return cls(tuple(Validator(a, p) for a, p in sorted(powers.items())), epoch_start)

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    def power_of(self, address: bytes) -> int:
        """Voting power of `address`; 0 for a non-validator."""
        for v in self.validators:
            if v.address == address:
                return v.power
        return 0

    def has_quorum(self, power: int) -> bool:
        """More than 2/3 of total power (the paper's 2f + 1)."""
        return 3 * power > 2 * self.total_power

    def has_one_third(self, power: int) -> bool:
        """More than 1/3 of total power (the paper's f + 1): at least one honest validator."""
        return 3 * power > self.total_power

    def same_members(self, other: ValidatorSet) -> bool:
        return self.validators == other.validators


# ---- proposer priorities (CometBFT types/validator_set.go) ----

Priorities = tuple[int, ...]  # one per validator, in validator-set order


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _rescale(vset: ValidatorSet, prios: Priorities) -> Priorities:
    diff_max = PRIORITY_WINDOW_FACTOR * vset.total_power
    diff = max(prios) - min(prios)
    if diff <= diff_max:
        return prios
    ratio = -(-diff // diff_max)  # ceil
    return tuple(_trunc_div(p, ratio) for p in prios)


def _center(prios: Priorities) -> Priorities:
    avg = sum(prios) // len(prios)  # big.Int.Div: Euclidean == floor for a positive divisor
    return tuple(p - avg for p in prios)


def _step(vset: ValidatorSet, prios: Priorities) -> tuple[Priorities, int]:
    bumped = [p + v.power for p, v in zip(prios, vset.validators, strict=True)]
    # max priority; ties go to the smaller address (validators are sorted, so the first index wins)
    best = max(range(len(bumped)), key=lambda i: (bumped[i], -i))
    bumped[best] -= vset.total_power
    return tuple(bumped), best


def increment_priorities(vset: ValidatorSet, prios: Priorities, times: int) -> tuple[Priorities, int]:
    """CometBFT IncrementProposerPriority: rescale, center, then `times` steps; returns the last pick."""
    if times <= 0:
        raise ValueError(f"times must be positive, got {times}")
    prios = _center(_rescale(vset, prios))
    best = -1
    for _ in range(times):
        prios, best = _step(vset, prios)
    return prios, best


@dataclass(frozen=True)
class ProposerRotation:
    """Priorities in force at round 0 of `height`, and the round-0 proposer's index."""

    vset: ValidatorSet
    height: int
    priorities: Priorities
    proposer_index: int

    @classmethod
    def at_height(cls, vset: ValidatorSet, height: int) -> ProposerRotation:
        """Walk from the epoch start (all priorities zero) one increment per height, as CometBFT does."""
        if height < vset.epoch_start:
            raise InvalidValidatorSet(f"height {height} precedes the set's epoch start {vset.epoch_start}")
        prios: Priorities = tuple(0 for _ in vset.validators)
        best = -1
        for _ in range(height - vset.epoch_start + 1):
            prios, best = increment_priorities(vset, prios, 1)
        return cls(vset, height, prios, best)

    def next_height(self, vset: ValidatorSet) -> ProposerRotation:
        """Rotation for height + 1: one more increment, or a fresh walk when the set changed."""
        if not vset.same_members(self.vset) or vset.epoch_start != self.vset.epoch_start:
            return ProposerRotation.at_height(vset, self.height + 1)
        prios, best = increment_priorities(self.vset, self.priorities, 1)
        return ProposerRotation(self.vset, self.height + 1, prios, best)

    def proposer(self, round_: int) -> bytes:
        """Proposer of (height, round): CometBFT copies the set and increments it `round` more times."""
        if round_ == 0:
            return self.vset.validators[self.proposer_index].address
        return _proposer_after(self, round_)


@functools.lru_cache(maxsize=1024)
def _proposer_after(rotation: ProposerRotation, round_: int) -> bytes:
    _, best = increment_priorities(rotation.vset, rotation.priorities, round_)
    return rotation.vset.validators[best].address
