"""Compressed updates (swarmnode/aggregation/compress.py): exact decoding, canonical bytes, unbiased rounding,
top-k with error feedback, the genesis's form enforced, and a strict decoder against crafted bytes."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from swarmnode.aggregation.codec import KIND_UPDATE, decode_update, encode_update, quantize_delta
from swarmnode.aggregation.compress import (
    KIND_COMPRESSED,
    Compression,
    CompressionError,
    WrongForm,
    compress_delta,
    compression_seed,
    decode_compressed,
    decode_for,
)
from swarmnode.aggregation.errors import MalformedBlob, NonFiniteValue
from swarmnode.learning.errors import LearningError
from swarmnode.learning.tasks import Task

SPECS = [Compression("quantize", 8), Compression("quantize", 4), Compression("quantize", 2),
         Compression("quantize", 5), Compression("topk", 8, 0.1), Compression("topk", 3, 0.01),
         Compression("topk", 8, 1.0)]


def _delta(seed: int = 0, scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"conv.weight": torch.randn(8, 1, 3, 3, generator=g) * scale, "conv.bias": torch.randn(8, generator=g) * scale,
            "fc.weight": torch.randn(10, 300, generator=g) * scale, "fc.bias": torch.zeros(10),
            "scalar": torch.tensor(0.25), "empty": torch.zeros(0, 3)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n].values.to(torch.int64), b[n].values.to(torch.int64))
                                        and a[n].exponent == b[n].exponent for n in a)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.method}-{s.bits}-{s.fraction}")
def test_a_compressed_update_decodes_to_exactly_what_its_sender_aggregates(spec: Compression) -> None:
    c = compress_delta(_delta(), spec, 5)
    assert c.blob[5] == KIND_COMPRESSED
    assert _same(decode_compressed(c.blob), c.update)
    assert _same(decode_for(c.blob, spec), c.update)
    limit = (1 << (spec.bits - 1)) - 1
    for name, q in c.update.items():
        assert q.values.dtype == torch.int64 and q.values.shape == _delta()[name].shape
        assert not q.values.numel() or int(q.values.abs().max()) < 1 << 23  # inside every rule's fixed-point range
    # the scaled integers are q * mantissa with |q| <= 2**(bits-1) - 1: the step is at least amax / limit
    fc = c.update["fc.weight"]
    nonzero = fc.values[fc.values != 0].abs()
    assert int(nonzero.max()) // int(nonzero.min()) <= limit


def test_quantization_is_deterministic_in_its_seed_and_unbiased() -> None:
    spec, delta = Compression("quantize", 2), {"w": torch.full((20000,), 0.3), "v": torch.linspace(-1, 1, 20000)}
    a, b, other = (compress_delta(delta, spec, s) for s in (7, 7, 8))
    assert a.blob == b.blob and a.blob != other.blob
    # 2 bits: values in {-1, 0, 1} steps of ~1.0; 0.3 must round up 30% of the time, so the mean stays 0.3
    w = a.update["w"].to_float()
    assert set(torch.unique(a.update["w"].values).tolist()) <= {0, int(a.update["w"].values.max())}
    assert abs(float(w.mean()) - 0.3) < 0.02
    err = a.update["v"].to_float() - delta["v"]
    assert abs(float(err.mean())) < 0.01 and float(err.abs().max()) <= 1.0 + 1e-6


def test_the_extremes_reach_the_limit_and_no_further() -> None:
    for bits in (2, 8):
        limit = (1 << (bits - 1)) - 1
        x = torch.tensor([-1.0, 1.0, 0.999999, -0.5, 0.0])
        for seed in range(20):
            q = compress_delta({"x": x}, Compression("quantize", bits), seed).update["x"]
            m = int(q.values.abs().max())
            step = m // limit if bits == 8 else m
            assert int(q.values[0]) == -limit * step and int(q.values[1]) == limit * step
            assert int(q.values[4]) == 0


def test_the_compression_seed_is_public_and_per_client_and_round() -> None:
    assert compression_seed(0, 3, 1) == compression_seed(0, 3, 1)
    assert len({compression_seed(0, r, c) for r in range(5) for c in range(5)}) == 25


def test_topk_sends_the_largest_values_and_error_feedback_keeps_the_rest() -> None:
    spec = Compression("topk", 8, 0.05)
    d = _delta(1)
    c = compress_delta(d, spec, 3)
    fc = c.update["fc.weight"].values.reshape(-1)
    k = math.ceil(0.05 * fc.numel())
    assert 0 < int((fc != 0).sum()) <= k
    top = set(torch.argsort(d["fc.weight"].reshape(-1).abs(), descending=True, stable=True)[:k].tolist())
    assert set(torch.nonzero(fc).reshape(-1).tolist()) <= top
    # sent + residual = delta, every round: nothing is lost, only delayed
    residual, sent = None, {n: torch.zeros_like(t) for n, t in d.items()}
    total = {n: torch.zeros_like(t) for n, t in d.items()}
    for r in range(12):
        step = _delta(100 + r)
        out = compress_delta(step, spec, r, residual)
        residual = out.residual
        assert residual is not None
        for n in d:
            total[n] += step[n]
            sent[n] += out.update[n].to_float().reshape(step[n].shape)
    for n in d:
        assert torch.allclose(sent[n] + residual[n], total[n], atol=1e-5)
    assert compress_delta(d, spec, 3).residual is not None
    assert compress_delta(d, Compression("quantize", 8), 3).residual is None


def test_topk_cuts_bytes_and_quantize_8_is_4x_but_for_headers() -> None:
    d = {"w": torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 0.01}
    plain = len(encode_update(quantize_delta(d)))
    q8 = len(compress_delta(d, Compression("quantize", 8), 0).blob)
    q4 = len(compress_delta(d, Compression("quantize", 4), 0).blob)
    top = len(compress_delta(d, Compression("topk", 8, 0.01), 0).blob)
    assert plain / q8 > 3.99 and plain / q4 > 7.9 and plain / top > 25


def test_zero_tiny_and_huge_tensors() -> None:
    spec = Compression("quantize", 8)
    c = compress_delta({"z": torch.zeros(5), "tiny": torch.full((3,), 1e-30)}, spec, 0)
    assert _same(decode_for(c.blob, spec), c.update)
    assert int(c.update["z"].values.abs().sum()) == 0 and int(c.update["tiny"].values.abs().sum()) == 0
    with pytest.raises(NonFiniteValue):
        compress_delta({"x": torch.tensor([float("nan")])}, spec, 0)
    with pytest.raises(NonFiniteValue):
        compress_delta({"x": torch.tensor([1e38])}, spec, 0)
    top = compress_delta({"z": torch.zeros(4)}, Compression("topk", 8, 0.5), 0)
    assert _same(decode_for(top.blob, Compression("topk", 8, 0.5)), top.update)


def test_the_genesis_form_is_enforced_both_ways() -> None:
    d = _delta()
    plain = encode_update(quantize_delta(d))
    q8 = compress_delta(d, Compression("quantize", 8), 0).blob
    top = compress_delta(d, Compression("topk", 8, 0.1), 0).blob
    assert plain[5] == KIND_UPDATE
    with pytest.raises(WrongForm, match="compressed update"):
        decode_for(q8, Compression())
    with pytest.raises(WrongForm, match="blob kind 2"):
        decode_for(plain, Compression("quantize", 8))
    with pytest.raises(WrongForm, match="dense with 8-bit"):
        decode_for(q8, Compression("quantize", 4))
    with pytest.raises(WrongForm, match="sparse"):
        decode_for(top, Compression("quantize", 8))
    with pytest.raises(WrongForm, match="dense"):
        decode_for(q8, Compression("topk", 8, 0.1))
    assert _same(decode_for(plain, Compression()), decode_update(plain))


@pytest.mark.parametrize(("table", "ok"), [
    ({"method": "quantize", "bits": 2}, True), ({"method": "quantize", "bits": 8}, True),
    ({"method": "quantize", "bits": 1}, False), ({"method": "quantize", "bits": 9}, False),
    ({"method": "quantize", "bits": True}, False), ({"method": "topk", "fraction": 1.0}, True),
    ({"method": "topk", "fraction": 1e-9}, True), ({"method": "topk", "fraction": 0}, False),
    ({"method": "topk", "fraction": 1.0000001}, False), ({"method": "gzip"}, False), ({"method": "topk", "k": 3}, False),
    ({}, True),
])
def test_the_compression_table_is_validated_at_its_bounds(table: dict, ok: bool) -> None:
    if ok:
        assert Compression.from_dict(table).method == table.get("method", "none")
        assert Task(compression=table).compression_spec() == Compression.from_dict(table)
    else:
        with pytest.raises(CompressionError):
            Compression.from_dict(table)
        with pytest.raises(LearningError, match="task.compression"):
            Task(compression=table)


def test_a_task_without_compression_keeps_its_old_table() -> None:
    assert "compression" not in Task().to_dict()
    assert Task(compression={"method": "topk", "fraction": 0.1}).to_dict()["compression"]["fraction"] == 0.1


# ---- crafted bytes ----

def _one(name: bytes, dims: tuple[int, ...], exponent: int, mantissa: int, bits: int, layout: int,
         body: bytes, count: int = 1) -> bytes:
    head = struct.pack("<4sBBI", b"SWNM", 1, KIND_COMPRESSED, count)
    return (head + struct.pack("<H", len(name)) + name + struct.pack("<B", len(dims))
            + struct.pack(f"<{len(dims)}I", *dims) + struct.pack("<hHBB", exponent, mantissa, bits, layout) + body)


def test_a_crafted_valid_blob_decodes() -> None:
    # 8 bits dense: q = raw - 128; values 1, -127 at mantissa 2**15, exponent 20
    upd = decode_compressed(_one(b"w", (2,), 20, 1 << 15, 8, 0, bytes([129, 1])))
    assert upd["w"].values.tolist() == [1 << 15, -127 << 15] and upd["w"].exponent == 20


@pytest.mark.parametrize(("blob", "match"), [
    (_one(b"w", (2,), 20, 1 << 15, 8, 0, bytes([129, 0])), "excluded value"),
    (_one(b"w", (2,), 20, (1 << 15) - 1, 8, 0, bytes([129, 1])), "non-canonical scale"),
    (_one(b"w", (2,), 20, 0, 8, 0, bytes([128, 128])), "zero scale must have exponent 0"),
    (_one(b"w", (2,), 0, 0, 8, 0, bytes([129, 128])), "zero scale but nonzero"),
    (_one(b"w", (2,), 81, 1 << 15, 8, 0, bytes([129, 1])), "non-canonical scale"),
    (_one(b"w", (2,), 20, 1 << 15, 9, 0, bytes([129, 1])), "bits 9"),
    (_one(b"w", (2,), 20, 1 << 15, 1, 0, bytes([1])), "bits 1"),
    (_one(b"w", (2,), 20, 1 << 15, 8, 2, bytes([129, 1])), "layout 2"),
    (_one(b"w", (3,), 20, 1 << 15, 4, 0, bytes([0x99, 0xF9])), "padding"),  # 12 bits used, high nibble set
    (_one(b"w", (4,), 20, 1 << 15, 8, 1, bytes([0x13, 129, 130])), "padding"),  # bit 4 of a 4-bit bitmap
    (_one(b"w", (4,), 20, 1 << 15, 8, 1, bytes([0x03, 129, 128])), "zero value"),
    (_one(b"w", (4,), 20, 1 << 15, 8, 1, bytes([0x03, 129])), "truncated"),
    (_one(b"w", (2,), 20, 1 << 15, 8, 0, bytes([129, 1, 5])), "trailing"),
    (_one(b"w", (2**32 - 1,) * 4, 20, 1 << 15, 8, 0, b""), "more than"),
    (_one(b"w", (2**32 - 1, 0), 20, 1 << 15, 8, 0, b""), "more than"),
    (_one(b"w", (1,) * 9, 20, 1 << 15, 8, 0, b""), "dimensions"),
    (_one(b"", (1,), 20, 1 << 15, 8, 0, bytes([129])), "name length"),
    (_one(b"\xff", (1,), 20, 1 << 15, 8, 0, bytes([129])), "UTF-8"),
    (_one(b"w", (1,), 20, 1 << 15, 8, 0, bytes([129]), count=2), "truncated"),
    (_one(b"w", (1,), 20, 1 << 15, 8, 0, bytes([129]), count=10**6), "exceeds the limit"),
    (struct.pack("<4sBBI", b"SWNM", 2, KIND_COMPRESSED, 0), "version"),
    (struct.pack("<4sBBI", b"XXXX", 1, KIND_COMPRESSED, 0), "magic"),
    (b"SWN", "truncated"),
])
def test_crafted_bytes_are_refused_with_a_typed_error(blob: bytes, match: str) -> None:
    with pytest.raises(MalformedBlob, match=match):
        decode_compressed(blob)


def test_names_must_ascend_and_every_prefix_of_a_real_blob_is_refused() -> None:
    a = _one(b"b", (1,), 20, 1 << 15, 8, 0, bytes([129]), count=2)[10:]
    b = _one(b"a", (1,), 20, 1 << 15, 8, 0, bytes([129]))[10:]
    with pytest.raises(MalformedBlob, match="ascending"):
        decode_compressed(struct.pack("<4sBBI", b"SWNM", 1, KIND_COMPRESSED, 2) + a + b)
    blob = compress_delta(_delta(), Compression("topk", 5, 0.2), 1).blob
    for cut in range(len(blob)):
        with pytest.raises(MalformedBlob):
            decode_compressed(blob[:cut])
    with pytest.raises(MalformedBlob, match="exceeds the limit"):
        decode_compressed(blob, max_bytes=len(blob) - 1)


def test_genesis_new_compression_flags(tmp_path, capsys) -> None:
    from consensus.genesis import load_genesis
    from swarmnode.cli.main import main

    base = ["genesis", "new", "--validators", "2", "--task", "tiny", "--dev-keys", "--keys-dir", str(tmp_path / "k"),
            "--force", "--out", str(tmp_path / "g.toml")]
    assert main([*base, "--compression", "topk", "--compression-fraction", "0.02", "--compression-bits", "6"]) == 0
    assert load_genesis(tmp_path / "g.toml").task["compression"] == {"method": "topk", "bits": 6, "fraction": 0.02}
    assert main(["genesis", "show", str(tmp_path / "g.toml")]) == 0
    assert "top-k 0.02 of each tensor, 6-bit values" in capsys.readouterr().out
    assert main([*base, "--compression", "quantize"]) == 0
    assert load_genesis(tmp_path / "g.toml").task["compression"] == {"method": "quantize", "bits": 8}
    assert main([*base]) == 0
    assert "compression" not in load_genesis(tmp_path / "g.toml").task
    for bad, named in ((["--compression-bits", "1"], "--compression-bits"),
                       (["--compression-fraction", "0"], "--compression-fraction"),
                       (["--secure-aggregation", "--min-participants", "2"], "--secure-aggregation")):
        capsys.readouterr()
        assert main([*base, "--compression", "topk", *bad]) == 2
        assert named in capsys.readouterr().err
