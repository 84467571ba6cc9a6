"""Exact integer kernels on int64 tensors: alignment of fixed-point scales, overflow-free reductions."""

from __future__ import annotations

import torch

# Aligned values saturate here: a magnitude this far beyond the common scale is an outlier anyway,
# and the bound keeps weighted sums of up to 256 updates with < 2**24 samples each inside int64.
SATURATION = 1 << 30



def rescale(values: torch.Tensor, from_exp: int, to_exp: int) -> torch.Tensor:
    """Re-express fixed-point `values` (scale 2**-from_exp) at scale 2**-to_exp, exactly or rounded half up."""
    v = values.to(torch.int64)
    shift = to_exp - from_exp
    if shift == 0:
        return saturate(v)
    if shift > 0:
        if shift >= 31:
            return torch.sign(v) * SATURATION
        limit = SATURATION >> shift
        return torch.clamp(v, -limit, limit) << shift
    d = min(-shift, 62)
    return saturate((v + (1 << (d - 1))) >> d)


def saturate(values: torch.Tensor) -> torch.Tensor:
    return torch.clamp(values, -SATURATION, SATURATION)


def round_div(numer: torch.Tensor, denom: int) -> torch.Tensor:
    """Integer division rounded half up: floor((n + d/2) / d), identical on every machine."""
    if denom <= 0:
        raise ValueError(f"denominator must be positive, got {denom}")
    return torch.div(numer + denom // 2, denom, rounding_mode="floor")


def exact_sum_of_squares(values: torch.Tensor) -> int:
    """sum(v**2) as an exact Python int for |v| <= 2**31 (int32 wire values, differences of aligned values).

    Each square fits int64 (<= 2**62); splitting it at bit 31 keeps both partial sums inside int64 for
    tensors of up to 2**31 elements.
    """
    v = values.to(torch.int64).reshape(-1)
    if v.numel() and int(v.abs().max()) > (1 << 31):
        raise ValueError("exact_sum_of_squares takes magnitudes up to 2**31")
    sq = v * v
    hi = int((sq >> 31).sum())
    lo = int((sq & ((1 << 31) - 1)).sum())
    return (hi << 31) + lo


def exact_row_sums_of_squares(values: torch.Tensor) -> list[int]:
    """sum(v**2) over every row (all dimensions but the first), each an exact Python int; |v| <= 2**31.

    When no row sum can reach 2**63 the squares are summed directly; otherwise with the same split at
    bit 31 as exact_sum_of_squares. Both are exact integer sums, so the result is the same either way.
    """
    v = values.to(torch.int64).reshape(values.shape[0], -1)
    if not v.numel():
        return [0] * int(values.shape[0])
    peak = int(v.abs().max())
    if peak > (1 << 31):
        raise ValueError("exact_row_sums_of_squares takes magnitudes up to 2**31")
    sq = v * v
    if peak * peak * v.shape[1] < (1 << 63):
        return [int(x) for x in sq.sum(dim=1).tolist()]
    hi = (sq >> 31).sum(dim=1).tolist()
    lo = (sq & ((1 << 31) - 1)).sum(dim=1).tolist()
    return [(int(h) << 31) + int(lo_) for h, lo_ in zip(hi, lo, strict=True)]
