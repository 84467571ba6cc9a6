"""Canonical bytes, fixed-point quantization and content ids (keccak256) for models and updates.

Layout (all integers little-endian):

    magic "SWNM" | version u8 | kind u8 | count u32
    per tensor, names strictly ascending:
        name_len u16 | name utf-8 | dtype u8 | ndim u8 | dims u32 x ndim | exponent i16 | data

`data` is the tensor's little-endian bytes in C order. A tensor's real value is `data * 2**-exponent`
(exponent 0 for float tensors). An update (kind 2) holds int32 tensors only; a model (kind 1) holds its
float32 parameters plus any int64 aggregation-rule state. Decoding accepts only this canonical form, so
equal content always has equal bytes and equal ids.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from eth_utils import keccak

from swarmnode.aggregation.errors import MalformedBlob, NonFiniteValue, WrongDtype

MAGIC = b"SWNM"
VERSION = 1
KIND_MODEL = 1
KIND_UPDATE = 2
Q_BITS = 24  # quantized magnitudes stay below 2**(Q_BITS - 1): int32 on the wire, room to sum in int64
MAX_EXPONENT = 80
MIN_EXPONENT = -80
MAX_TENSORS = 1024
MAX_NAME = 256
MAX_NDIM = 8
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

_F32, _I32, _I64 = 1, 2, 3
_DTYPES: dict[int, tuple[torch.dtype, str]] = {_F32: (torch.float32, "<f4"), _I32: (torch.int32, "<i4"), _I64: (torch.int64, "<i8")}
_CODES = {dt: code for code, (dt, _) in _DTYPES.items()}
_ALLOWED = {KIND_MODEL: {_F32, _I64}, KIND_UPDATE: {_I32}}
_HEADER = struct.Struct("<4sBBI")


@dataclass(frozen=True)
class QTensor:
    """A fixed-point tensor: real value = values * 2**-exponent. `values` is an integer tensor."""

    values: torch.Tensor
    exponent: int

    def to_float(self) -> torch.Tensor:
        """float32, rounded once from the exact float64 value (deterministic everywhere)."""
        return (self.values.to(torch.float64) * math.ldexp(1.0, -self.exponent)).to(torch.float32)


Update = dict[str, QTensor]


@dataclass(frozen=True)
class GlobalModel:
    """Model parameters (float32) plus the aggregation rule's server state (fixed-point)."""

    params: dict[str, torch.Tensor]
    server_state: dict[str, QTensor] = field(default_factory=dict)


SERVER_PREFIX = "~server/"  # '~' sorts after every parameter name


def content_id(blob: bytes) -> bytes:
    """The 32-byte id of a canonical blob: the hash the chain stores."""
    return keccak(blob)


def quantize(x: torch.Tensor, name: str = "tensor") -> QTensor:
    """Round a float tensor to fixed point with a per-tensor power-of-two scale."""
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteValue(f"tensor {name!r} contains NaN or Inf")
    amax = float(x.abs().max()) if x.numel() else 0.0
    if amax == 0.0:
        return QTensor(torch.zeros(x.shape, dtype=torch.int32), 0)
    _, k = math.frexp(amax)  # amax < 2**k
    exponent = max(MIN_EXPONENT, min(MAX_EXPONENT, Q_BITS - 1 - k))
    q = torch.round(x * math.ldexp(1.0, exponent))  # exact scaling, round half to even
    return QTensor(q.to(torch.int32), exponent)


def quantize_delta(delta: Mapping[str, torch.Tensor]) -> Update:
    return {name: quantize(t, name) for name, t in sorted(delta.items())}


def _pack(kind: int, items: list[tuple[str, torch.Tensor, int]]) -> bytes:
    parts = [_HEADER.pack(MAGIC, VERSION, kind, len(items))]
    for name, tensor, exponent in sorted(items, key=lambda it: it[0]):
        code = _CODES.get(tensor.dtype)
        if code not in _ALLOWED[kind]:
            raise WrongDtype(f"tensor {name!r} has dtype {tensor.dtype}, not allowed in kind {kind}")
        raw = name.encode()
        parts.append(struct.pack("<H", len(raw)) + raw)
        parts.append(struct.pack("<BB", code, tensor.dim()) + struct.pack(f"<{tensor.dim()}I", *tensor.shape))
        parts.append(struct.pack("<h", exponent))
        parts.append(tensor.detach().cpu().contiguous().numpy().astype(_DTYPES[code][1], copy=False).tobytes())
    return b"".join(parts)


def encode_update(update: Mapping[str, QTensor]) -> bytes:
    return _pack(KIND_UPDATE, [(n, q.values.to(torch.int32), q.exponent) for n, q in update.items()])


def encode_model(model: GlobalModel) -> bytes:
    items = [(n, t.to(torch.float32), 0) for n, t in model.params.items()]
    items += [(SERVER_PREFIX + n, q.values.to(torch.int64), q.exponent) for n, q in model.server_state.items()]
    return _pack(KIND_MODEL, items)


def model_hash(model: GlobalModel | Mapping[str, torch.Tensor]) -> bytes:
    if not isinstance(model, GlobalModel):
        model = GlobalModel(dict(model))
    return content_id(encode_model(model))


class _Reader:
    def __init__(self, blob: bytes, max_elements: int) -> None:
        self.blob = blob
        self.pos = 0
        self.max_elements = max_elements  # of any one tensor shape, zero dimensions counted as one

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.blob):
            raise MalformedBlob(f"truncated: {what} needs {n} bytes at offset {self.pos}, blob has {len(self.blob)}")
        out = self.blob[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def name(self, prev: str | None) -> str:
        """A tensor's name: length-prefixed UTF-8, 1..MAX_NAME bytes, strictly after `prev`."""
        (name_len,) = self.unpack("<H", "name length")
        if not 0 < name_len <= MAX_NAME:
            raise MalformedBlob(f"tensor name length {name_len} outside 1..{MAX_NAME}")
        try:
            name = self.take(name_len, "name").decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedBlob(f"tensor name at offset {self.pos - name_len} is not UTF-8") from None
        if prev is not None and name <= prev:
            raise MalformedBlob(f"tensor names not strictly ascending: {name!r} after {prev!r}")
        return name


def _read_tensor(r: _Reader, kind: int, prev: str | None) -> tuple[str, torch.Tensor, int]:
    name = r.name(prev)
    code, ndim = r.unpack("<BB", f"dtype of {name!r}")
    if code not in _ALLOWED[kind]:
        raise MalformedBlob(f"tensor {name!r} has dtype code {code}, not allowed in kind {kind}")
    if ndim > MAX_NDIM:
        raise MalformedBlob(f"tensor {name!r} has {ndim} dimensions (max {MAX_NDIM})")
    shape = r.unpack(f"<{ndim}I", f"shape of {name!r}")
    (exponent,) = r.unpack("<h", f"exponent of {name!r}")
    if not MIN_EXPONENT <= exponent <= MAX_EXPONENT or (code == _F32 and exponent != 0):
        raise MalformedBlob(f"tensor {name!r} has invalid exponent {exponent}")
    dtype, np_dtype = _DTYPES[code]
    # Bound the shape before numpy sees it: with one zero dimension the data is empty whatever the others
    # are, and numpy raises ValueError ("array is too big") for huge ones. Counting a zero as one keeps
    # every product below the blob limit, so no shape can overflow or allocate more than the blob holds.
    nominal = math.prod(max(d, 1) for d in shape)
    if nominal > r.max_elements:
        raise MalformedBlob(f"tensor {name!r} has shape {shape}: more than {r.max_elements} elements")
    count = math.prod(shape)
    raw = r.take(count * np.dtype(np_dtype).itemsize, f"data of {name!r}")
    tensor = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).astype(np_dtype[1:], copy=True).reshape(shape))
    return name, tensor.to(dtype), exponent


def _unpack(blob: bytes, kind: int, max_bytes: int) -> list[tuple[str, torch.Tensor, int]]:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise MalformedBlob(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) > max_bytes:
        raise MalformedBlob(f"blob of {len(blob)} bytes exceeds the limit of {max_bytes}")
    r = _Reader(blob, max(1, max_bytes))
    magic, version, got_kind, count = r.unpack(_HEADER.format, "header")
    if magic != MAGIC:
        raise MalformedBlob(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise MalformedBlob(f"unsupported version {version}, expected {VERSION}")
    if got_kind != kind:
        raise MalformedBlob(f"blob kind {got_kind}, expected {kind}")
    if count > MAX_TENSORS:
        raise MalformedBlob(f"{count} tensors exceeds the limit of {MAX_TENSORS}")
    items: list[tuple[str, torch.Tensor, int]] = []
    for _ in range(count):
        items.append(_read_tensor(r, kind, items[-1][0] if items else None))
    if r.pos != len(blob):
        raise MalformedBlob(f"{len(blob) - r.pos} trailing bytes after the last tensor")
    return items


def decode_update(blob: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Update:
    """Strictly decode a canonical update blob. Total: any malformed input raises MalformedBlob."""
    return {name: QTensor(t.to(torch.int64), e) for name, t, e in _unpack(blob, KIND_UPDATE, max_bytes)}


def decode_model(blob: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> GlobalModel:
    """Strictly decode a canonical model blob. Total: malformed input raises MalformedBlob, a NaN or Inf
    parameter NonFiniteValue (both AggregationError)."""
    params: dict[str, torch.Tensor] = {}
    state: dict[str, QTensor] = {}
    for name, t, e in _unpack(blob, KIND_MODEL, max_bytes):
        if name.startswith(SERVER_PREFIX):
            if t.dtype != torch.int64:  # fixed point only: a float here would not re-encode to these bytes
                raise MalformedBlob(f"server state {name!r} must be int64, got {t.dtype}")
            state[name[len(SERVER_PREFIX) :]] = QTensor(t, e)
        elif t.dtype == torch.float32:
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteValue(f"model tensor {name!r} contains NaN or Inf")
            params[name] = t
        else:
            raise MalformedBlob(f"model parameter {name!r} must be float32, got {t.dtype}")
    return GlobalModel(params, state)
