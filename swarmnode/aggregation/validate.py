"""Checks an incoming update against the global model before it may be aggregated."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

import torch

from swarmnode.aggregation.codec import QTensor
from swarmnode.aggregation.errors import NormTooLarge, WrongDtype, WrongShape, WrongTensorName
from swarmnode.aggregation.exact import exact_sum_of_squares

DEFAULT_MAX_NORM = Fraction(1000)


def check_structure(update: Mapping[str, QTensor], params: Mapping[str, torch.Tensor]) -> None:
    """Names, shapes and dtypes must match the model exactly."""
    missing = sorted(set(params) - set(update))
    extra = sorted(set(update) - set(params))
    if missing or extra:
        raise WrongTensorName(f"update tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, q in update.items():
        if q.values.dtype not in (torch.int32, torch.int64):
            raise WrongDtype(f"update tensor {name!r} has dtype {q.values.dtype}, expected an integer dtype")
        if tuple(q.values.shape) != tuple(params[name].shape):
            raise WrongShape(
                f"update tensor {name!r} has shape {tuple(q.values.shape)}, model has {tuple(params[name].shape)}"
            )


def squared_norm(update: Mapping[str, QTensor]) -> Fraction:
    """The exact squared L2 norm of the update's real values."""
    return sum(
        (Fraction(exact_sum_of_squares(q.values), 4**q.exponent) if q.exponent >= 0
         else Fraction(exact_sum_of_squares(q.values) * 4 ** (-q.exponent)))
        for q in update.values()
    ) or Fraction(0)


def check_norm(update: Mapping[str, QTensor], max_norm: Fraction) -> None:
    """Reject updates whose L2 norm exceeds `max_norm` (exact arithmetic, so every node agrees)."""
    sq = squared_norm(update)
    if sq > max_norm * max_norm:
        raise NormTooLarge(f"update L2 norm {float(sq) ** 0.5:.4g} exceeds the limit {float(max_norm):.4g}")


def validate_update(
    update: Mapping[str, QTensor], params: Mapping[str, torch.Tensor], max_norm: Fraction = DEFAULT_MAX_NORM
) -> None:
    """Raise an UpdateRejected subclass naming the problem, or return None when the update is acceptable."""
    check_structure(update, params)
    check_norm(update, max_norm)
