"""What the local-data examples share: run one daemon per organisation through the CLI, each holding only
its own data, and compare the swarm's final model with each organisation training alone and with a
centralized model on the union of their data, all scored on a test set no organisation holds.

- the swarm: `genesis new --task-file`, `init --local-data`, `run`; after R final rounds the model is
  exported with `swarmnode model export` and scored;
- alone: the same model, optimizer and seed, R x local_steps steps on exactly the rows the daemon trains
  on (its data minus its held-out rows, split as the node splits them);
- centralized: the union of those rows, for as many steps as all organisations together.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any


def load_task(directory: Path) -> Any:
    from swarmnode.learning.tasks import Task

    return Task.from_dict(tomllib.loads((directory / "task.toml").read_text())["task"])


def load_data(task: Any, path: Path) -> Any:
    from swarmnode.learning.localdata import load_local

    return load_local(task.dataset, path, task.schema()).split


def training_rows(task: Any, path: Path, holdout_fraction: float) -> Any:
    """The rows a daemon trains on: its data minus its held-out rows, as the node splits them."""
    from swarmnode.learning.localdata import holdout_split

    return holdout_split(load_data(task, path), holdout_fraction, task.seed)[0]


def train_alone(task: Any, data: Any, steps: int) -> dict[str, Any]:
    """The model trained from the genesis weights for `steps` steps on `data` alone."""
    from swarmnode.learning.tasks import initial_params
    from swarmnode.learning.train import TrainConfig, train_local

    cfg = task.train_config()
    params = initial_params(task)
    alone = TrainConfig(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, steps)
    result = train_local(task.model_spec(), params, data, alone, task.seed)
    return {n: params[n] + result.delta[n] for n in params}


def accuracy(task: Any, params: dict[str, Any], test: Any) -> float:
    from swarmnode.learning.evaluate import evaluate

    return evaluate(task.model_spec(), params, test).accuracy


def baselines(directory: Path, files: list[Path], test_path: Path, rounds: int,
              holdout_fraction: float) -> dict[str, Any]:
    import dataclasses

    import torch

    task = load_task(directory)
    test = load_data(task, test_path)
    steps = rounds * task.local_steps
    rows = [training_rows(task, f, holdout_fraction) for f in files]
    alone = [accuracy(task, train_alone(task, r, steps), test) for r in rows]
    union = dataclasses.replace(rows[0], images=torch.cat([r.images for r in rows]),
                                labels=torch.cat([r.labels for r in rows]))
    central = accuracy(task, train_alone(task, union, steps * len(rows)), test)
    return {"alone": alone, "centralized": central, "rows": [len(r) for r in rows], "steps": steps,
            "test_rows": len(test)}


def run_swarm(directory: Path, files: list[Path], rounds: int, holdout_fraction: float,
              commit_window_s: int = 30) -> dict[str, Any]:
    """One daemon per file (each a validator holding only its own data) until `rounds` rounds are final."""
    from swarmnode.node.localnet import LocalSwarm, make_genesis, run_cli, wait_for

    base = directory / "swarm"
    base.mkdir(exist_ok=True)
    genesis, keys = make_genesis(base, len(files), directory / "task.toml", commit_window_s=commit_window_s,
                                 extra_args=("--force",))
    t0 = time.monotonic()
    with LocalSwarm(base, genesis, keys, extra_env={"OMP_NUM_THREADS": "1"}) as swarm:
        for i, f in enumerate(files):
            swarm.init_node(i, init_args=("--local-data", str(f), "--holdout-fraction", str(holdout_fraction)))
        swarm.start_all(list(range(len(files))))

        def final() -> dict[int, str] | None:
            got = swarm.final_hashes(0)
            return got if got and max(got) >= rounds - 1 else None

        hashes = wait_for(final, 60.0 * rounds, f"{rounds} final rounds")
        seconds = time.monotonic() - t0
        out = base / "final.safetensors"
        run_cli("model", "export", "--config", str(swarm.nodes[0].config), "--round", str(rounds - 1),
                "--out", str(out))
        agree = all(wait_for(lambda i=i: (swarm.final_hashes(i) or {}).get(rounds - 1), 120.0,
                             f"node{i} round {rounds - 1}") == hashes[rounds - 1] for i in range(len(files)))
        commits = swarm.rpc(0, "swarm_getRound", rounds - 1)["commits"]
        rss = [peak_rss_mb(swarm.nodes[i].proc.pid) for i in range(len(files))]
    held_out = [int(c["heldOutAccuracy"]) / 1e6 for c in commits if int(c.get("heldOutCount", 0))]
    return {"model": str(out), "seconds": round(seconds, 1), "agree": agree, "model_hash": hashes[rounds - 1],
            "held_out_accuracy": held_out, "peak_rss_mb": rss}


def peak_rss_mb(pid: int) -> float:
    """A running process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def score_export(directory: Path, model_file: Path, test_path: Path) -> float:
    from safetensors.torch import load_file

    task = load_task(directory)
    params = {n: t for n, t in load_file(str(model_file)).items() if not n.startswith("~server/")}  # not momentum
    return accuracy(task, params, load_data(task, test_path))


def compare(directory: Path, files: list[Path], test_path: Path, rounds: int,
            holdout_fraction: float) -> dict[str, Any]:
    swarm = run_swarm(directory, files, rounds, holdout_fraction)
    base = baselines(directory, files, test_path, rounds, holdout_fraction)
    return {"rounds": rounds, "swarm": score_export(directory, Path(swarm["model"]), test_path), **base,
            "run": swarm}


def table(result: dict[str, Any], who: str, what: str) -> str:
    lines = [f"test accuracy after {result['rounds']} rounds ({result['test_rows']} test rows no {who} holds; "
             f"{result['steps']} local steps per {who}):",
             f"  swarm ({len(result['alone'])} daemons, one {what} each)  {100 * result['swarm']:5.1f}%"]
    lines += [f"  {who} {i} alone ({n} training rows)  {100 * a:5.1f}%"
              for i, (a, n) in enumerate(zip(result["alone"], result["rows"], strict=True))]
    lines.append(f"  centralized (union of those rows)  {100 * result['centralized']:5.1f}%")
    run = result["run"]
    lines.append(f"  swarm wall clock {run['seconds']} s; every node holds the same final model: {run['agree']}")
    if run["held_out_accuracy"]:
        lines.append("  last round's base model on each committer's own held-out rows: "
                     + ", ".join(f"{100 * a:.1f}%" for a in run["held_out_accuracy"]))
    return "\n".join(lines)
