"""Compressed updates that keep aggregation exact: b-bit stochastic quantization and top-k sparsification.

The genesis chooses the method (`[task.compression]`, `Compression`). A compressed update is a canonical
blob of its own kind (3); it decodes to the same fixed-point `Update` as a plain one (kind 2), so every
aggregation rule runs unchanged on exact integers:

    magic "SWNM" | version u8 | kind u8 = 3 | count u32
    per tensor, names strictly ascending:
        name_len u16 | name | ndim u8 | dims u32 x ndim | exponent i16 | mantissa u16 | bits u8 | layout u8
        layout 0 (dense):  numel values of `bits` bits
        layout 1 (sparse): a bitmap of numel bits (LSB first) | one value of `bits` bits per set bit

A value q is stored offset-binary (q + 2**(bits-1)) and packed LSB first; padding bits are zero. Its real
value is q * mantissa * 2**-exponent, so it decodes to the integer q * mantissa at `exponent`: exact, and
below 2**23 in magnitude like every plain update value. |q| <= 2**(bits-1) - 1. The mantissa is normalized
to [2**15, 2**16) (0 for an all-zero tensor, whose exponent is then 0), and a sparse value is never 0.

Quantization rounds stochastically (unbiased) with uniforms drawn from a seed every party can recompute
(`compression_seed`), so the simulation and the daemons produce identical bytes. Top-k keeps, per tensor,
the ceil(fraction * numel) largest magnitudes of delta + residual; the residual (what was not sent, error
feedback) stays on the node and is added to its next update.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from eth_utils import keccak

from swarmnode.aggregation.codec import (
    _HEADER,
    DEFAULT_MAX_BYTES,
    MAGIC,
    MAX_EXPONENT,
    MAX_NDIM,
    MAX_TENSORS,
    MIN_EXPONENT,
    VERSION,
    QTensor,
    Update,
    _Reader,
)
from swarmnode.aggregation.errors import AggregationError, MalformedBlob, NonFiniteValue, UpdateRejected

KIND_COMPRESSED = 3
METHODS = ("none", "quantize", "topk")
MIN_BITS, MAX_BITS = 2, 8
DENSE, SPARSE = 0, 1
_M_BITS = 16  # mantissa width: the scale is mantissa * 2**-exponent with mantissa in [2**15, 2**16)


class CompressionError(AggregationError):
    """A [task.compression] table that cannot be used."""

    reason = "bad-compression"


class WrongForm(UpdateRejected):
    """An update blob not in the form the genesis chose (plain vs compressed, method, bits)."""

    reason = "wrong-form"


@dataclass(frozen=True)
class Compression:
    """The genesis [task.compression] table: how every participant must encode its update."""

    method: str = "none"
    bits: int = 8  # quantize and topk: bits per sent value, 2..8
    fraction: float = 0.01  # topk: the share of each tensor's coordinates sent, (0, 1]

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CompressionError(f"task.compression.method {self.method!r} unknown; known: {', '.join(METHODS)}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise CompressionError(f"task.compression.bits must be an integer in {MIN_BITS}..{MAX_BITS}, "
                                   f"got {self.bits!r}")
        if (isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float)
                or not 0.0 < float(self.fraction) <= 1.0):
            raise CompressionError(f"task.compression.fraction must be in (0, 1], got {self.fraction!r}")

    @classmethod
    def from_dict(cls, table: Mapping[str, Any] | None) -> Compression:
        if not table:
            return cls()
        unknown = sorted(set(table) - {"method", "bits", "fraction"})
        if unknown:
            raise CompressionError(f"unknown task.compression keys {unknown}; known: bits, fraction, method")
        return cls(**dict(table))

    @property
    def on(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        if self.method == "quantize":
            return f"quantize, {self.bits} bits (stochastic rounding)"
        if self.method == "topk":
            return f"top-k {self.fraction:g} of each tensor, {self.bits}-bit values, error feedback"
        return "none"


def compression_seed(task_seed: int, round_: int, client_index: int) -> int:
    """The seed of one client's stochastic rounding in one round: public and recomputable, like the
    training seed, so the simulation and a daemon encode the same delta to the same bytes."""
    digest = keccak(f"swarmnode-compress:{task_seed}:{round_}:{client_index}".encode())
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---- encoding ----

def _scale(amax: float, bits: int) -> tuple[int, int] | None:
    """(mantissa, exponent) of the smallest step m * 2**-e >= amax / (2**(bits-1) - 1); None when amax is
    too small to be represented at MAX_EXPONENT (the tensor is sent as zero)."""
    step = amax / ((1 << (bits - 1)) - 1)
    f, k = math.frexp(step)  # step = f * 2**k, f in [0.5, 1)
    m = math.ceil(f * (1 << _M_BITS))
    if m == 1 << _M_BITS:
        m, k = 1 << (_M_BITS - 1), k + 1
    e = _M_BITS - k
    if e > MAX_EXPONENT:
        return None
    if e < MIN_EXPONENT:
        raise NonFiniteValue(f"update magnitude {amax:.3g} is beyond the codec's range")
    return m, e


def _stochastic(x: torch.Tensor, m: int, e: int, bits: int, gen: torch.Generator) -> torch.Tensor:
    """floor(x / step + u), u ~ U[0, 1) from `gen`: an unbiased integer in [-(2**(bits-1)-1), 2**(bits-1)-1]."""
    limit = (1 << (bits - 1)) - 1
    y = x.to(torch.float64) * (math.ldexp(1.0, e) / m)
    u = torch.rand(y.shape, dtype=torch.float64, generator=gen)
    return torch.clamp(torch.floor(y + u), -limit, limit).to(torch.int64)


@dataclass(frozen=True)
class _Packed:
    name: str
    shape: tuple[int, ...]
    exponent: int
    mantissa: int
    bits: int
    layout: int
    q: torch.Tensor  # int64, flat: every value (dense) or the nonzero ones (sparse)
    mask: np.ndarray | None = None  # sparse: bool, flat, True where a value is sent

    def decoded(self) -> QTensor:
        """The fixed-point tensor this entry stands for (what every receiver aggregates)."""
        numel = math.prod(self.shape)
        if self.layout == DENSE:
            flat = self.q * self.mantissa
        else:
            flat = torch.zeros(numel, dtype=torch.int64)
            if self.mask is not None and self.q.numel():
                flat[torch.from_numpy(np.flatnonzero(self.mask))] = self.q * self.mantissa
        return QTensor(flat.reshape(self.shape), self.exponent)


def _pack_tensor(name: str, x: torch.Tensor, spec: Compression, gen: torch.Generator) -> _Packed:
    shape = tuple(int(d) for d in x.shape)
    flat = x.detach().reshape(-1).to(torch.float64)
    if not bool(torch.isfinite(flat).all()):
        raise NonFiniteValue(f"tensor {name!r} contains NaN or Inf")
    layout = SPARSE if spec.method == "topk" else DENSE
    if layout == SPARSE:
        k = min(flat.numel(), max(1, math.ceil(spec.fraction * flat.numel()))) if flat.numel() else 0
        # stable order: ties broken by position, the same on every machine
        keep = torch.argsort(flat.abs(), descending=True, stable=True)[:k]
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[keep] = True
        values = flat[chosen]
    else:
        chosen, values = None, flat
    amax = float(values.abs().max()) if values.numel() else 0.0
    scale = _scale(amax, spec.bits) if amax > 0.0 else None
    if scale is None:
        return _Packed(name, shape, 0, 0, spec.bits, layout, torch.zeros(0 if layout == SPARSE else flat.numel(),
                                                                          dtype=torch.int64),
                       np.zeros(flat.numel(), dtype=bool) if layout == SPARSE else None)
    m, e = scale
    q = _stochastic(values, m, e, spec.bits, gen)
    if layout == DENSE:
        return _Packed(name, shape, e, m, spec.bits, DENSE, q)
    assert chosen is not None
    mask = chosen.numpy().copy()
    nz = q != 0
    mask[np.flatnonzero(mask)[~nz.numpy()]] = False  # a value rounded to 0 is not sent
    return _Packed(name, shape, e, m, spec.bits, SPARSE, q[nz], mask)


def _pack_bits(q: torch.Tensor, bits: int) -> bytes:
    u = (q + (1 << (bits - 1))).numpy().astype(np.uint8)
    if bits == 8:
        return u.tobytes()
    planes = np.unpackbits(u[:, None], axis=1, count=bits, bitorder="little")  # (n, bits), LSB first
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _encode(packed: list[_Packed]) -> bytes:
    parts = [_HEADER.pack(MAGIC, VERSION, KIND_COMPRESSED, len(packed))]
    for p in sorted(packed, key=lambda t: t.name):
        raw = p.name.encode()
        parts.append(struct.pack("<H", len(raw)) + raw + struct.pack("<B", len(p.shape)))
        parts.append(struct.pack(f"<{len(p.shape)}I", *p.shape))
        parts.append(struct.pack("<hHBB", p.exponent, p.mantissa, p.bits, p.layout))
        if p.layout == SPARSE:
            assert p.mask is not None
            parts.append(np.packbits(p.mask, bitorder="little").tobytes())
        parts.append(_pack_bits(p.q, p.bits))
    return b"".join(parts)


@dataclass(frozen=True)
class Compressed:
    """A compressed update: its canonical blob, what receivers decode it to, and (top-k) the residual the
    node keeps for its next update."""

    blob: bytes
    update: Update
    residual: dict[str, torch.Tensor] | None


def compress_delta(delta: Mapping[str, torch.Tensor], spec: Compression, seed: int,
                   residual: Mapping[str, torch.Tensor] | None = None) -> Compressed:
    """Encode a float delta as the genesis's compressed update. With top-k, `residual` (float32 tensors by
    name, from the previous call; None or missing names count as zero) is added first and the new residual
    is returned. Deterministic in (delta, residual, seed)."""
    if not spec.on:
        raise CompressionError("compress_delta needs a compression method; plain updates use codec.encode_update")
    gen = torch.Generator().manual_seed(seed)
    packed = []
    new_residual: dict[str, torch.Tensor] | None = {} if spec.method == "topk" else None
    for name in sorted(delta):
        x = delta[name].detach().to(torch.float32)
        if new_residual is not None and residual is not None and name in residual:
            r = residual[name]
            if tuple(r.shape) != tuple(x.shape):
                raise CompressionError(f"residual {name!r} has shape {tuple(r.shape)}, delta {tuple(x.shape)}")
            x = x + r.to(torch.float32)
        p = _pack_tensor(name, x, spec, gen)
        packed.append(p)
        if new_residual is not None:
            sent = p.decoded().to_float().reshape(x.shape)
            new_residual[name] = (x - sent).contiguous()
    return Compressed(_encode(packed), {p.name: p.decoded() for p in packed}, new_residual)


# ---- decoding ----

def _unpack_bits(raw: bytes, n: int, bits: int) -> np.ndarray:
    if bits == 8:
        u = np.frombuffer(raw, dtype=np.uint8)
    else:
        planes = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n * bits, bitorder="little")
        u = np.packbits(planes.reshape(n, bits), axis=1, bitorder="little")[:, 0] if n else np.zeros(0, np.uint8)
    return u.astype(np.int64) - (1 << (bits - 1))


def _check_padding(raw: bytes, used_bits: int, what: str) -> None:
    spare = len(raw) * 8 - used_bits
    if spare and raw[-1] >> (8 - spare):
        raise MalformedBlob(f"{what}: nonzero padding bits")


def _read_tensor(r: _Reader, prev: str | None, spec: Compression | None) -> tuple[str, QTensor]:
    name = r.name(prev)
    (ndim,) = r.unpack("<B", f"ndim of {name!r}")
    if ndim > MAX_NDIM:
        raise MalformedBlob(f"tensor {name!r} has {ndim} dimensions (max {MAX_NDIM})")
    shape = r.unpack(f"<{ndim}I", f"shape of {name!r}")
    exponent, mantissa, bits, layout = r.unpack("<hHBB", f"scale of {name!r}")
    if not MIN_BITS <= bits <= MAX_BITS or layout not in (DENSE, SPARSE):
        raise MalformedBlob(f"tensor {name!r} has bits {bits} and layout {layout}")
    if spec is not None and (bits != spec.bits or layout != (SPARSE if spec.method == "topk" else DENSE)):
        raise WrongForm(f"tensor {name!r} is {'sparse' if layout else 'dense'} with {bits}-bit values; the genesis "
                        f"chose {spec.describe()}")
    if mantissa == 0:
        if exponent != 0:
            raise MalformedBlob(f"tensor {name!r}: a zero scale must have exponent 0, got {exponent}")
    elif not (1 << (_M_BITS - 1)) <= mantissa or not MIN_EXPONENT <= exponent <= MAX_EXPONENT:
        raise MalformedBlob(f"tensor {name!r} has a non-canonical scale {mantissa} * 2**-{exponent}")
    # a zero dimension counted as one: every product stays below the reader's limit (see codec._read_tensor)
    if math.prod(max(d, 1) for d in shape) > r.max_elements:
        raise MalformedBlob(f"tensor {name!r} has shape {shape}: more than {r.max_elements} elements")
    numel = math.prod(shape)
    if layout == SPARSE:
        raw_mask = r.take((numel + 7) // 8, f"bitmap of {name!r}")
        _check_padding(raw_mask, numel, f"bitmap of {name!r}")
        mask = np.unpackbits(np.frombuffer(raw_mask, dtype=np.uint8), count=numel, bitorder="little").astype(bool)
        n = int(mask.sum())
    else:
        mask, n = None, numel
    raw = r.take((n * bits + 7) // 8, f"values of {name!r}")
    _check_padding(raw, n * bits, f"values of {name!r}")
    q = _unpack_bits(raw, n, bits)
    if n and int(q.min()) == -(1 << (bits - 1)):
        raise MalformedBlob(f"tensor {name!r} holds the excluded value {-(1 << (bits - 1))}")
    if mantissa == 0 and n and bool(np.any(q)):
        raise MalformedBlob(f"tensor {name!r} has a zero scale but nonzero values")
    values = torch.from_numpy(q * mantissa)
    if mask is not None:
        if n and not bool(np.all(q)):
            raise MalformedBlob(f"tensor {name!r} sends a zero value in its sparse layout")
        flat = torch.zeros(numel, dtype=torch.int64)
        flat[torch.from_numpy(np.flatnonzero(mask))] = values
        values = flat
    return name, QTensor(values.reshape(shape), exponent)


def decode_compressed(blob: bytes, spec: Compression | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Update:
    """Strictly decode a compressed update blob (kind 3). With `spec`, every tensor must also be in the form
    it names (WrongForm otherwise). Total: malformed input raises MalformedBlob."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise MalformedBlob(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) > max_bytes:
        raise MalformedBlob(f"blob of {len(blob)} bytes exceeds the limit of {max_bytes}")
    # values are at most 8 bits and a bitmap 1 bit per element: no tensor holds more than 8x the blob's bytes
    r = _Reader(blob, max(1, 8 * max_bytes))
    magic, version, kind, count = r.unpack(_HEADER.format, "header")
    if magic != MAGIC:
        raise MalformedBlob(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MalformedBlob(f"unsupported version {version}, expected {VERSION}")
    if kind != KIND_COMPRESSED:
        raise (WrongForm if spec is not None else MalformedBlob)(
            f"blob kind {kind}, expected {KIND_COMPRESSED} (a compressed update)")
    if count > MAX_TENSORS:
        raise MalformedBlob(f"{count} tensors exceeds the limit of {MAX_TENSORS}")
    out: dict[str, QTensor] = {}
    prev: str | None = None
    for _ in range(count):
        prev, q = _read_tensor(r, prev, spec)
        out[prev] = q
    if r.pos != len(blob):
        raise MalformedBlob(f"{len(blob) - r.pos} trailing bytes after the last tensor")
    return out


def decode_for(blob: bytes, spec: Compression, max_bytes: int = DEFAULT_MAX_BYTES) -> Update:
    """Decode an update blob in the form the genesis chose: plain (kind 2) without compression, compressed
    in exactly the chosen method and bits with it. Anything else is refused (WrongForm / MalformedBlob)."""
    from swarmnode.aggregation.codec import KIND_UPDATE, decode_update

    if spec.on:
        return decode_compressed(blob, spec, max_bytes)
    if len(blob) >= _HEADER.size and blob[5] == KIND_COMPRESSED and blob[:4] == MAGIC:
        raise WrongForm(f"a compressed update (kind {KIND_COMPRESSED}); the genesis chose plain updates "
                        f"(kind {KIND_UPDATE})")
    return decode_update(blob, max_bytes)
