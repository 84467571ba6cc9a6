"""A task on each node's own data: the [task] table's local-data keys, the pinned initial model, and a
daemon that refuses to start (through the real CLI) when its data or its model differ from the genesis."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import tomli_w

from swarmnode.learning.errors import LearningError
from swarmnode.learning.models import ModelMismatch, build_model, save_initial_weights
from swarmnode.learning.tasks import Task, checked_initial_params, genesis_model_hash
from swarmnode.node.localnet import run_cli

FEATURES = ["age", "pressure", "score"]


def tabular_task(**over: object) -> dict:
    table = {
        "dataset": "tabular", "model": "mlp", "model_args": {"hidden": 8}, "num_clients": 2, "local_steps": 2,
        "batch_size": 4, "lr": 0.05,
        "data": {"label": "outcome", "classes": ["no", "yes"],
                 "features": [{"name": n, "type": "float", "mean": 1.0, "std": 2.0} for n in FEATURES]},
    }
    table.update(over)
    return table


def write_csv(path: Path, columns: list[str], rows: int = 12) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for i in range(rows):
            w.writerow([*(str(i * k * 0.5) for k in range(len(columns) - 1)), "yes" if i % 3 else "no"])
    return path


def test_local_task_takes_its_shapes_from_the_schema() -> None:
    task = Task.from_dict(tabular_task())
    assert task.is_local() and task.num_classes == 2 and task.input_shape == (3,)
    spec = task.model_spec()
    assert spec.input_shape == (3,) and spec.num_classes == 2 and dict(spec.args) == {"hidden": 8}
    assert Task.from_dict(task.to_dict()) == task  # the genesis table round-trips


def test_benchmark_table_is_unchanged_by_the_new_keys() -> None:
    table = Task().to_dict()
    assert not {"data", "model_args", "initial_weights", "initial_weights_sha256"} & set(table)
    assert Task.from_dict(table).input_shape == (1, 28, 28)


@pytest.mark.parametrize(("over", "message"), [
    ({"data": {}}, "a [task.data] schema is needed"),
    ({"dataset": "fashion-mnist"}, "only for local data"),
    ({"dataset": "csv"}, "task.dataset 'csv' unknown"),
    ({"model": "entrypoint:no-colon-factory"}, "task.model"),
    ({"initial_weights": "w.safetensors"}, "go together"),
])
def test_bad_local_task_names_the_key(over: dict, message: str) -> None:
    with pytest.raises(LearningError, match=re.escape(message)):
        Task.from_dict(tabular_task(**over))


def test_an_unknown_architecture_fails_when_the_genesis_builds_it() -> None:
    task = Task.from_dict(tabular_task(model="torchvision:no_such_net", model_args={}))
    with pytest.raises(LearningError, match="no_such_net"):
        genesis_model_hash(task)


def test_initial_weights_file_is_pinned_by_hash_and_sets_the_genesis_model(tmp_path: Path) -> None:
    base = Task.from_dict(tabular_task())
    other = build_model(base.model_spec(), 99)  # weights the task's seed would not give
    sha = save_initial_weights(other, tmp_path / "w.safetensors")
    task = Task.from_dict(tabular_task(initial_weights="w.safetensors", initial_weights_sha256=sha))
    h = genesis_model_hash(task, tmp_path)
    assert h != genesis_model_hash(base)
    params = checked_initial_params(task, h, tmp_path)
    assert all((params[n] == t).all() for n, t in other.state_dict().items())
    with pytest.raises(ModelMismatch):
        checked_initial_params(base, h)
    (tmp_path / "w.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:-1] + b" ")
    with pytest.raises(LearningError, match="SHA-256|sha256|hash"):
        genesis_model_hash(task, tmp_path)


@pytest.fixture
def local_node(tmp_path: Path) -> tuple[Path, Path]:
    """A real genesis (genesis new --task-file) and node config (init --local-data) for one validator."""
    (tmp_path / "task.toml").write_text(tomli_w.dumps({"task": tabular_task()}))
    genesis, keys = tmp_path / "genesis.toml", tmp_path / "keys"
    run_cli("genesis", "new", "--validators", "1", "--task-file", str(tmp_path / "task.toml"), "--dev-keys",
            "--out", str(genesis), "--keys-dir", str(keys))
    data = write_csv(tmp_path / "mine.csv", [*FEATURES, "outcome"])
    run_cli("init", "--genesis", str(genesis), "--data-dir", str(tmp_path / "node"), "--key",
            str(keys / "node-0.key"), "--local-data", str(data), "--rpc-port", "0",
            "--listen", "/ip4/127.0.0.1/tcp/0")
    return tmp_path / "node" / "config.toml", genesis


def test_data_check_reports_what_the_node_would_train_on(local_node: tuple[Path, Path]) -> None:
    config, _ = local_node
    report = json.loads(run_cli("data", "check", "--config", str(config), "--json").stdout)
    assert report["ok"] and report["total"] == 12 and report["per_class"] == {"no": 4, "yes": 8}
    assert report["holdout"] == {"fraction": 0.2, "holdout": 2, "train": 10} and report["input_shape"] == [3]


def test_node_refuses_data_that_does_not_match_the_genesis(local_node: tuple[Path, Path]) -> None:
    config, _ = local_node
    write_csv(config.parent.parent / "mine.csv", ["age", "score", "outcome"])  # "pressure" is missing
    proc = run_cli("run", "--config", str(config), check=False)
    assert proc.returncode != 0
    assert "pressure" in proc.stderr and "does not match the genesis" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_node_refuses_a_genesis_whose_model_hash_it_cannot_build(local_node: tuple[Path, Path]) -> None:
    config, _ = local_node
    genesis = config.parent / "genesis.toml"  # the node's own copy (`init` copies the genesis)
    text = genesis.read_text()
    genesis.write_text(re.sub(r'genesis_model_hash = "0x[0-9a-f]+"', 'genesis_model_hash = "0x' + "ab" * 32 + '"',
                              text))
    proc = run_cli("run", "--config", str(config), check=False)
    assert proc.returncode != 0
    assert "the genesis model" in proc.stderr and "0xabababab" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
