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


def _age(path, seconds=10.0):
    import os
    import time
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_an_unchanged_verified_file_is_not_hashed_again_and_a_rewrite_is(tmp_path, monkeypatch):
    import swarmnode.node.store as store_mod

    store = ModelStore(tmp_path)
    mid = store.put_model(_model())
    path = tmp_path / "models" / f"{mid.hex()}.safetensors"
    _age(path)
    hashes = []
    real = store_mod.content_id
    monkeypatch.setattr(store_mod, "content_id", lambda b: hashes.append(1) or real(b))
    store.get_model(mid)
    store.get_model(mid)
    assert len(hashes) == 1  # verified once; the second read trusts the unchanged file
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x40  # damaged in place: same inode, same size, new mtime
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptObject, match="hashes to"):
        store.get_model(mid)


def test_a_file_rewritten_right_after_it_was_stored_is_still_caught(tmp_path):
    # the rewrite may land in the same timestamp tick as the write: a fresh file is never trusted
    store = ModelStore(tmp_path)
    for _ in range(5):
        mid = store.put_model(_model())
        path = tmp_path / "models" / f"{mid.hex()}.safetensors"
        store.get_model(mid)
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0x40
        path.write_bytes(bytes(raw))
        with pytest.raises(CorruptObject):
            store.get_model(mid)


def test_blob_store_trusts_only_unchanged_files(tmp_path, monkeypatch):
    import swarmnode.p2p.blobstore as blobstore
    from swarmnode.p2p.errors import BlobCorrupted

    store = blobstore.DirectoryBlobStore(tmp_path)
    blob = b"an update" * 1000
    cid = store.put(blob)
    path = tmp_path / cid.hex()[:2] / cid.hex()
    assert store.get(cid) == blob  # fresh: verified
    _age(path)
    hashes = []
    real = blobstore.content_id
    monkeypatch.setattr(blobstore, "content_id", lambda b: hashes.append(1) or real(b))
    assert store.get(cid) == blob and store.get(cid) == blob and store.get(cid) == blob
    assert len(hashes) == 1
    path.write_bytes(blob[:-1] + b"X")
    with pytest.raises(BlobCorrupted):
        store.get(cid)


def test_the_same_model_stored_by_many_threads_at_once(tmp_path):
    """A fetch and the node's own aggregate can store one model at the same moment (the churn test saw
    the second writer's rename fail when both used one temporary name)."""
    import threading

    import torch

    from swarmnode.aggregation.codec import GlobalModel
    from swarmnode.node.store import ModelStore

    store = ModelStore(tmp_path)
    model = GlobalModel({"w": torch.arange(200_000, dtype=torch.float32)})
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                store.put_model(model)
                store.remove_model(store.put_model(model))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert store.get_model(store.put_model(model)).params["w"].equal(model.params["w"])
    assert not list((tmp_path / "models").glob("*.tmp"))
