"""Exact integer kernels on int64 tensors: alignment of fixed-point scales, overflow-free reductions."""

from __future__ import annotations

import torch

# Aligned values saturate here: a magnitude this far beyond the common scale is an outlier anyway,
# and the bound keeps weighted sums of up to 256 updates with < 2**24 samples each inside int64.
SATURATION = 1 << 30
_MIN_BLOCK = 4096  # exact_row_sums_of_squares: below this many columns per block, the bit-31 split is cheaper



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
    if denom & (denom - 1) == 0:  # a power of two (clipping factors, scales): the arithmetic shift is the
        return (numer + denom // 2) >> (denom.bit_length() - 1)  # same floor, several times cheaper
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

    The squares are summed in int64 over column blocks short enough that no block sum can reach 2**63
    (one block when the whole row cannot), the block sums then added as Python ints: one pass over the
    squares. Only when the values are so large that blocks would be tiny are the squares split at bit 31
    (as exact_sum_of_squares does). Every way is an exact integer sum, so the result is the same.
    """
    v = values.to(torch.int64).reshape(values.shape[0], -1)
    if not v.numel():
        return [0] * int(values.shape[0])
    low, high = torch.aminmax(v)
    peak = max(int(high), -int(low))
    if peak > (1 << 31):
        raise ValueError("exact_row_sums_of_squares takes magnitudes up to 2**31")
    sq = v * v
    cols = v.shape[1]
    block = ((1 << 63) - 1) // max(1, peak * peak)  # columns whose squares sum below 2**63
    if block >= cols:
        return [int(x) for x in sq.sum(dim=1).tolist()]
    if block >= _MIN_BLOCK:
        totals = [0] * int(v.shape[0])
        for start in range(0, cols, block):
            part = sq[:, start:start + block].sum(dim=1).tolist()
            totals = [t + int(p) for t, p in zip(totals, part, strict=True)]
        return totals
    hi = (sq >> 31).sum(dim=1).tolist()
    lo = (sq & ((1 << 31) - 1)).sum(dim=1).tolist()
    return [(int(h) << 31) + int(lo_) for h, lo_ in zip(hi, lo, strict=True)]
