"""The exact integer kernels equal Python-int arithmetic in every regime their fast paths choose."""

from __future__ import annotations

import pytest
import torch

from swarmnode.aggregation.exact import SATURATION, exact_row_sums_of_squares, round_div


def _reference_row_sums(v: torch.Tensor) -> list[int]:
    return [sum(int(x) * int(x) for x in row.reshape(-1).tolist()) for row in v]


@pytest.mark.parametrize("peak_bits,cols", [
    (10, 1000),  # no row sum near 2**63: summed at once
    (24, 40_000),  # peak**2 * cols > 2**63: summed in column blocks
    (31, 5_000),  # so large that blocks would be tiny: split at bit 31
], ids=["direct", "blocks", "bit31"])
def test_row_sums_of_squares_are_exact(peak_bits: int, cols: int) -> None:
    g = torch.Generator().manual_seed(peak_bits)
    v = torch.randint(-(1 << peak_bits), 1 << peak_bits, (4, cols), generator=g)
    v[1, :] = 1 << peak_bits  # the extreme value, everywhere in one row
    v[2, :] = -(1 << peak_bits)
    assert exact_row_sums_of_squares(v) == _reference_row_sums(v)
    assert exact_row_sums_of_squares(v.reshape(4, 2, cols // 2)) == _reference_row_sums(v)


def test_row_sums_of_squares_refuse_values_past_2_31() -> None:
    with pytest.raises(ValueError):
        exact_row_sums_of_squares(torch.tensor([[(1 << 31) + 1]]))


@pytest.mark.parametrize("denom", [1, 2, 3, 7, 1 << 30, (1 << 30) + 1, 1 << 40])
def test_round_div_is_floor_of_half_up_for_every_sign(denom: int) -> None:
    g = torch.Generator().manual_seed(denom % 1000)
    n = torch.cat([torch.randint(-(1 << 61), 1 << 61, (2000,), generator=g),
                   torch.tensor([0, 1, -1, denom // 2, -(denom // 2), denom // 2 - 1, -(denom // 2) - 1,
                                 denom, -denom, SATURATION, -SATURATION])])
    expected = [(int(x) + denom // 2) // denom for x in n.tolist()]  # Python's // is the floor
    assert round_div(n, denom).tolist() == expected
