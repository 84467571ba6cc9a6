"""Dataset location: search order, Debian-style .gz files, and a clear error when nothing is found."""

import gzip
import struct

import numpy as np
import pytest
import torch

from swarmnode.learning import data
from swarmnode.learning.data import load_dataset
from swarmnode.learning.errors import DatasetCorrupt, DatasetNotFound, UnknownName


def _write_idx(directory, n_train=20, n_test=10, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                with gzip.open(directory / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (directory / name).write_bytes(blob)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_ROOT", tmp_path / "debian")
    monkeypatch.delenv("SWARMNODE_DATA", raising=False)
    return tmp_path


def test_loads_gz_idx_files_from_data_dir(isolated):
    _write_idx(isolated / "mine")
    ds = load_dataset("fashion-mnist", isolated / "mine", cache_dir=isolated / "cache", allow_download=False)
    assert len(ds.train) == 20 and len(ds.test) == 10
    assert ds.train.images.shape == (20, 28, 28) and ds.train.labels.tolist()[:3] == [0, 1, 2]
    assert ds.source == str(isolated / "mine")


def test_env_var_is_searched_after_data_dir(isolated, monkeypatch):
    _write_idx(isolated / "env", n_train=30, gz=False)
    monkeypatch.setenv("SWARMNODE_DATA", str(isolated / "env"))
    ds = load_dataset("mnist", isolated / "empty", cache_dir=isolated / "cache", allow_download=False)
    assert len(ds.train) == 30 and ds.source == str(isolated / "env")


def test_debian_layout_is_found(isolated):
    _write_idx(isolated / "debian" / "fashion-mnist", n_train=40)
    ds = load_dataset("fashion-mnist", cache_dir=isolated / "cache", allow_download=False)
    assert len(ds.train) == 40


def test_missing_dataset_names_every_place_searched(isolated, monkeypatch):
    monkeypatch.setenv("SWARMNODE_DATA", str(isolated / "envdir"))
    with pytest.raises(DatasetNotFound) as info:
        load_dataset("fashion-mnist", isolated / "nowhere", cache_dir=isolated / "cache", allow_download=False)
    msg = str(info.value)
    for place in ("nowhere", "envdir", "debian", "cache", "torchvision download", "apt-get install dataset-fashion-mnist"):
        assert place in msg, f"{place!r} missing from: {msg}"


def test_unknown_dataset_name():
    with pytest.raises(UnknownName, match="cifar"):
        load_dataset("cifar", allow_download=False)


def test_daemons_installing_the_same_dataset_at_once_do_not_collide(isolated, monkeypatch):
    """Ten daemons started together on a fresh machine all copy the IDX files into the shared cache: each
    copy goes through a temporary file of its own (a shared one is renamed away under the others)."""
    import threading

    _write_idx(isolated / "mine")
    workers = 3
    both_copying = threading.Barrier(workers, timeout=10)
    real_copy = data.shutil.copyfileobj

    def copy_in_step(fin, fout, *args):
        real_copy(fin, fout, *args)
        both_copying.wait()  # every installer has written its copy before any renames it into place

    monkeypatch.setattr(data.shutil, "copyfileobj", copy_in_step)
    errors: list[BaseException] = []

    def install():
        try:
            data._install_into_cache("fashion-mnist", data._raw_files_in(isolated / "mine"), isolated / "cache")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)
            both_copying.abort()

    threads = [threading.Thread(target=install) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    raw = isolated / "cache" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(data._IDX_FILES)  # no temporary file left behind
    ds = load_dataset("fashion-mnist", isolated / "mine", cache_dir=isolated / "cache", allow_download=False)
    assert len(ds.train) == 20


# ================================================================ the IDX reader on crafted files

def _corrupt(directory, name, blob):
    _write_idx(directory, gz=False)
    (directory / name).write_bytes(blob)


@pytest.mark.parametrize(("name", "blob", "says"), [
    ("train-images-idx3-ubyte", b"", "shorter than an IDX header"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2049, 20, 28, 28) + bytes(20 * 784), "IDX magic 0x00000801"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 20, 28, 28) + bytes(20 * 784 - 1), "15680 bytes, 15679 follow"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 20, 28, 28) + bytes(20 * 784 + 1), "15681 follow"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), "0 follow"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 20, 32, 32) + bytes(20 * 1024), "expected (28, 28)"),
    ("train-images-idx3-ubyte", struct.pack(">IIII", 2051, 19, 28, 28) + bytes(19 * 784), "19 images and 20 labels"),
    ("t10k-images-idx3-ubyte", struct.pack(">IIII", 2051, 0, 28, 28), "0 images and 10 labels"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 2049, 20) + bytes(19) + b"\x0a", "label 10 outside 0..9"),
    ("train-labels-idx1-ubyte", struct.pack(">II", 2049, 20) + bytes(19) + b"\xff", "label 255 outside 0..9"),
    ("t10k-labels-idx1-ubyte", struct.pack(">III", 2050, 10, 1) + bytes(10), "IDX magic 0x00000802"),
])
def test_a_crafted_idx_file_is_a_typed_error_naming_the_file(isolated, name, blob, says):
    _corrupt(isolated / "mine", name, blob)
    with pytest.raises(DatasetCorrupt) as info:
        load_dataset("fashion-mnist", isolated / "mine", cache_dir=isolated / "cache", allow_download=False)
    assert says in str(info.value) and name in str(info.value), str(info.value)


def test_idx_limits_on_both_sides(isolated, monkeypatch):
    """Labels 0..9 and a file at the size cap load; one byte over the cap is refused before it is read."""
    _write_idx(isolated / "mine", gz=False)
    labels = struct.pack(">II", 2049, 20) + bytes([9] * 10 + [0] * 10)
    (isolated / "mine" / "train-labels-idx1-ubyte").write_bytes(labels)
    size = (isolated / "mine" / "train-images-idx3-ubyte").stat().st_size
    monkeypatch.setattr(data, "MAX_IDX_BYTES", size)
    ds = load_dataset("fashion-mnist", isolated / "mine", cache_dir=isolated / "cache", allow_download=False)
    assert ds.train.labels.tolist()[:11] == [9] * 10 + [0] and ds.train.labels.dtype == torch.int64
    monkeypatch.setattr(data, "MAX_IDX_BYTES", size - 1)
    with pytest.raises(DatasetCorrupt, match="more than an IDX file of ours can hold"):
        load_dataset("fashion-mnist", isolated / "mine", cache_dir=isolated / "cache2", allow_download=False)


def test_the_reader_gives_torchvisions_tensors(isolated):
    """The same uint8 images and int64 labels as torchvision's FashionMNIST on the same files (model hashes
    depend on it)."""
    from torchvision import datasets

    _write_idx(isolated / "mine", n_train=50, n_test=30)
    ds = load_dataset("fashion-mnist", isolated / "mine", cache_dir=isolated / "cache", allow_download=False)
    for train, split in ((True, ds.train), (False, ds.test)):
        tv = datasets.FashionMNIST(str(isolated / "cache"), train=train, download=False)
        assert torch.equal(tv.data, split.images) and torch.equal(tv.targets.long(), split.labels)
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
