"""The "image folders" example: each node holds one ImageFolder tree of its own (root/<class>/<png>).

`prepare` exports Fashion-MNIST (from wherever `make setup` put it) into one tree per node, non-IID: each
node's images are mostly of one class (the seed experiment's dominant-class split, p = --dominance), plus
a test tree no node holds. The task file pins the class list (the folder names), the image size (28x28),
one channel and the normalisation. The daemons then train through the image-folder loader, never the
benchmark loader.

    python scripts/example_image_folders.py prepare --nodes 4 --per-node 1000 --out /tmp/folders
    python scripts/example_image_folders.py run --dir /tmp/folders --rounds 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from examples_common import compare, table  # noqa: E402

# Fashion-MNIST's classes as folder names (its own names hold "/" and spaces)
CLASSES = ("tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def _export(images: Any, labels: Any, indices: np.ndarray, root: Path) -> dict[str, int]:
    from PIL import Image

    counts: dict[str, int] = {}
    for c in CLASSES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for k in indices.tolist():
        name = CLASSES[int(labels[k])]
        Image.fromarray(images[k].numpy(), mode="L").save(root / name / f"{k:05d}.png")
        counts[name] = counts.get(name, 0) + 1
    return counts


def split_nodes(labels: np.ndarray, nodes: int, per_node: int, dominance: float, seed: int) -> list[np.ndarray]:
    """Node i: `dominance` of its images from class i mod 10, the rest uniformly from the other classes."""
    rng = np.random.default_rng(seed)
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(CLASSES))}
    parts = []
    for i in range(nodes):
        main = i % len(CLASSES)
        n_main = round(per_node * dominance)
        picks = [pools[main].pop() for _ in range(n_main)]
        others = [c for c in range(len(CLASSES)) if c != main]
        picks += [pools[int(rng.choice(others))].pop() for _ in range(per_node - n_main)]
        parts.append(np.sort(np.array(picks)))
    return parts


def task_table(nodes: int, seed: int) -> dict[str, Any]:
    return {
        "dataset": "image-folder", "model": "small-cnn", "num_clients": nodes, "rule": "robust",
        "rule_params": {"server_lr": 1.0, "momentum": 0.9}, "optimizer": "sgd", "lr": 0.1, "batch_size": 32,
        "local_steps": 20, "seed": seed,
        "data": {"classes": list(CLASSES), "image_size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.5]},
    }


def prepare(out: Path, nodes: int, per_node: int, test_images: int, dominance: float, seed: int) -> dict[str, Any]:
    import tomli_w

    from swarmnode.learning.data import load_dataset

    ds = load_dataset("fashion-mnist")
    parts = split_nodes(ds.train.labels.numpy(), nodes, per_node, dominance, seed)
    out.mkdir(parents=True, exist_ok=True)
    summary = [{"folder": f"node-{i}", "images": _export(ds.train.images, ds.train.labels, idx, out / f"node-{i}")}
               for i, idx in enumerate(parts)]
    test = np.random.default_rng(seed + 1).permutation(len(ds.test))[:test_images]
    _export(ds.test.images, ds.test.labels, np.sort(test), out / "test")
    (out / "task.toml").write_text(tomli_w.dumps({"task": task_table(nodes, seed)}))
    return {"out": str(out), "test_images": int(len(test)), "nodes": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="export one ImageFolder tree per node, a test tree and the task file")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--per-node", type=int, default=1000, help="images per node (default 1000)")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--dominance", type=float, default=0.8, help="share of a node's images from its main class")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=5)
    r = sub.add_parser("run", help="run the swarm (one daemon per tree) and the baselines; print the table")
    r.add_argument("--dir", type=Path, required=True, help="what `prepare` wrote")
    r.add_argument("--rounds", type=int, default=20)
    r.add_argument("--holdout-fraction", type=float, default=0.2)
    r.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.out, args.nodes, args.per_node, args.test_images, args.dominance, args.seed),
                         indent=2))
        return 0
    trees = sorted(args.dir.glob("node-*"), key=lambda p: int(p.name.split("-")[1]))
    result = compare(args.dir, trees, args.dir / "test", args.rounds, args.holdout_fraction)
    print(json.dumps(result, indent=2) if args.json else table(result, "node", "image folder"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
