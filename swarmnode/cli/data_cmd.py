"""`swarmnode data check`: what a node would train on, checked against its genesis [task], without starting it.

Exit status 0 when the data passes every check, 1 with the first failure on stderr when it does not, and 2
when the config or genesis cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from swarmnode.cli.errors import CliError
from swarmnode.cli.rpc_client import print_json

BENCHMARKS = ("fashion-mnist", "mnist")
CHECKS = {
    "tabular": ("the header names every feature and the label", "every feature value parses as its type",
                "no NaN or infinite values", "every label is a class of the task", "at least one row"),
    "image-folder": ("every class folder is a class of the task", "every image is readable",
                     "every image has the task's size and channels", "at least one image"),
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("data", help="check a node's training data", description=__doc__)
    sub = p.add_subparsers(title="data commands", metavar="ACTION")
    c = sub.add_parser("check", help="load the node's data and check it against the genesis task",
                       description=__doc__)
    c.add_argument("--config", type=Path, required=True, metavar="FILE", help="config.toml from `swarmnode init`")
    c.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    c.set_defaults(func=cmd_check)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _config_and_task(path: Path) -> tuple[Any, dict[str, Any]]:
    from consensus.errors import ConsensusError
    from consensus.genesis import load_genesis
    from swarmnode.node.config import NodeConfigError, load_config

    try:
        cfg = load_config(path)
        genesis = load_genesis(cfg.genesis)
    except (NodeConfigError, ConsensusError) as exc:
        raise CliError(str(exc)) from None
    return cfg, dict(genesis.task)


def benchmark_report(cfg: Any, task: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A benchmark task: each node trains on its participant index's slice; say where the dataset is."""
    from swarmnode.learning.data import locate_dataset

    location = locate_dataset(dataset, cfg.dataset_dir)
    warnings = []
    if location is None:
        warnings.append(f"{dataset} is not on this machine; the node will try a torchvision download when it "
                        "starts (or run `make data`, or give `swarmnode init --dataset-dir DIR`)")
    if cfg.local_data is not None:
        warnings.append(f"[learning] data = {str(cfg.local_data)!r} is ignored: the task trains on {dataset}")
    return {"kind": "benchmark", "source": location,
            "slice": {"num_clients": task.get("num_clients"), "partition": task.get("partition"),
                      "samples_per_client": task.get("samples_per_client")},
            "warnings": warnings}


def local_report(cfg: Any, task: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A task on local data: load and check the node's data; raises the first failure (a LearningError)."""
    from swarmnode.learning.errors import DatasetNotFound
    from swarmnode.learning.localdata import holdout_split, load_local
    from swarmnode.learning.schema import schema_from_dict

    schema = schema_from_dict(dataset, task.get("data"))
    if cfg.local_data is None:
        raise DatasetNotFound(f"the task trains on each node's own {dataset} data, but the config has no "
                              "[learning] data = \"PATH\" (or give `swarmnode init --local-data PATH`)")
    local = load_local(dataset, cfg.local_data, schema)
    train, holdout = holdout_split(local.split, cfg.holdout_fraction, seed=int(task.get("seed", 0)))
    report = local.describe()
    report["classes"] = schema.num_classes
    report["holdout"] = {"fraction": cfg.holdout_fraction, "train": len(train), "holdout": len(holdout)}
    report["checks"] = list(CHECKS[dataset])
    return report


def cmd_check(args: argparse.Namespace) -> int:
    from swarmnode.learning.errors import LearningError, UnknownName
    from swarmnode.learning.schema import LOCAL_KINDS

    cfg, task = _config_and_task(args.config)
    dataset = str(task.get("dataset", "fashion-mnist"))  # the Task default
    report: dict[str, Any] = {"ok": True, "dataset": dataset, "config": str(args.config),
                              "data": str(cfg.local_data) if cfg.local_data is not None else None}
    try:
        if dataset in BENCHMARKS:
            report |= benchmark_report(cfg, task, dataset)
        elif dataset in LOCAL_KINDS:
            report |= local_report(cfg, task, dataset)
        else:
            raise UnknownName(f"task.dataset {dataset!r} unknown; known: {', '.join(BENCHMARKS + LOCAL_KINDS)}")
    except LearningError as exc:
        report |= {"ok": False, "error": str(exc)}
    if args.json:
        print_json(report)
    else:
        _print_human(report)
    if not report["ok"]:
        print(f"swarmnode: data check failed: {report['error']}", file=sys.stderr)
        return 1
    return 0


def _print_human(r: dict[str, Any]) -> None:
    print(f"config     {r['config']}")
    if r.get("kind") == "benchmark":
        s = r["slice"]
        print(f"dataset    {r['dataset']} (benchmark: the node trains on the slice of its participant index; "
              f"{s['num_clients']} clients, partition {s['partition']})")
        print(f"found      {r['source'] or 'not on this machine'}")
    else:
        print(f"dataset    {r['dataset']} (the node's own data, checked against the genesis [task.data])")
        print(f"data       {r['data'] or '-'}")
    if "per_class" in r:
        shape = r["input_shape"]
        inputs = f"{shape[0]} features" if len(shape) == 1 else "x".join(map(str, shape)) + " (C x H x W) images"
        print(f"input      {inputs} -> {r['classes']} classes")
        print(f"{r['unit']:<10} {r['total']}")
        width = max(len(name) for name in r["per_class"])
        for name, n in r["per_class"].items():
            print(f"  {name:<{width}}  {n}")
        h = r["holdout"]
        print(f"holdout    {h['fraction']:g} of the rows: {h['train']} to train on, {h['holdout']} held out")
        print(f"checks     passed: {'; '.join(r['checks'])}")
    if not r["ok"]:
        print("checks     FAILED (the first failure is on stderr)")
    for w in r.get("warnings", []):
        print(f"warning    {w}")
