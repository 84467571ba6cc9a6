"""Dataset location and loading: mnist and fashion-mnist as uint8 tensors, from local files first."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from swarmnode.learning.errors import DataMismatch, DatasetCorrupt, DatasetNotFound, UnknownName

# torchvision class name (its folder name under root) for each dataset we know.
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_ROOT = Path("/usr/share/datasets")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
MAX_IDX_BYTES = 1 << 30  # a 28x28 image set of over 1.3M images is not one of ours


@dataclass(frozen=True)
class Split:
    """Inputs and labels (N,) int64, with the per-channel constants that turn the inputs into model inputs.

    `images` is uint8 (N, 28, 28) for the benchmarks, uint8 (N, C, H, W) for local image folders, or float32
    (N, F) for tabular rows (already standardised when loaded; `mean` and `std` then go unused).
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...] = (0.5,)  # per channel, on [0, 1] pixel values
    std: tuple[float, ...] = (0.5,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices], self.mean, self.std)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    source: str  # where it was found, for logs

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarmnode" / "datasets"


def candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """Where `name` is looked for, in order: --data-dir, $SWARMNODE_DATA, Debian's package dir."""
    found: list[tuple[str, Path]] = []
    if data_dir:
        found.append(("--data-dir", Path(data_dir)))
    env = os.environ.get("SWARMNODE_DATA")
    if env:
        found.append(("$SWARMNODE_DATA", Path(env)))
    found.append(("debian package", DEBIAN_ROOT / name))
    return found


def _raw_files_in(directory: Path) -> dict[str, Path] | None:
    """The four IDX files (plain or .gz) directly in `directory`, or None if any is missing."""
    files: dict[str, Path] = {}
    for stem in _IDX_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                files[stem] = candidate
                break
        else:
            return None
    return files


def _find_raw_files(name: str, directory: Path) -> dict[str, Path] | None:
    tv = _TORCHVISION_NAMES[name]
    for sub in (directory, directory / name, directory / tv / "raw"):
        files = _raw_files_in(sub)
        if files is not None:
            return files
    return None


def _install_into_cache(name: str, files: dict[str, Path], cache: Path) -> Path:
    """Copy (gunzipping) IDX files into `cache/<TorchvisionName>/raw/` as torchvision expects them."""
    raw = cache / _TORCHVISION_NAMES[name] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem, src in files.items():
        dst = raw / stem
        if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        # A temporary name of its own: several daemons on one machine may install the same files at once,
        # and each rename then atomically puts a complete copy in place.
        fd, tmp_name = tempfile.mkstemp(dir=raw, prefix=f".{stem}.", suffix=".tmp")
        tmp = Path(tmp_name)
        opener = gzip.open if src.suffix == ".gz" else open
        try:
            with opener(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    return cache


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes with `ndim` dimensions (the MNIST format: magic 0x000008NN, then NN
    big-endian u32 sizes, then the bytes) as a uint8 tensor; DatasetCorrupt naming the file otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_IDX_BYTES:
            raise DatasetCorrupt(f"{path}: {size} bytes, more than an IDX file of ours can hold ({MAX_IDX_BYTES})")
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetCorrupt(f"{path}: cannot read: {exc.strerror or exc}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetCorrupt(f"{path}: {len(data)} bytes, shorter than an IDX header ({header})")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != 0x0800 + ndim:
        raise DatasetCorrupt(f"{path}: IDX magic {magic:#010x}, expected {0x0800 + ndim:#010x} (unsigned bytes, "
                             f"{ndim} dimension{'s' if ndim > 1 else ''})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    count = 1
    for d in dims:
        count *= d
    if len(data) - header != count:
        raise DatasetCorrupt(f"{path}: its header says {'x'.join(map(str, dims))} = {count} bytes, "
                             f"{len(data) - header} follow")
    if count == 0:  # frombuffer refuses an empty tail; the caller says what an empty set means
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*dims)


def _installed(name: str, files: dict[str, Path], cache: Path) -> dict[str, Path]:
    """The four plain IDX files in the cache (copied and gunzipped there first when needed)."""
    raw = _install_into_cache(name, files, cache) / _TORCHVISION_NAMES[name] / "raw"
    return {stem: raw / stem for stem in _IDX_FILES}


def _read_split(files: dict[str, Path], prefix: str) -> Split:
    images = read_idx(files[f"{prefix}-images-idx3-ubyte"], 3)
    labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"], 1)
    where = files[f"{prefix}-images-idx3-ubyte"]
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DatasetCorrupt(f"{where}: images of {tuple(images.shape[1:])}, expected {IMAGE_SHAPE}")
    if images.shape[0] == 0 or images.shape[0] != labels.shape[0]:
        raise DatasetCorrupt(f"{where}: {images.shape[0]} images and {labels.shape[0]} labels")
    if int(labels.max()) >= NUM_CLASSES:
        raise DatasetCorrupt(f"{files[f'{prefix}-labels-idx1-ubyte']}: label {int(labels.max())} outside "
                             f"0..{NUM_CLASSES - 1}")
    return Split(images, labels.long())


def _read_raw(files: dict[str, Path]) -> tuple[Split, Split]:
    """The train and test splits from the four plain IDX files (read directly: no torchvision import,
    which costs a daemon or a CLI call 2.5 s; the tensors are the same as torchvision's)."""
    return _read_split(files, "train"), _read_split(files, "t10k")


def _download(name: str, cache: Path) -> tuple[Split, Split]:
    from torchvision import datasets  # heavy import, only when downloading

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    cls(str(cache), train=True, download=True)
    cls(str(cache), train=False, download=True)
    files = _raw_files_in(cache / _TORCHVISION_NAMES[name] / "raw")
    if files is None:
        raise DatasetCorrupt(f"the download into {cache} left no IDX files behind")
    return _read_raw(files)


def _not_found_message(name: str, searched: list[str], download_error: str) -> str:
    lines = [f"dataset {name!r} was not found. Searched, in order:"]
    lines += [f"  - {place}" for place in searched]
    lines.append(f"  - torchvision download: {download_error}")
    lines.append("Get it with one of:")
    if name == "fashion-mnist":
        lines.append("  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; files go to /usr/share/datasets)")
    lines.append(f"  put the four IDX files ({', '.join(_IDX_FILES)}, optionally .gz) in a directory")
    lines.append("  and pass --data-dir DIR or set SWARMNODE_DATA=DIR")
    return "\n".join(lines)


def locate_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, cache_dir: Path | None = None) -> str | None:
    """Where load_dataset would find `name` without downloading (e.g. "--data-dir: /srv/fm"), or None."""
    if name not in _TORCHVISION_NAMES:
        raise UnknownName(f"unknown dataset {name!r}; known: {', '.join(sorted(_TORCHVISION_NAMES))}")
    cache = cache_dir or default_cache_dir()
    for label, directory in [*candidate_dirs(name, data_dir), ("cache", cache)]:
        if _find_raw_files(name, directory) is not None:
            return f"{label}: {directory}"
    return None


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: Path | None = None,
    allow_download: bool = True,
) -> Dataset:
    """Load `name` from the first place that has it; raise DatasetNotFound naming every place searched."""
    if name not in _TORCHVISION_NAMES:
        raise UnknownName(f"unknown dataset {name!r}; known: {', '.join(sorted(_TORCHVISION_NAMES))}")
    cache = cache_dir or default_cache_dir()
    searched: list[str] = []
    for label, directory in candidate_dirs(name, data_dir):
        searched.append(f"{label}: {directory}")
        files = _find_raw_files(name, directory)
        if files is not None:
            train, test = _read_raw(_installed(name, files, cache))
            return Dataset(name, train, test, source=str(directory))
    cached = _find_raw_files(name, cache)
    searched.append(f"cache: {cache}")
    if cached is not None:
        train, test = _read_raw(_installed(name, cached, cache))
        return Dataset(name, train, test, source=str(cache))
    if not allow_download:
        raise DatasetNotFound(_not_found_message(name, searched, "disabled"))
    try:
        train, test = _download(name, cache)
    except DatasetCorrupt:
        raise
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError variants
        raise DatasetNotFound(_not_found_message(name, searched, f"failed ({type(exc).__name__}: {exc})")) from None
    return Dataset(name, train, test, source="torchvision download")


def to_float(images: torch.Tensor, mean: tuple[float, ...] = (0.5,), std: tuple[float, ...] = (0.5,)) -> torch.Tensor:
    """Model inputs: uint8 (B, H, W) -> float32 (B, 1, H, W) and uint8 (B, C, H, W) -> float32 (B, C, H, W),
    each scaled to [0, 1] and normalised per channel; float32 (B, F) rows pass through unchanged."""
    if images.dtype == torch.uint8 and images.dim() == 3 and len(mean) == len(std) == 1:
        # Python scalars, as before per-channel constants existed: the benchmark inputs stay bit-identical
        return (images.unsqueeze(1).float() / 255.0 - mean[0]) / std[0]
    if images.dtype == torch.uint8 and images.dim() == 4 and len(mean) == len(std) in (1, images.shape[1]):
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.float() / 255.0 - m) / s
    if images.dtype == torch.float32 and images.dim() == 2:
        return images
    raise DataMismatch(f"no model inputs from {images.dtype} {tuple(images.shape)} with {len(mean)} means, "
                       f"{len(std)} stds; expected uint8 (B, H, W), uint8 (B, C, H, W) or float32 (B, F)")


def inputs(split: Split, idx: torch.Tensor) -> torch.Tensor:
    """The model inputs of rows `idx` of `split`, normalised with the split's own constants."""
    return to_float(split.images[idx], split.mean, split.std)
