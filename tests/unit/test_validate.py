"""Incoming updates are checked against the model; every rejection names what was wrong."""

from fractions import Fraction

import pytest
import torch

from swarmnode.aggregation.codec import QTensor, decode_update, encode_update, quantize_delta
from swarmnode.aggregation.errors import NormTooLarge, UpdateRejected, WrongDtype, WrongShape, WrongTensorName
from swarmnode.aggregation.validate import squared_norm, validate_update

PARAMS = {"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}


def _update(**overrides):
    delta = {"fc.weight": torch.full((3, 4), 0.01), "fc.bias": torch.full((3,), -0.02)}
    delta.update(overrides)
    return decode_update(encode_update(quantize_delta(delta)))


def test_a_good_update_passes():
    validate_update(_update(), PARAMS)


def test_wrong_name_is_rejected():
    upd = _update()
    upd["fc.bais"] = upd.pop("fc.bias")
    with pytest.raises(WrongTensorName, match="fc.bais"):
        validate_update(upd, PARAMS)


def test_wrong_shape_is_rejected():
    with pytest.raises(WrongShape, match=r"fc.weight.*\(4, 3\)"):
        validate_update(_update(**{"fc.weight": torch.zeros(4, 3)}), PARAMS)


def test_wrong_dtype_is_rejected():
    upd = _update()
    upd["fc.bias"] = QTensor(upd["fc.bias"].values.float(), 0)
    with pytest.raises(WrongDtype, match="fc.bias"):
        validate_update(upd, PARAMS)


def test_absurd_norm_is_rejected_exactly():
    upd = _update(**{"fc.weight": torch.full((3, 4), 500.0)})
    with pytest.raises(NormTooLarge, match="exceeds the limit 1000"):
        validate_update(upd, PARAMS, max_norm=Fraction(1000))
    sq = squared_norm(upd)
    assert abs(float(sq) - (12 * 500.0**2 + 3 * 0.02**2)) < 1e-3


def test_every_rejection_has_a_reason_tag():
    for cls in (WrongTensorName, WrongShape, WrongDtype, NormTooLarge):
        assert issubclass(cls, UpdateRejected) and cls.reason != UpdateRejected.reason
