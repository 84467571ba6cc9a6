"""Dataset location and loading: mnist and fashion-mnist as uint8 tensors, from local files first."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from swarmnode.learning.errors import DataMismatch, DatasetNotFound, UnknownName

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


def _read_torchvision(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    from torchvision import datasets  # heavy import, only when loading

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    train = cls(str(root), train=True, download=download)
    test = cls(str(root), train=False, download=download)
    return Split(train.data, train.targets.long()), Split(test.data, test.targets.long())


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
            train, test = _read_torchvision(name, _install_into_cache(name, files, cache), download=False)
            return Dataset(name, train, test, source=str(directory))
    cached = _find_raw_files(name, cache)
    searched.append(f"cache: {cache}")
    if cached is not None:
        train, test = _read_torchvision(name, cache, download=False)
        return Dataset(name, train, test, source=str(cache))
    if not allow_download:
        raise DatasetNotFound(_not_found_message(name, searched, "disabled"))
    try:
        train, test = _read_torchvision(name, cache, download=True)
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
