"""The "hospitals" example: N organisations, each with only its own CSV of breast-cancer cases.

scikit-learn's bundled Wisconsin breast-cancer set (569 cases, 30 measurements, malignant or benign) is
split into a test set no hospital sees (20%, stratified) and N hospital files of different sizes and
label balance (a Dirichlet draw per class). The task file pins the 30 feature columns, the label column,
the two classes and a standardisation whose constants are the public set's statistics: every hospital
scales its inputs identically, whatever its own data looks like.

    python scripts/example_hospitals.py prepare --nodes 4 --out /tmp/hospitals
    python scripts/example_hospitals.py run --dir /tmp/hospitals --rounds 30     # N daemons + the table

`run` starts one daemon per hospital through the CLI (genesis new --task-file, init --local-data, run),
each holding only its own CSV, waits for `--rounds` final rounds, exports the final model with
`swarmnode model export` and scores it on the test set; then it trains each hospital alone (the same
model, optimizer and number of steps on the same rows the hospital trains on in the swarm) and a
centralized model on the union of those rows, and prints the three side by side (`--json` for scripts).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from examples_common import compare, table  # noqa: E402

LABEL = "diagnosis"
CLASSES = ("benign", "malignant")
TEST_FRACTION = 0.2


def _dataset() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    # sklearn codes malignant 0 and benign 1; here class 0 is benign, 1 malignant (the label strings decide)
    names = [str(n) for n in d.feature_names]
    labels = np.array(["malignant" if t == 0 else "benign" for t in d.target])
    return np.asarray(d.data, dtype=np.float64), labels, names


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, LABEL])
        for row, label in zip(x, y, strict=True):
            w.writerow([repr(float(v)) for v in row] + [str(label)])


def split_hospitals(labels: np.ndarray, nodes: int, seed: int, alpha: float = 0.3,
                    min_rows: int = 12) -> tuple[np.ndarray, list[np.ndarray]]:
    """(test indices, one index array per hospital): unequal sizes and label balance, every hospital
    with at least `min_rows` cases."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    rest: dict[str, np.ndarray] = {}
    for c in CLASSES:
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(len(idx) * TEST_FRACTION)
        test.extend(idx[:k].tolist())
        rest[c] = idx[k:]
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(nodes)]
        for c in CLASSES:
            shares = rng.dirichlet(np.full(nodes, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rest[c])).round().astype(int)
            for i, chunk in enumerate(np.split(rest[c], cuts)):
                parts[i].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_rows:
            return np.sort(np.array(test)), [np.sort(np.array(p)) for p in parts]
    raise SystemExit(f"could not split {len(labels)} cases over {nodes} hospitals with {min_rows} each")


def task_table(names: list[str], x: np.ndarray, nodes: int, seed: int) -> dict[str, Any]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    return {
        "dataset": "tabular", "model": "mlp", "model_args": {"hidden": 32}, "num_clients": nodes,
        "rule": "fedavgm", "rule_params": {"server_lr": 1.0, "momentum": 0.5},
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 16, "local_steps": 10, "seed": seed,
        "data": {"label": LABEL, "classes": list(CLASSES),
                 "features": [{"name": n, "type": "float", "mean": round(float(m), 6), "std": round(float(s), 6)}
                              for n, m, s in zip(names, mean, std, strict=True)]},
    }


def prepare(out: Path, nodes: int, seed: int) -> dict[str, Any]:
    import tomli_w

    x, y, names = _dataset()
    test, parts = split_hospitals(y, nodes, seed)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "test.csv", x[test], y[test], names)
    summary = []
    for i, idx in enumerate(parts):
        _write_csv(out / f"hospital-{i}.csv", x[idx], y[idx], names)
        summary.append({"file": f"hospital-{i}.csv", "rows": len(idx),
                        "malignant": int((y[idx] == "malignant").sum())})
    (out / "task.toml").write_text(tomli_w.dumps({"task": task_table(names, x, nodes, seed)}))
    return {"out": str(out), "test_rows": len(test), "hospitals": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the hospital CSVs, the test set and the task file")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    r = sub.add_parser("run", help="run the swarm (one daemon per hospital) and the baselines; print the table")
    r.add_argument("--dir", type=Path, required=True, help="what `prepare` wrote")
    r.add_argument("--rounds", type=int, default=30)
    r.add_argument("--holdout-fraction", type=float, default=0.2)
    r.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        print(json.dumps(prepare(args.out, args.nodes, args.seed), indent=2))
        return 0
    files = sorted(args.dir.glob("hospital-*.csv"), key=lambda p: int(p.stem.split("-")[1]))
    result = compare(args.dir, files, args.dir / "test.csv", args.rounds, args.holdout_fraction)
    print(json.dumps(result, indent=2) if args.json else table(result, "hospital", "CSV"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
