"""Content-addressed store for global models (safetensors files) and update blobs under a node's data dir.

Models are kept as safetensors, never pickled: parameters as float32 tensors, aggregation-rule state as
int64 tensors under a `~server/` prefix with their fixed-point exponents in the file's metadata. The file
name is the model's id (keccak256 of its canonical bytes); a read re-derives the id and refuses a file
whose content does not match, so a corrupted store is detected and the model fetched again. A file is
not re-hashed while it is unchanged since it last verified (same inode, size and mtime: VerifiedStamps).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from swarmnode.aggregation.codec import SERVER_PREFIX, GlobalModel, QTensor, content_id, encode_model
from swarmnode.p2p.blobstore import VerifiedStamps, read_with_stat


class StoreError(Exception):
    """Base class for model store errors."""


class NotInStore(StoreError):
    """No object with that id is stored."""


class CorruptObject(StoreError):
    """A stored object's content does not hash to its id (it has been moved aside)."""


def model_to_safetensors(model: GlobalModel) -> bytes:
    tensors: dict[str, torch.Tensor] = {n: t.contiguous() for n, t in model.params.items()}
    metadata = {"format": "swarmnode-model-v1"}
    for name, q in model.server_state.items():
        tensors[SERVER_PREFIX + name] = q.values.to(torch.int64).contiguous()
        metadata[f"exponent:{name}"] = str(q.exponent)
    return st_save(tensors, metadata=metadata)


def model_from_safetensors(raw: bytes) -> GlobalModel:
    """Parse a safetensors model file; raises CorruptObject on anything malformed."""
    try:
        tensors = st_load(raw)
        metadata = _metadata(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CorruptObject(f"not a valid safetensors model: {exc}") from None
    params: dict[str, torch.Tensor] = {}
    state: dict[str, QTensor] = {}
    for name, t in tensors.items():
        if name.startswith(SERVER_PREFIX):
            key = name[len(SERVER_PREFIX) :]
            try:
                state[key] = QTensor(t, int(metadata[f"exponent:{key}"]))
            except (KeyError, ValueError):
                raise CorruptObject(f"server-state tensor {key!r} has no valid exponent") from None
        elif t.dtype == torch.float32:
            params[name] = t
        else:
            raise CorruptObject(f"model parameter {name!r} has dtype {t.dtype}, expected float32")
    return GlobalModel(params, state)


def _metadata(raw: bytes) -> dict[str, str]:
    """The `__metadata__` table of a safetensors file (st_load has already validated the header)."""
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return dict(header.get("__metadata__", {}))


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a crash leaves the old or the new content, both fsynced (file and directory)."""
    # a temporary name per writer: two threads may store the same content-addressed model at once (a
    # fetch and the node's own aggregate); with one shared name, the second rename found nothing
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ModelStore:
    """Models under `root/models/<id>.safetensors`, update blobs under `root/updates/<id>.bin`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.updates = self.root / "updates"
        self.quarantine = self.root / "corrupt"
        for d in (self.models, self.updates):
            d.mkdir(parents=True, exist_ok=True)
        self._verified = VerifiedStamps()

    def put_model(self, model: GlobalModel, model_id: bytes | None = None) -> bytes:
        """Store `model`; returns its id. A caller that has just encoded the model may pass the id
        (content_id(encode_model(model))) instead of having it computed again."""
        if model_id is None:
            model_id = content_id(encode_model(model))
        path = self.models / f"{model_id.hex()}.safetensors"
        if not path.exists():
            atomic_write(path, model_to_safetensors(model))  # verified (and stamped) on a later read
        return model_id

    def remove_model(self, model_id: bytes) -> bool:
        """Delete a stored model; False if it was not there."""
        path = self.models / f"{model_id.hex()}.safetensors"
        self._verified.forget(path.name)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def has_model(self, model_id: bytes) -> bool:
        return (self.models / f"{model_id.hex()}.safetensors").exists()

    def get_model(self, model_id: bytes) -> GlobalModel:
        """Load and verify; a file whose content does not hash to `model_id` is quarantined."""
        path = self.models / f"{model_id.hex()}.safetensors"
        try:
            raw, st = read_with_stat(path)
        except FileNotFoundError:
            raise NotInStore(f"model {model_id.hex()} is not in {self.models}") from None
        try:
            model = model_from_safetensors(raw)
            if self._verified.known_good(path.name, st):
                return model
            actual = content_id(encode_model(model))
        except CorruptObject as exc:
            self._quarantine(path)
            raise CorruptObject(f"model file {path.name}: {exc}") from None
        if actual != model_id:
            self._quarantine(path)
            raise CorruptObject(f"model file {path.name} hashes to {actual.hex()}, not its name")
        self._verified.record(path.name, st)
        return model

    def put_blob(self, blob: bytes) -> bytes:
        blob_id = content_id(blob)
        path = self.updates / f"{blob_id.hex()}.bin"
        if not path.exists():
            atomic_write(path, blob)
        return blob_id

    def get_blob(self, blob_id: bytes) -> bytes:
        path = self.updates / f"{blob_id.hex()}.bin"
        if not path.exists():
            raise NotInStore(f"blob {blob_id.hex()} is not in {self.updates}")
        blob = path.read_bytes()
        if content_id(blob) != blob_id:
            self._quarantine(path)
            raise CorruptObject(f"blob file {path.name} does not hash to its name")
        return blob

    def _quarantine(self, path: Path) -> None:
        self._verified.forget(path.name)
        self.quarantine.mkdir(exist_ok=True)
        os.replace(path, self.quarantine / path.name)
