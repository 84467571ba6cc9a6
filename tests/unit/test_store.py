"""The model store: safetensors on disk, content-addressed, corruption detected by hash."""

import pytest
import torch

from swarmnode.aggregation.codec import GlobalModel, QTensor, content_id, model_hash
from swarmnode.node.store import CorruptObject, ModelStore, NotInStore


def _model():
    return GlobalModel({"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)},
                       {"fc.bias": QTensor(torch.tensor([1, -5, 7, 2**40]), 32)})


def test_roundtrip_keeps_the_hash(tmp_path):
    store = ModelStore(tmp_path)
    m = _model()
    mid = store.put_model(m)
    assert mid == model_hash(m)
    back = store.get_model(mid)
    assert model_hash(back) == mid and back.server_state["fc.bias"].exponent == 32


def test_corrupted_model_file_is_detected_and_quarantined(tmp_path):
    store = ModelStore(tmp_path)
    mid = store.put_model(_model())
    path = tmp_path / "models" / f"{mid.hex()}.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40  # flip a bit in the last tensor's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject, match="hashes to"):
        store.get_model(mid)
    assert not path.exists() and (tmp_path / "corrupt" / path.name).exists()
    assert not store.has_model(mid)


def test_garbage_model_file_is_a_typed_error(tmp_path):
    store = ModelStore(tmp_path)
    mid = bytes(32)
    (tmp_path / "models" / f"{mid.hex()}.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CorruptObject, match="not a valid safetensors"):
        store.get_model(mid)


def test_missing_and_corrupt_blobs(tmp_path):
    store = ModelStore(tmp_path)
    with pytest.raises(NotInStore):
        store.get_model(bytes(32))
    bid = store.put_blob(b"hello update")
    assert bid == content_id(b"hello update") and store.get_blob(bid) == b"hello update"
    (tmp_path / "updates" / f"{bid.hex()}.bin").write_bytes(b"hello updatE")
    with pytest.raises(CorruptObject):
        store.get_blob(bid)
