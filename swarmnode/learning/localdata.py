"""A node's own training data: tabular files and image folders, read and checked against the task's schema.

Nothing here resizes, imputes or guesses: data that does not fit the genesis [task.data] schema is refused
with a DataMismatch naming the file (and row and column), so the node's owner can fix it at the source.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarmnode.learning.data import Split
from swarmnode.learning.errors import (
    DataMismatch,
    DataSchemaError,
    DatasetNotFound,
    MissingDependency,
    PartitionError,
)
from swarmnode.learning.schema import Feature, ImageSchema, Schema, TabularSchema

PARQUET_SUFFIXES = (".parquet", ".pq")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_HOLDOUT_FRACTION = 0.9


@dataclass(frozen=True)
class LocalData:
    """What a node trains on: the checked split, the schema it fits, where it came from, what was ignored."""

    split: Split
    schema: Schema
    source: Path
    warnings: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return describe(self.split, self.schema, self.source, self.warnings)


def load_local(kind: str, path: Path, schema: Schema) -> LocalData:
    """Read and check the node's data at `path` for a task of `kind` ("tabular" or "image-folder")."""
    if kind != schema.kind:
        raise DataSchemaError(f"task.dataset: {kind!r} data cannot be read with a {schema.kind} schema")
    path = Path(path)
    if not path.exists():
        raise DatasetNotFound(f"local data {path} does not exist (the node config's [learning] data)")
    if isinstance(schema, TabularSchema):
        split, warnings = _read_tabular(path, schema)
    else:
        split, warnings = _read_image_folder(path, schema)
    return LocalData(split, schema, path, tuple(warnings))


def describe(split: Split, schema: Schema, source: Path | str, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON-ready report: rows or images per class (by name), the total, the input shape, the warnings."""
    counts = torch.bincount(split.labels, minlength=schema.num_classes).tolist()
    return {"kind": schema.kind, "source": str(source), "unit": "rows" if schema.kind == "tabular" else "images",
            "total": len(split), "per_class": dict(zip(schema.classes, counts, strict=True)),
            "input_shape": list(schema.input_shape), "warnings": list(warnings)}


def _some(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --- tabular: CSV (header row) or Parquet, features standardised with the task's constants ---


def load_tabular(path: Path, schema: TabularSchema) -> Split:
    """Features float32 (N, F), standardised (x - mean) / std, and labels int64 (N,) indexing schema.classes."""
    return _read_tabular(Path(path), schema)[0]


def _read_tabular(path: Path, schema: TabularSchema) -> tuple[Split, list[str]]:
    if path.is_dir():
        raise DataMismatch(f"{path}: a directory; tabular data is one .csv or .parquet file")
    reader = _read_parquet if path.suffix.lower() in PARQUET_SUFFIXES else _read_csv
    x, y, extra = reader(path, schema)  # float64 (N, F), int64 (N,)
    if len(y) == 0:
        raise DataMismatch(f"{path}: no data rows, only a header")
    mean = np.array([f.mean for f in schema.features])
    std = np.array([f.std for f in schema.features])
    features = ((x - mean) / std).astype(np.float32)  # (N, F)
    warnings = [f"{path}: extra columns ignored: {_some(extra)}"] if extra else []
    return Split(torch.from_numpy(features), torch.from_numpy(y), mean=(0.0,), std=(1.0,)), warnings  # done


def _columns(header: Sequence[str], schema: TabularSchema, path: Path) -> tuple[dict[str, int], list[str]]:
    """Position of each wanted column (features and label) by name, and the names of the extra ones."""
    wanted = [f.name for f in schema.features] + [schema.label]
    positions: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in positions and name in wanted:
            raise DataMismatch(f"{path}: column {name!r} appears twice in the header")
        positions.setdefault(name, i)
    missing = [n for n in wanted if n not in positions]
    if missing:
        raise DataMismatch(f"{path}: missing columns {_some(missing)} (the task wants features "
                           f"{_some([f.name for f in schema.features])} and label {schema.label!r}); "
                           f"the file has {_some(list(header))}")
    return positions, [n for n in header if n not in set(wanted)]


def _cell_value(text: str, feature: Feature) -> float:
    """One CSV cell of `feature`, or ValueError saying why not."""
    s = text.strip()
    if not s:
        raise ValueError("empty (missing value)")
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{text!r} is not finite (NaN and infinity are refused)")
    if feature.type == "int" and not v.is_integer():
        raise ValueError(f"{text!r} is not an integer (the feature's type is int)")
    return v


def _unknown_label(where: str, value: Any, schema: TabularSchema) -> DataMismatch:
    return DataMismatch(f"{where}: label {value!r} is not a class of the task; allowed: {_some(schema.classes, 20)}")


def _read_csv(path: Path, schema: TabularSchema) -> tuple[np.ndarray, np.ndarray, list[str]]:
    values, labels = array("d"), array("q")  # compact while reading: 8 bytes a value
    class_index = {c: i for i, c in enumerate(schema.classes)}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataMismatch(f"{path}: empty file; a CSV needs a header row naming its columns")
            header = [h.strip() for h in header]
            positions, extra = _columns(header, schema, path)
            cols = [(positions[f.name], f) for f in schema.features]
            label_col = positions[schema.label]
            row = 0
            for cells in reader:
                if not cells:  # a blank line
                    continue
                row += 1
                where = f"{path}: row {row} (line {reader.line_num})"
                if len(cells) != len(header):
                    raise DataMismatch(f"{where}: {len(cells)} cells, the header has {len(header)}")
                for col, feature in cols:
                    try:
                        values.append(_cell_value(cells[col], feature))
                    except ValueError as exc:
                        raise DataMismatch(f"{where}, column {feature.name!r}: {exc}") from None
                label = class_index.get(cells[label_col].strip())
                if label is None:
                    raise _unknown_label(f"{where}, column {schema.label!r}", cells[label_col].strip(), schema)
                labels.append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataMismatch(f"{path}: cannot read it as CSV ({exc})") from None
    x = np.frombuffer(values, dtype=np.float64).reshape(-1, len(schema.features)) if labels else \
        np.zeros((0, len(schema.features)))
    return x, np.frombuffer(labels, dtype=np.int64).copy(), extra


def _read_parquet(path: Path, schema: TabularSchema) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency(f"{path}: reading Parquet needs pyarrow: pip install pyarrow "
                                "(or give the data as CSV)") from None
    try:
        _, extra = _columns(pq.read_schema(path).names, schema, path)
        table = pq.read_table(path, columns=[f.name for f in schema.features] + [schema.label])
    except (pa.ArrowException, OSError) as exc:
        raise DataMismatch(f"{path}: cannot read it as Parquet ({exc})") from None
    x = np.empty((table.num_rows, len(schema.features)))  # (N, F)
    for j, feature in enumerate(schema.features):
        x[:, j] = _parquet_feature(table.column(feature.name), feature, path)
    return x, _parquet_labels(table.column(schema.label), schema, path), extra


def _first(mask: np.ndarray) -> int:
    """1-based row of the first True."""
    return int(np.flatnonzero(mask)[0]) + 1


def _parquet_feature(column: Any, feature: Feature, path: Path) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    where = f"{path}: column {feature.name!r}"
    if column.null_count:
        raise DataMismatch(f"{path}: row {_first(pc.is_null(column).to_numpy())}, column {feature.name!r}: "
                           "empty (missing value)")
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.float64)
    if not pa.types.is_floating(column.type):
        raise DataMismatch(f"{where}: values of type {column.type}, expected numbers")
    v = column.to_numpy().astype(np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        raise DataMismatch(f"{path}: row {_first(bad)}, column {feature.name!r}: {v[bad][0]} is not finite "
                           "(NaN and infinity are refused)")
    fractional = v != np.floor(v)
    if feature.type == "int" and fractional.any():
        raise DataMismatch(f"{path}: row {_first(fractional)}, column {feature.name!r}: {v[fractional][0]} is not "
                           "an integer (the feature's type is int)")
    return v


def _parquet_labels(column: Any, schema: TabularSchema, path: Path) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        raise DataMismatch(f"{path}: row {_first(pc.is_null(column).to_numpy())}, column {schema.label!r}: "
                           "empty (missing label)")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_integer(column.type):
        column = column.cast(pa.string())
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataMismatch(f"{path}: column {schema.label!r}: labels of type {column.type}, expected strings")
    text = pc.utf8_trim_whitespace(column)
    index = pc.index_in(text, value_set=pa.array(schema.classes, pa.string()))
    if index.null_count:
        unknown = pc.is_null(index).to_numpy()
        row = _first(unknown)
        raise _unknown_label(f"{path}: row {row}, column {schema.label!r}", text[row - 1].as_py(), schema)
    return index.to_numpy().astype(np.int64)


# --- image folders: root/<class>/<images>, exactly the schema's size and channels ---


def load_image_folder(root: Path, schema: ImageSchema) -> Split:
    """Images uint8 (N, C, H, W) and labels int64 (N,): classes in schema order, files sorted within each."""
    return _read_image_folder(Path(root), schema)[0]


def _read_image_folder(root: Path, schema: ImageSchema) -> tuple[Split, list[str]]:
    if not root.is_dir():
        raise DataMismatch(f"{root}: not a directory; image-folder data is <root>/<class>/<image files>")
    files, warnings = _image_files(root, schema)
    if not files:
        raise DataMismatch(f"{root}: no images in any class folder (looked for {', '.join(IMAGE_SUFFIXES)})")
    images = torch.empty((len(files), *schema.input_shape), dtype=torch.uint8)  # (N, C, H, W), filled in place
    for i, (path, _) in enumerate(files):
        images[i] = torch.from_numpy(_read_image(path, schema)).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return Split(images, labels, schema.mean, schema.std), warnings


def _image_files(root: Path, schema: ImageSchema) -> tuple[list[tuple[Path, int]], list[str]]:
    """Every image file with its class index, in schema order then sorted path order; and what was ignored."""
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    folders = {p.name: p for p in entries if p.is_dir()}
    unknown = sorted(set(folders) - set(schema.classes))
    if unknown:
        raise DataMismatch(f"{root}: class folders {_some(unknown)} are not classes of the task; "
                           f"its classes: {_some(schema.classes, 20)}")
    warnings: list[str] = []
    stray = [p.name for p in entries if not p.is_dir()]
    if stray:
        warnings.append(f"{root}: files outside the class folders ignored: {_some(stray)}")
    files: list[tuple[Path, int]] = []
    missing: list[str] = []
    for label, name in enumerate(schema.classes):
        if name not in folders:
            missing.append(name)
            continue
        folder = folders[name]
        found = [p for p in folder.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        images = sorted((p for p in found if p.suffix.lower() in IMAGE_SUFFIXES),
                        key=lambda p: p.relative_to(folder).parts)
        if len(images) < len(found):
            warnings.append(f"{folder}: {len(found) - len(images)} files that are not images ignored")
        if not images:
            missing.append(name)
        files += [(p, label) for p in images]
    if missing:
        warnings.append(f"classes with no images on this node: {_some(missing, 20)}")
    return files, warnings


def _read_image(path: Path, schema: ImageSchema) -> np.ndarray:
    """One image as uint8 (H, W, C), exactly the schema's size and channel count, or DataMismatch."""
    from PIL import Image  # installed with torchvision

    height, width = schema.image_size
    try:
        with Image.open(path) as img:
            if img.size != (width, height):  # PIL: (width, height); checked before decoding
                raise DataMismatch(f"{path}: {img.size[1]}x{img.size[0]} pixels (height x width), the task wants "
                                   f"{height}x{width}; resize the data beforehand (the node never resizes)")
            img.load()
            return _pixels(img, schema.channels, path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise DataMismatch(f"{path}: unreadable image ({exc})") from None


def _pixels(img: Any, channels: int, path: Path) -> np.ndarray:
    """Mode L -> 1 channel, RGB -> 3; palette, bilevel and fully opaque alpha images when that is unambiguous."""
    original = img.mode
    from_palette = original == "P"
    if original == "1":
        img = img.convert("L")
    elif from_palette:
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA"):
        if np.asarray(img.getchannel("A")).min() < 255:
            raise DataMismatch(f"{path}: mode {original} with transparent pixels; refusing to guess a background")
        img = img.convert("L" if img.mode == "LA" else "RGB")
    pixels = np.array(img, dtype=np.uint8)  # (H, W) or (H, W, 3)
    if from_palette and channels == 1 and (pixels == pixels[..., :1]).all():
        return pixels[..., :1]  # a grey palette: one channel, no choice made
    have = {"L": 1, "RGB": 3}.get(img.mode)
    if have is None:
        raise DataMismatch(f"{path}: image mode {original} is not supported; expected L (1 channel) or RGB (3)")
    if have != channels:
        raise DataMismatch(f"{path}: {have} channel{'s' if have > 1 else ''} (mode {original}), the task wants "
                           f"{channels}; convert the data beforehand")
    return pixels[..., None] if pixels.ndim == 2 else pixels


# --- the node's own evaluation rows ---


def holdout_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, holdout): about `fraction` of the rows held out, per class in proportion to its size, never a
    class's last training row; which rows, decided by `seed`. Both keep the original row order."""
    if not 0 <= fraction <= MAX_HOLDOUT_FRACTION:
        raise PartitionError(f"holdout fraction {fraction!r} outside [0, {MAX_HOLDOUT_FRACTION}]")
    labels = split.labels
    classes = torch.unique(labels).tolist()  # sorted
    sizes = {c: int((labels == c).sum()) for c in classes}
    take = {c: math.floor(n * fraction) for c, n in sizes.items()}  # floor(0.9 n) <= n - 1 for n >= 1
    short = min(round(len(split) * fraction), len(split) - 1) - sum(take.values())
    for c in sorted(classes, key=lambda c: (take[c] - sizes[c] * fraction, c)):  # largest remainder first
        if short <= 0:
            break
        if take[c] < sizes[c] - 1:
            take[c] += 1
            short -= 1
    gen = torch.Generator().manual_seed(seed)
    held = [torch.nonzero(labels == c).flatten()[torch.randperm(sizes[c], generator=gen)[: take[c]]]
            for c in classes]
    held_idx = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[held_idx] = False
    return split.subset(torch.nonzero(keep).flatten()), split.subset(held_idx)
