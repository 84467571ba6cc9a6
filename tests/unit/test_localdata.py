"""Local data: schemas name their bad keys, loaders refuse data that does not fit and say where, data check."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from swarmnode.cli.main import main
from swarmnode.learning.data import Split, inputs, to_float
from swarmnode.learning.errors import DataMismatch, DataSchemaError, MissingDependency, PartitionError
from swarmnode.learning.localdata import holdout_split, load_image_folder, load_local, load_tabular
from swarmnode.learning.schema import Feature, ImageSchema, TabularSchema, schema_from_dict
from swarmnode.node.config import NodeConfigError, config_from_dict, config_to_dict, load_config

MINIMAL_GENESIS = Path(__file__).resolve().parents[2] / "genesis" / "minimal.toml"

TABLE = TabularSchema(features=(Feature("radius", "float", 14.0, 3.5), Feature("age", "int", 50.0, 10.0)),
                      label="diagnosis", classes=("benign", "malignant"))
GOOD_CSV = "radius,age,diagnosis\n14.0,50,benign\n17.5,40,malignant\n10.5,71,benign\n"
IMAGES = ImageSchema(classes=("cat", "dog", "fox"), image_size=(4, 6), channels=3,
                     mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))


def _write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _mismatch(tmp_path: Path, text: str) -> str:
    with pytest.raises(DataMismatch) as err:
        load_tabular(_write(tmp_path, text), TABLE)
    return str(err.value)


# --- schemas ---


def test_schemas_round_trip_through_their_toml_tables() -> None:
    for schema in (TABLE, IMAGES):
        table = schema.to_dict()
        assert schema_from_dict(schema.kind, table) == schema
        assert all(isinstance(v, float) for v in [*table.get("mean", []), *table.get("std", [])])
    assert TABLE.input_shape == (2,) and TABLE.num_classes == 2
    assert IMAGES.input_shape == (3, 4, 6) and IMAGES.num_classes == 3
    ints = schema_from_dict("tabular", {**TABLE.to_dict(), "features": [
        {"name": "radius", "type": "float", "mean": 14, "std": 3.5}, {"name": "age", "type": "int", "mean": 50,
                                                                     "std": 10}]})
    assert ints == TABLE and isinstance(ints.features[0].mean, float), "TOML integers are read as floats"


def _image(**changes: object) -> dict[str, object]:
    return {**IMAGES.to_dict(), **changes}


def _tabular(**changes: object) -> dict[str, object]:
    return {**TABLE.to_dict(), **changes}


def _features(**changes: object) -> list[dict[str, object]]:
    return [{**TABLE.features[0].to_dict(), **changes}, TABLE.features[1].to_dict()]


@pytest.mark.parametrize("kind, table, expected", [
    ("image-folder", _image(channels=1, mean=[0.1, 0.2, 0.3], std=[1.0]), "task.data.mean: 3 values for 1 channel"),
    ("image-folder", _image(std=[0.2, 0.0, 0.2]), "task.data.std[1]"),
    ("image-folder", _image(mean=[0.5, float("nan"), 0.5]), "task.data.mean[1]"),
    ("image-folder", _image(classes=["cat"]), "task.data.classes: 1 classes"),
    ("image-folder", _image(classes=["cat", "cat"]), "task.data.classes: 'cat' appears twice"),
    ("image-folder", _image(classes=["cat", ""]), "task.data.classes[1]"),
    ("image-folder", _image(classes=["cat", "a/b"]), "task.data.classes[1]"),
    ("image-folder", _image(image_size=[0, 6]), "task.data.image_size"),
    ("image-folder", _image(image_size=[4, 5000]), "task.data.image_size"),
    ("image-folder", _image(image_size=[4]), "task.data.image_size"),
    ("image-folder", _image(channels=2), "task.data.channels"),
    ("image-folder", _image(channels=True), "task.data.channels"),
    ("image-folder", _image(colour="red"), "unknown keys ['colour']"),
    ("image-folder", {k: v for k, v in IMAGES.to_dict().items() if k != "std"}, "missing keys ['std']"),
    ("tabular", _tabular(label="radius"), "task.data.label: 'radius' is also a feature"),
    ("tabular", _tabular(label=""), "task.data.label"),
    ("tabular", _tabular(features=[]), "task.data.features: 0 features"),
    ("tabular", _tabular(features=_features(name="age")), "task.data.features: 'age' appears twice"),
    ("tabular", _tabular(features=_features(std=float("inf"))), "task.data.features[0].std"),
    ("tabular", _tabular(features=_features(std=-1.0)), "task.data.features[0].std"),
    ("tabular", _tabular(features=_features(mean="big")), "task.data.features[0].mean"),
    ("tabular", _tabular(features=_features(type="str")), "task.data.features[0].type"),
    ("tabular", _tabular(features=_features(unit="cm")), "task.data.features[0]: unknown keys ['unit']"),
    ("tabular", _tabular(classes="benign"), "task.data.classes: expected a list"),
    ("tabular", _tabular(classes=[0, 1]), "task.data.classes[0]: expected a string"),
    ("tabular", None, "task.data: missing"),
    ("csv", TABLE.to_dict(), "task.dataset: 'csv'"),
])
def test_schema_errors_name_the_key(kind: str, table: object, expected: str) -> None:
    with pytest.raises(DataSchemaError) as err:
        schema_from_dict(kind, table)
    assert expected in str(err.value)


_name = st.text(st.characters(codec="utf-8", categories=["L", "N"]), min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(names=st.lists(_name, min_size=2, max_size=6, unique=True),
       classes=st.lists(_name, min_size=2, max_size=5, unique=True),
       stats=st.lists(st.tuples(st.sampled_from(["float", "int"]), st.floats(-1e6, 1e6),
                                st.floats(1e-6, 1e6)), min_size=6, max_size=6))
def test_any_valid_tabular_schema_round_trips(names: list[str], classes: list[str],
                                              stats: list[tuple[str, float, float]]) -> None:
    label, *features = names
    columns = tuple(Feature(n, t, m, s) for n, (t, m, s) in zip(features, stats[: len(features)], strict=True))
    schema = TabularSchema(columns, label, tuple(classes))
    assert schema_from_dict("tabular", schema.to_dict()) == schema


# --- tabular files ---


def test_csv_is_standardised_with_the_task_constants_and_labels_map_to_class_indices(tmp_path: Path) -> None:
    split = load_tabular(_write(tmp_path, GOOD_CSV), TABLE)
    raw = np.array([[14.0, 50], [17.5, 40], [10.5, 71]])
    expected = ((raw - np.array([14.0, 50.0])) / np.array([3.5, 10.0])).astype(np.float32)
    assert split.images.dtype == torch.float32 and split.images.shape == (3, 2)  # (N, F)
    assert torch.equal(split.images, torch.from_numpy(expected))
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == [0, 1, 0]
    assert torch.equal(inputs(split, torch.tensor([2, 0])), split.images[[2, 0]]), "rows pass through to_float"


def test_column_order_does_not_matter_and_extra_columns_are_reported(tmp_path: Path) -> None:
    shuffled = _write(tmp_path, "id,diagnosis,age,radius\n1,benign,50,14.0\n2,malignant,40,17.5\n"
                                "3,benign,71,10.5\n", "shuffled.csv")
    local = load_local("tabular", shuffled, TABLE)
    plain = load_tabular(_write(tmp_path, GOOD_CSV), TABLE)
    assert torch.equal(local.split.images, plain.images) and torch.equal(local.split.labels, plain.labels)
    assert len(local.warnings) == 1 and "extra columns ignored: 'id'" in local.warnings[0]
    report = local.describe()
    assert report["per_class"] == {"benign": 2, "malignant": 1} and report["total"] == 3
    assert report["warnings"] == list(local.warnings)


@pytest.mark.parametrize("text, expected", [
    ("radius,diagnosis\n14,benign\n", ["missing columns 'age'"]),
    ("radius,age,diagnosis\n14,50,benign\n15,2.5,benign\n", ["row 2", "column 'age'", "'2.5' is not an integer"]),
    ("radius,age,diagnosis\n14,50,benign\nnan,40,benign\n", ["row 2", "column 'radius'", "not finite"]),
    ("radius,age,diagnosis\ninf,50,benign\n", ["row 1", "column 'radius'", "not finite"]),
    ("radius,age,diagnosis\nbig,50,benign\n", ["row 1", "column 'radius'", "'big' is not a number"]),
    ("radius,age,diagnosis\n,50,benign\n", ["row 1", "column 'radius'", "missing value"]),
    ("radius,age,diagnosis\n14,50\n", ["row 1", "2 cells, the header has 3"]),
    ("radius,age,diagnosis\n14,50,benign\n14,50,maybe\n",
     ["row 2", "column 'diagnosis'", "label 'maybe' is not a class", "'benign', 'malignant'"]),
    ("radius,age,radius,diagnosis\n1,2,3,benign\n", ["column 'radius' appears twice"]),
    ("", ["empty file", "header row"]),
    ("radius,age,diagnosis\n", ["no data rows"]),
])
def test_csv_mismatches_name_the_file_row_and_column(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = _mismatch(tmp_path, text)
    assert "d.csv" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_parquet_reads_like_csv_and_names_bad_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"diagnosis": ["benign", "malignant", "benign"], "age": [50, 40, 71],
                             "radius": [14.0, 17.5, 10.5], "site": ["a", "b", "c"]}), path)
    local = load_local("tabular", path, TABLE)
    csv = load_tabular(_write(tmp_path, GOOD_CSV), TABLE)
    assert torch.equal(local.split.images, csv.images) and torch.equal(local.split.labels, csv.labels)
    assert "'site'" in local.warnings[0]
    for table, expected in (({"diagnosis": ["benign", "maybe"], "age": [1, 2], "radius": [1.0, 2.0]},
                             ["row 2", "label 'maybe'"]),
                            ({"diagnosis": ["benign", "benign"], "age": [1.0, 2.5], "radius": [1.0, 2.0]},
                             ["row 2", "column 'age'", "not an integer"]),
                            ({"diagnosis": ["benign", "benign"], "age": [1, 2], "radius": [math.nan, 2.0]},
                             ["row 1", "column 'radius'", "not finite"]),
                            ({"diagnosis": ["benign", "benign"], "age": [1, 2]}, ["missing columns 'radius'"])):
        pq.write_table(pa.table(table), path)
        with pytest.raises(DataMismatch) as err:
            load_tabular(path, TABLE)
        assert all(part in str(err.value) for part in expected), str(err.value)


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(MissingDependency, match="pip install pyarrow"):
        load_tabular(_write(tmp_path, "", "d.parquet"), TABLE)


# --- image folders ---


def _png(path: Path, pixels: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def _rgb(seed: int, h: int = 4, w: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # (H, W, C)


def test_image_folder_is_read_in_schema_then_file_order(tmp_path: Path) -> None:
    dog = _png(tmp_path / "dog" / "z.png", _rgb(0))
    cat_b = _png(tmp_path / "cat" / "b.BMP", _rgb(1))
    cat_a = _png(tmp_path / "cat" / "a.png", _rgb(2))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    local = load_local("image-folder", tmp_path, IMAGES)
    split = local.split
    assert split.images.dtype == torch.uint8 and split.images.shape == (3, 3, 4, 6)  # (N, C, H, W)
    assert split.labels.tolist() == [0, 0, 1], "classes in schema order"
    for got, want in zip(split.images, (cat_a, cat_b, dog), strict=True):
        assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1)), "files sorted within a class"
    again = load_image_folder(tmp_path, IMAGES)
    assert torch.equal(again.images, split.images) and torch.equal(again.labels, split.labels)
    assert any("'fox'" in w for w in local.warnings), "a class this node lacks is reported"
    assert any("1 files that are not images" in w for w in local.warnings)
    assert local.describe()["per_class"] == {"cat": 2, "dog": 1, "fox": 0}
    m, s = torch.tensor(IMAGES.mean).view(1, 3, 1, 1), torch.tensor(IMAGES.std).view(1, 3, 1, 1)
    assert torch.equal(inputs(split, torch.tensor([1])), (split.images[[1]].float() / 255.0 - m) / s)
    assert split.subset(torch.tensor([0])).mean == IMAGES.mean, "subsets keep the constants"


def _refused(root: Path, schema: ImageSchema = IMAGES) -> str:
    with pytest.raises(DataMismatch) as err:
        load_image_folder(root, schema)
    return str(err.value)


def test_images_of_another_size_are_refused_not_resized(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "ok.png", _rgb(0))
    _png(tmp_path / "cat" / "big.png", _rgb(1, h=5))
    message = _refused(tmp_path)
    assert "big.png" in message and "5x6" in message and "4x6" in message


def test_images_with_other_channel_counts_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "grey.png", np.zeros((4, 6), np.uint8))
    message = _refused(tmp_path)
    assert "grey.png" in message and "1 channel" in message and "wants 3" in message


def test_alpha_and_palette_are_converted_only_when_unambiguous(tmp_path: Path) -> None:
    opaque = np.dstack([_rgb(0), np.full((4, 6), 255, np.uint8)])
    _png(tmp_path / "cat" / "opaque.png", opaque)  # RGBA, alpha everywhere 255: RGB
    assert torch.equal(load_image_folder(tmp_path, IMAGES).images[0],
                       torch.from_numpy(opaque[..., :3]).permute(2, 0, 1))
    see_through = opaque.copy()
    see_through[0, 0, 3] = 0
    _png(tmp_path / "cat" / "hole.png", see_through)
    assert "transparent" in _refused(tmp_path) and "hole.png" in _refused(tmp_path)

    grey = ImageSchema(("cat", "dog"), (4, 6), 1, (0.5,), (0.5,))
    root = tmp_path / "grey"
    pixels = np.arange(24, dtype=np.uint8).reshape(4, 6)
    (root / "dog").mkdir(parents=True)
    Image.fromarray(pixels).convert("P").save(root / "dog" / "p.png")
    assert Image.open(root / "dog" / "p.png").mode == "P"
    split = load_image_folder(root, grey)
    assert split.images.shape == (1, 1, 4, 6) and torch.equal(split.images[0, 0], torch.from_numpy(pixels))


def test_unknown_class_folders_unreadable_files_and_empty_trees_are_refused(tmp_path: Path) -> None:
    _png(tmp_path / "wolf" / "a.png", _rgb(0))
    assert "'wolf'" in _refused(tmp_path) and "not classes of the task" in _refused(tmp_path)
    (tmp_path / "wolf" / "a.png").unlink()
    (tmp_path / "wolf").rmdir()
    (tmp_path / "cat").mkdir()
    assert "no images" in _refused(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    message = _refused(tmp_path)
    assert "broken.png" in message and "unreadable" in message


# --- inputs and the holdout ---


def test_to_float_keeps_the_benchmark_inputs_bit_identical() -> None:
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    old = (images.unsqueeze(1).float() / 255.0 - 0.5) / 0.5
    assert torch.equal(to_float(images), old)
    assert torch.equal(inputs(Split(images, torch.zeros(64, dtype=torch.int64)), torch.arange(64)), old)
    with pytest.raises(DataMismatch):
        to_float(torch.zeros(2, 3, dtype=torch.int64))


def test_holdout_is_stratified_deterministic_and_keeps_every_class_training() -> None:
    labels = torch.tensor([0] * 50 + [1] * 9 + [2] * 1)
    split = Split(torch.arange(60, dtype=torch.float32).view(-1, 1), labels)
    train, held = holdout_split(split, 0.2, seed=7)
    assert len(train) + len(held) == 60 and len(held) == 12
    assert torch.bincount(held.labels, minlength=3).tolist() == [10, 2, 0], "per class, the last 2 kept"
    both = torch.cat([train.images.flatten(), held.images.flatten()]).sort().values
    assert torch.equal(both, split.images.flatten()), "disjoint and complete"
    again, held_again = holdout_split(split, 0.2, seed=7)
    assert torch.equal(held_again.images, held.images)
    assert not torch.equal(holdout_split(split, 0.2, seed=8)[1].images, held.images), "the seed decides which"
    assert len(holdout_split(split, 0.0, seed=7)[1]) == 0
    singles = Split(torch.zeros(53, 1), torch.tensor([0] * 50 + [1, 2, 3]))
    assert torch.bincount(holdout_split(singles, 0.5, seed=0)[1].labels, minlength=4).tolist() == [26, 0, 0, 0], \
        "a class's only row stays in training even when its remainder is the largest"
    with pytest.raises(PartitionError):
        holdout_split(split, 0.95, seed=7)


# --- the node config and `swarmnode data check` ---


def test_config_reads_and_writes_the_local_data_keys(tmp_path: Path) -> None:
    raw = {"node": {"data_dir": "n", "genesis": "g.toml", "key_file": "k"},
           "learning": {"data": "mine/rows.csv", "holdout_fraction": 0.3}}
    cfg = config_from_dict(raw, tmp_path)
    assert cfg.local_data == tmp_path / "mine" / "rows.csv" and cfg.holdout_fraction == 0.3
    assert config_from_dict(config_to_dict(cfg), tmp_path) == cfg
    assert config_from_dict({**raw, "learning": {}}, tmp_path).holdout_fraction == 0.2
    with pytest.raises(NodeConfigError, match="learning.holdout_fraction"):
        config_from_dict({**raw, "learning": {"holdout_fraction": 0.95}}, tmp_path)


def _genesis(tmp_path: Path, dataset: str, data_table: str) -> Path:
    text = MINIMAL_GENESIS.read_text().replace('dataset = "fashion-mnist"', f'dataset = "{dataset}"')
    path = tmp_path / f"{dataset}.toml"
    path.write_text(text + "\n[task.data]\n" + data_table)
    return path


TABULAR_TOML = """label = "diagnosis"
classes = ["benign", "malignant"]
features = [ { name = "radius", type = "float", mean = 14.0, std = 3.5 },
             { name = "age", type = "int", mean = 50.0, std = 10.0 } ]
"""


def _init(tmp_path: Path, genesis: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", "--genesis", str(genesis), "--data-dir", str(tmp_path / "node"), "--rpc-port", "0",
                 "--local-data", str(data), "--force"]) == 0
    capsys.readouterr()
    return str(tmp_path / "node" / "config.toml")


def test_data_check_reports_a_tabular_node_and_fails_on_bad_rows(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = _write(tmp_path, "id,radius,age,diagnosis\n1,14.0,50,benign\n2,17.5,40,malignant\n3,10.5,71,benign\n")
    config = _init(tmp_path, _genesis(tmp_path, "tabular", TABULAR_TOML), rows, capsys)
    assert load_config(config).local_data == rows

    assert main(["data", "check", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "benign" in out and "rows       3" in out and "checks     passed" in out and "'id'" in out

    assert main(["data", "check", "--config", config, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["per_class"] == {"benign": 2, "malignant": 1}
    assert report["holdout"] == {"fraction": 0.2, "train": 2, "holdout": 1}

    rows.write_text("radius,age,diagnosis\n14,50,benign\n14,50.5,benign\n")
    assert main(["data", "check", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err.startswith("swarmnode: data check failed:") and "row 2" in err and "'age'" in err
    assert "Traceback" not in err


def test_data_check_on_an_image_folder_a_bad_schema_and_the_benchmark(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _png(tmp_path / "pics" / "cat" / "a.png", _rgb(0))
    table = "classes = [\"cat\", \"dog\", \"fox\"]\nimage_size = [4, 6]\nchannels = 3\n"
    config = _init(tmp_path, _genesis(tmp_path, "image-folder", table + "mean = [0.5, 0.5, 0.5]\n"
                                                                        "std = [0.5, 0.5, 0.5]\n"),
                   tmp_path / "pics", capsys)
    assert main(["data", "check", "--config", config, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["per_class"] == {"cat": 1, "dog": 0, "fox": 0} and report["input_shape"] == [3, 4, 6]
    assert any("'dog', 'fox'" in w for w in report["warnings"])

    config = _init(tmp_path, _genesis(tmp_path, "image-folder", table + "mean = [0.5]\nstd = [0.5]\n"),
                   tmp_path / "pics", capsys)
    assert main(["data", "check", "--config", config]) == 1
    assert "task.data.mean: 1 values for 3 channels" in capsys.readouterr().err

    assert main(["init", "--genesis", str(MINIMAL_GENESIS), "--data-dir", str(tmp_path / "bench")]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--config", str(tmp_path / "bench" / "config.toml")]) == 0
    assert "participant index" in capsys.readouterr().out
    assert main(["data", "check", "--config", str(tmp_path / "missing.toml")]) == 2
