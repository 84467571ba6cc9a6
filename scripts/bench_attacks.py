#!/usr/bin/env python3
"""Attack table: global test accuracy under Byzantine participants, per aggregation rule, in process.

Rows are attacks (swarmnode/adversary/attacks.py), columns aggregation rules, one table per number of
attackers f out of the clients; the first row is each rule's clean run. Every run is the in-process
Swarm (swarmnode/experiment.py): the same training, codec, validation and aggregation code as the daemon,
and a model of the protocol's checks: a hash already committed in the round is refused (the contract),
a commit whose blob is never served or does not verify against its hash never enters a block (data
availability), and included blobs are decoded and validated as the daemon does (malformed, wrong shape,
absurd norm: excluded with a reason). Attackers are the last f clients and commit after the honest ones.

    python scripts/bench_attacks.py --out bench-results/attacks.json            # the configuration below
    python scripts/bench_attacks.py --model small-cnn --local-steps 50          # the seed experiment's model
    python scripts/bench_attacks.py --attacks alie,ipm --rules robust,median --f 2 --rounds 10

Defaults: Fashion-MNIST, 10 clients, dominant-class partition p = 0.9 (the seed's), the MLP (199,210
parameters) with 20 local SGD steps of batch 32 at lr 0.1, 30 rounds, test accuracy on the full 10,000-image
test set after the last round only. Why not the seed experiment's configuration: its small CNN costs
~0.55-0.9 s per client-round on one thread here (~14 s per round), so the 258 runs x 30 rounds of the
default table would take about 15 hours on two workers. The MLP costs ~35 s of CPU per 30-round run with 50
local steps and ~18 s with 20 (measured on this 2-core machine beside other jobs), which brings the table
to about 45 minutes. The flags run the full configuration elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_ATTACKS = ["sign-flip", "scaling", "gaussian", "alie", "ipm", "min-max", "label-flip", "nan", "wrong-shape",
                   "inflated-samples", "replay-old", "replay-peer", "withhold", "equivocate"]
DEFAULT_RULES = ["fedavgm", "median", "trimmed-mean", "multi-krum", "centered-clipping", "robust"]
# Each rule as a genesis would ship it: parameters fixed for the worst case in the table (f = 3 of 10), not
# tuned per row. fedavgm is the seed experiment's rule.
RULE_PARAMS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.9},
    "median": {},
    "trimmed-mean": {"beta": 0.3},
    "krum": {"f": 3},
    "multi-krum": {"f": 3},
    "norm-bounded": {},
    "centered-clipping": {},
    "robust": {},
}

_DATASET: Any = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", choices=["mlp", "small-cnn", "federated-net"])
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--samples-per-client", type=int, default=0, help="0 = each client's whole share")
    p.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS), help="comma-separated attack names")
    p.add_argument("--rules", default=",".join(DEFAULT_RULES), help="comma-separated rule names")
    p.add_argument("--f", default="1,2,3", help="comma-separated attacker counts")
    p.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-samples", type=int, default=(1 << 64) - 1,
                   help="the contract's bound on a reported numSamples (genesis max_samples; default 2**64 - 1)")
    p.add_argument("--rule-param", action="append", default=[], metavar="RULE:KEY=VALUE",
                   help="override a rule parameter, e.g. robust:gate=none, trimmed-mean:beta=0.2 (repeatable)")
    p.add_argument("--data-dir", help="directory holding the dataset's IDX files (searched first)")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "attacks.json")
    return p.parse_args(argv)


def rule_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """RULE_PARAMS with the --rule-param overrides applied."""
    out = {r: dict(p) for r, p in RULE_PARAMS.items()}
    for item in args.rule_param:
        rule, _, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not (rule and key and eq):
            raise SystemExit(f"error: --rule-param wants RULE:KEY=VALUE, got {item!r}")
        out.setdefault(rule, {})[key] = _value(value)
    return out


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _task(args: argparse.Namespace, rule: str) -> Any:
    from swarmnode.learning.tasks import Task

    return dataclasses.replace(Task(), model=args.model, local_steps=args.local_steps, num_clients=args.clients,
                               samples_per_client=args.samples_per_client, rule=rule,
                               rule_params=rule_params(args).get(rule, {}), seed=args.seed)


def _init_worker(data_dir: str | None) -> None:
    import torch

    from swarmnode.learning.data import load_dataset

    global _DATASET
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _DATASET = load_dataset("fashion-mnist", data_dir)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run: `rounds` rounds of one rule with `f` attackers playing `attack` (None: clean)."""
    from swarmnode.adversary.attacks import Adversary, make_attack
    from swarmnode.experiment import Swarm

    args = argparse.Namespace(**job["args"])
    task = _task(args, job["rule"])
    adversary = None
    if job["attack"] is not None:
        attackers = frozenset(range(args.clients - job["f"], args.clients))
        adversary = Adversary(make_attack(job["attack"]), attackers, args.seed)
    swarm = Swarm(task, _DATASET, adversary, args.max_samples)
    t0 = time.perf_counter()
    excluded: dict[str, int] = {}
    used = []
    rep = None
    for r in range(args.rounds):
        rep = swarm.run_round(score_clients=False, score_test=r == args.rounds - 1)
        used.append(rep.used)
        for _, why in rep.excluded:
            excluded[why] = excluded.get(why, 0) + 1
    assert rep is not None
    return {"rule": job["rule"], "attack": job["attack"] or "clean", "f": job["f"],
            "accuracy": rep.global_test.accuracy, "test_loss": rep.global_test.loss,
            "final_model_hash": "0x" + rep.model_hash.hex(), "mean_used": sum(used) / len(used),
            "excluded": excluded, "seconds": time.perf_counter() - t0}


def jobs_for(args: argparse.Namespace, rules: list[str], attacks: list[str], fs: list[int]) -> list[dict[str, Any]]:
    base = {k: v for k, v in vars(args).items() if k not in ("out",)}
    jobs = [{"args": base, "rule": r, "attack": None, "f": 0} for r in rules]
    jobs += [{"args": base, "rule": r, "attack": a, "f": f} for f in fs for a in attacks for r in rules]
    return jobs


def table(results: list[dict[str, Any]], rules: list[str], attacks: list[str], f: int) -> str:
    acc = {(r["rule"], r["attack"], r["f"]): r["accuracy"] for r in results}
    head = f"| f = {f} | " + " | ".join(rules) + " |"
    lines = [head, "| --- |" + " ---: |" * len(rules)]
    lines.append("| clean (f = 0) | " + " | ".join(_cell(acc.get((r, "clean", 0))) for r in rules) + " |")
    for a in attacks:
        cells = []
        for r in rules:
            got, clean = acc.get((r, a, f)), acc.get((r, "clean", 0))
            cells.append(_cell(got) + ("" if got is None or clean is None else f" ({100 * (got - clean):+.1f})"))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def absent_row(results: list[dict[str, Any]], rules: list[str], attacks: list[str], f: int) -> str:
    """Per rule, the worst attack at this f measured against the attackers-absent run (withhold)."""
    acc = {(r["rule"], r["attack"], r["f"]): r["accuracy"] for r in results}
    cells = []
    for r in rules:
        base = acc.get((r, "withhold", f))
        worst = min(((acc[(r, a, f)] - base, a) for a in attacks if (r, a, f) in acc), default=None) \
            if base is not None else None
        cells.append("-" if worst is None else f"{r} {100 * worst[0]:+.1f} ({worst[1]})")
    return f"f = {f}: worst " + "; ".join(cells)


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def target_check(results: list[dict[str, Any]], rule: str, max_f: int = 2, points: float = 2.0) -> list[str]:
    """Rows where `rule` falls more than `points` below its clean run at f <= max_f."""
    clean = next((r["accuracy"] for r in results if r["rule"] == rule and r["attack"] == "clean"), None)
    if clean is None:
        return []
    return [f"{r['attack']} f={r['f']}: {100 * r['accuracy']:.1f} ({100 * (r['accuracy'] - clean):+.1f})"
            for r in sorted(results, key=lambda r: (r["f"], r["attack"]))
            if r["rule"] == rule and 0 < r["f"] <= max_f and 100 * (clean - r["accuracy"]) > points]


def header(args: argparse.Namespace, rules: list[str], attacks: list[str]) -> str:
    from swarmnode.adversary.attacks import make_attack

    params = "; ".join(f"{r} {rule_params(args).get(r, {})}" for r in rules)
    attack_params = "; ".join(f"{a} {make_attack(a).params}" for a in attacks if make_attack(a).params)
    return (f"configuration: fashion-mnist, {args.clients} clients, dominant-class partition p=0.9, model "
            f"{args.model}, {args.local_steps} local SGD steps (batch 32, lr 0.1), {args.rounds} rounds, "
            f"samples per client {args.samples_per_client or 'all'}, seed {args.seed}, contract max_samples "
            f"{args.max_samples}; test accuracy (%) on the "
            f"full test set after the last round; in brackets: points against the rule's clean run.\n"
            f"attackers: the last f clients, committing after the honest ones; attack parameters: {attack_params}"
            f" (alie: z from the paper's formula for n, f); rule parameters (empty: the rule's defaults): {params}"
            f"\nmodelled: the contract refuses a hash already committed in the round (replay-peer); a commit whose blob "
            f"is never served (withhold) or does not match its hash (equivocate) never enters a block (data "
            f"availability), so those rows are the run with the attackers absent; blobs are decoded and validated "
            f"as the daemon does (nan: malformed, wrong-shape, absurd norm: excluded with the reason)")


def main(argv: list[str] | None = None) -> int:
    import multiprocessing as mp

    from swarmnode.adversary.attacks import ATTACKS
    from swarmnode.aggregation.rules import RULES

    args = parse_args(argv)
    rules = [r for r in args.rules.split(",") if r]
    attacks = [a for a in args.attacks.split(",") if a]
    fs = [int(x) for x in args.f.split(",") if x]
    bad = [r for r in rules if r not in RULES] + [a for a in attacks if a not in ATTACKS]
    if bad or any(not 0 < f < args.clients for f in fs):
        print(f"error: unknown rules/attacks {bad} or f outside 1..{args.clients - 1}", file=sys.stderr)
        return 2
    jobs = jobs_for(args, rules, attacks, fs)
    from swarmnode import experiment  # noqa: F401  (loaded before the workers fork)

    print(header(args, rules, attacks), flush=True)
    print(f"{len(jobs)} runs on {args.workers} workers", flush=True)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    ctx = mp.get_context("fork")
    with ctx.Pool(args.workers, initializer=_init_worker, initargs=(args.data_dir,)) as pool:
        for res in pool.imap_unordered(run_one, jobs):
            results.append(res)
            print(f"[{len(results)}/{len(jobs)} {time.perf_counter() - t0:6.0f}s] {res['rule']:17s} "
                  f"{res['attack']:16s} f={res['f']} acc {100 * res['accuracy']:.2f}% used {res['mean_used']:.1f} "
                  f"excluded {res['excluded'] or '-'} ({res['seconds']:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    tables = {f: table(results, rules, attacks, f) for f in fs}
    print()
    print(header(args, rules, attacks))
    for f in fs:
        print()
        print(tables[f])
    misses = {r: target_check(results, r) for r in rules}
    print()
    for r in rules:
        print(f"{r}: more than 2 points below its clean run at f <= 2: " + (", ".join(misses[r]) or "none"))
    if "withhold" in attacks:
        print("\npoints against the run with the attackers absent (the withhold row: their data is lost too):")
        for f in fs:
            print(absent_row(results, rules, attacks, f))
    print(f"wall clock {wall:.0f} s for {len(jobs)} runs on {args.workers} workers")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "header": header(args, rules, attacks), "rule_params": {r: rule_params(args).get(r, {}) for r in rules},
           "attackers": "the last f clients", "results": sorted(results, key=lambda r: (r["f"], r["attack"], r["rule"])),
           "tables_markdown": {str(f): t for f, t in tables.items()}, "over_2_points_at_f_le_2": misses,
           "wall_seconds": wall, "written": time.time()}
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
