"""Canonical bytes, fixed-point quantization and strict decoding of models and updates."""

import struct

import pytest
import torch

from swarmnode.aggregation.codec import (
    GlobalModel,
    QTensor,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    model_hash,
    quantize,
    quantize_delta,
)
from swarmnode.aggregation.errors import MalformedBlob, NonFiniteValue


def _delta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"b.bias": torch.randn(7, generator=g) * 1e-3, "a.weight": torch.randn(3, 5, generator=g) * 0.02}


def test_quantization_error_is_within_half_a_step():
    x = torch.randn(1000, dtype=torch.float32) * 0.05
    q = quantize(x)
    step = 2.0 ** -q.exponent
    err = (q.to_float().double() - x.double()).abs().max().item()
    assert err <= step / 2 + 1e-12, f"error {err} exceeds half step {step / 2}"
    assert int(q.values.abs().max()) < 2**23


def test_update_roundtrip_is_exact_and_canonical():
    upd = quantize_delta(_delta())
    blob = encode_update(upd)
    back = decode_update(blob)
    assert sorted(back) == sorted(upd)
    for name, q in upd.items():
        assert torch.equal(back[name].values, q.values.to(torch.int64))
        assert back[name].exponent == q.exponent
    reordered = dict(reversed(list(upd.items())))
    assert encode_update(reordered) == blob, "dict order must not change the canonical bytes"


def test_model_hash_depends_on_content_only():
    params = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}
    h1 = model_hash(params)
    h2 = model_hash(dict(reversed(list(params.items()))))
    assert h1 == h2 and len(h1) == 32
    params2 = dict(params, b=torch.tensor([1.0, 1.0000001]))
    assert model_hash(params2) != h1


def test_model_with_server_state_roundtrips():
    m = GlobalModel({"w": torch.randn(4)}, {"w": QTensor(torch.tensor([1, -2, 3, 2**40]), 32)})
    back = decode_model(encode_model(m))
    assert torch.equal(back.params["w"], m.params["w"])
    assert torch.equal(back.server_state["w"].values, m.server_state["w"].values)
    assert back.server_state["w"].exponent == 32


def test_non_finite_delta_is_rejected_by_name():
    d = _delta()
    d["a.weight"][1, 2] = float("nan")
    with pytest.raises(NonFiniteValue, match="a.weight"):
        quantize_delta(d)


def test_model_blob_with_nan_is_rejected():
    blob = encode_model(GlobalModel({"w": torch.tensor([1.0, float("inf")])}))
    with pytest.raises(NonFiniteValue, match="'w'"):
        decode_model(blob)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-3], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + bytes([9]) + b[5:], "version"),
        (lambda b: b[:5] + bytes([1]) + b[6:], "kind"),
        (lambda b: b[:6] + struct.pack("<I", 10**6) + b[10:], "limit"),
        (lambda b: b"", "truncated"),
    ],
)
def test_malformed_update_blobs_are_typed_errors(mutate, message):
    blob = encode_update(quantize_delta(_delta()))
    with pytest.raises(MalformedBlob, match=message):
        decode_update(mutate(blob))


def test_unsorted_names_are_not_canonical():
    upd = quantize_delta(_delta())
    blob = encode_update(upd)
    # Swap the two tensor records so names are descending: decoding must refuse.
    header, rest = blob[:10], blob[10:]
    first_len = 2 + 8 + 2 + 8 + 2 + 15 * 4  # "a.weight": name, dtype+ndim, 2 dims, exponent, data
    first, second = rest[:first_len], rest[first_len:]
    assert first[2:10] == b"a.weight"
    with pytest.raises(MalformedBlob, match="ascending"):
        decode_update(header + second + first)


def test_oversized_blob_is_refused_before_parsing():
    blob = encode_update(quantize_delta(_delta()))
    with pytest.raises(MalformedBlob, match="exceeds"):
        decode_update(blob, max_bytes=len(blob) - 1)


def test_non_bytes_input_is_a_typed_error():
    with pytest.raises(MalformedBlob, match="expected bytes"):
        decode_update("not bytes")  # type: ignore[arg-type]
