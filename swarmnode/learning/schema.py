"""The shape a swarm's local data must have: typed schemas parsed from the genesis [task.data] table.

A task on local data names its kind in `task.dataset` and pins, in `[task.data]`, what every node's data
must look like, so that all nodes train one model on comparable inputs:

    [task]
    dataset = "tabular"              # or "image-folder"; "fashion-mnist" / "mnist" stay the benchmarks
    [task.data]
    label = "diagnosis"              # the label column
    classes = ["benign", "malignant"]  # label values, in class-index order
    features = [                     # input columns, in model-input order, standardised (x - mean) / std
        { name = "mean radius", type = "float", mean = 14.1, std = 3.5 },
        { name = "age", type = "int", mean = 52.0, std = 11.0 },
    ]

    [task]
    dataset = "image-folder"         # root/<class>/<image files>, as torchvision's ImageFolder
    [task.data]
    classes = ["cat", "dog"]         # class folder names, in class-index order
    image_size = [28, 28]            # height, width: images of another size are refused, never resized
    channels = 1                     # 1 (mode L) or 3 (RGB)
    mean = [0.5]                     # per channel, on [0, 1] pixel values
    std = [0.5]

The means and standard deviations are constants of the task, not statistics of one node's data: nodes
with different data must still feed the model the same transformation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from swarmnode.learning.errors import DataSchemaError

LOCAL_KINDS = ("image-folder", "tabular")
FEATURE_TYPES = ("float", "int")
CHANNELS = (1, 3)
MAX_CLASSES = 10_000
MAX_FEATURES = 10_000
MAX_IMAGE_SIDE = 4096


def _error(key: str, message: str) -> DataSchemaError:
    return DataSchemaError(f"task.data.{key}: {message}")


def _check_names(names: tuple[str, ...], key: str, lo: int, hi: int, what: str) -> None:
    if not lo <= len(names) <= hi:
        raise _error(key, f"{len(names)} {what}; expected {lo} to {hi}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise _error(f"{key}[{i}]", f"expected a non-empty string, got {name!r}")
        if name != name.strip():
            raise _error(f"{key}[{i}]", f"{name!r} starts or ends with whitespace")
        if name in seen:
            raise _error(key, f"{name!r} appears twice")
        seen.add(name)


def _check_per_channel(values: tuple[float, ...], key: str, channels: int, positive: bool) -> None:
    if len(values) != channels:
        raise _error(key, f"{len(values)} values for {channels} channel{'s' if channels != 1 else ''}")
    for i, v in enumerate(values):
        if not math.isfinite(v) or (positive and v <= 0):
            raise _error(f"{key}[{i}]", f"expected a finite number{' > 0' if positive else ''}, got {v!r}")


@dataclass(frozen=True)
class ImageSchema:
    """Images in class folders: `classes` in index order, (height, width), channels, per-channel mean/std."""

    kind: ClassVar[str] = "image-folder"

    classes: tuple[str, ...]
    image_size: tuple[int, int]  # (height, width)
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_names(self.classes, "classes", 2, MAX_CLASSES, "classes")
        for i, name in enumerate(self.classes):  # each class is a folder name
            if name in (".", "..") or any(c in name for c in "/\\\0"):
                raise _error(f"classes[{i}]", f"{name!r} cannot be a folder name")
        if len(self.image_size) != 2 or not all(1 <= s <= MAX_IMAGE_SIDE for s in self.image_size):
            raise _error("image_size", f"expected [height, width], each 1 to {MAX_IMAGE_SIDE}, got "
                                       f"{list(self.image_size)}")
        if self.channels not in CHANNELS:
            raise _error("channels", f"expected 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        _check_per_channel(self.mean, "mean", self.channels, positive=False)
        _check_per_channel(self.std, "std", self.channels, positive=True)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.image_size)  # (C, H, W)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "image_size": list(self.image_size), "channels": self.channels,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


@dataclass(frozen=True)
class Feature:
    """One input column: its name in the file, its value type, and the task's constants to standardise it."""

    name: str
    type: str  # "float" or "int" (an int column must hold integers)
    mean: float
    std: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "mean": float(self.mean), "std": float(self.std)}


@dataclass(frozen=True)
class TabularSchema:
    """Rows of named columns: `features` in model-input order and a `label` column whose values are `classes`."""

    kind: ClassVar[str] = "tabular"

    features: tuple[Feature, ...]
    label: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_names(tuple(f.name for f in self.features), "features", 1, MAX_FEATURES, "features")
        for i, f in enumerate(self.features):
            if f.type not in FEATURE_TYPES:
                raise _error(f"features[{i}].type", f"{f.type!r} unknown; expected one of {list(FEATURE_TYPES)}")
            if not math.isfinite(f.mean):
                raise _error(f"features[{i}].mean", f"expected a finite number, got {f.mean!r}")
            if not math.isfinite(f.std) or f.std <= 0:
                raise _error(f"features[{i}].std", f"expected a finite number > 0, got {f.std!r}")
        if not isinstance(self.label, str) or not self.label or self.label != self.label.strip():
            raise _error("label", f"expected a column name, got {self.label!r}")
        if self.label in {f.name for f in self.features}:
            raise _error("label", f"{self.label!r} is also a feature")
        _check_names(self.classes, "classes", 2, MAX_CLASSES, "classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (len(self.features),)  # (F,)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "classes": list(self.classes), "features": [f.to_dict() for f in self.features]}


Schema = ImageSchema | TabularSchema


# --- parsing the TOML table: types first (naming the key), then the dataclasses check the values ---


def _reject_unknown(table: dict[str, Any], known: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise DataSchemaError(f"task.data{prefix}: unknown keys {unknown}; known: {sorted(known)}")
    missing = [k for k in known if k not in table]
    if missing:
        raise DataSchemaError(f"task.data{prefix}: missing keys {missing}")


def _list(raw: Any, key: str) -> list[Any]:
    if not isinstance(raw, list):
        raise _error(key, f"expected a list, got {raw!r}")
    return raw


def _strings(raw: Any, key: str) -> tuple[str, ...]:
    items = _list(raw, key)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _error(f"{key}[{i}]", f"expected a string, got {item!r}")
    return tuple(items)


def _int(raw: Any, key: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise _error(key, f"expected an integer, got {raw!r}")
    return raw


def _number(raw: Any, key: str) -> float:
    if not isinstance(raw, (int, float)) or isinstance(raw, bool):
        raise _error(key, f"expected a number, got {raw!r}")
    return float(raw)


def _numbers(raw: Any, key: str) -> tuple[float, ...]:
    return tuple(_number(v, f"{key}[{i}]") for i, v in enumerate(_list(raw, key)))


def _image_schema(table: dict[str, Any]) -> ImageSchema:
    _reject_unknown(table, ("classes", "image_size", "channels", "mean", "std"), "")
    size = tuple(_int(v, f"image_size[{i}]") for i, v in enumerate(_list(table["image_size"], "image_size")))
    if len(size) != 2:
        raise _error("image_size", f"expected [height, width], got {list(size)}")
    return ImageSchema(classes=_strings(table["classes"], "classes"), image_size=(size[0], size[1]),
                       channels=_int(table["channels"], "channels"), mean=_numbers(table["mean"], "mean"),
                       std=_numbers(table["std"], "std"))


def _feature(raw: Any, i: int) -> Feature:
    key = f"features[{i}]"
    if not isinstance(raw, dict):
        raise _error(key, f"expected a table {{ name, type, mean, std }}, got {raw!r}")
    _reject_unknown(raw, ("name", "type", "mean", "std"), f".{key}")
    for field in ("name", "type"):
        if not isinstance(raw[field], str):
            raise _error(f"{key}.{field}", f"expected a string, got {raw[field]!r}")
    return Feature(raw["name"], raw["type"], _number(raw["mean"], f"{key}.mean"), _number(raw["std"], f"{key}.std"))


def _tabular_schema(table: dict[str, Any]) -> TabularSchema:
    _reject_unknown(table, ("label", "classes", "features"), "")
    if not isinstance(table["label"], str):
        raise _error("label", f"expected a column name, got {table['label']!r}")
    features = tuple(_feature(raw, i) for i, raw in enumerate(_list(table["features"], "features")))
    return TabularSchema(features=features, label=table["label"], classes=_strings(table["classes"], "classes"))


def schema_from_dict(kind: str, table: Any) -> Schema:
    """The schema of `kind` ("image-folder" or "tabular") from the genesis [task.data] table."""
    if kind not in LOCAL_KINDS:
        raise DataSchemaError(f"task.dataset: {kind!r} is not a local-data kind; known: {list(LOCAL_KINDS)}")
    if not isinstance(table, dict):
        what = "missing" if table is None else f"expected a table, got {table!r}"
        raise DataSchemaError(f"task.data: {what}; a task on {kind} data pins its schema there")
    return _image_schema(table) if kind == "image-folder" else _tabular_schema(table)
