#!/usr/bin/env python3
"""Accuracy under differential privacy: the seed experiment in process, without DP and at several budgets.

Runs a genesis's task (default genesis/seed-10.toml: 10 clients, Fashion-MNIST, dominant class p = 0.9) in the
in-process simulation (swarmnode.experiment.Swarm), which applies DP exactly as a daemon does
(swarmnode.privacy.dp): first without DP, then per example (DP-SGD) and per participant (DP-FedAvg) at each
--runs budget, delta --delta. Each DP run's noise is calibrated so that its own rounds spend its epsilon.
Prints a table (mode, epsilon, z, final test accuracy, epsilon spent, wall clock) and writes JSON (--out).

It first times one round of each mode (CPU time of this process, so that other work on the machine does
not count) and estimates the whole; when that exceeds --budget-minutes of CPU the DP runs are cut to fewer rounds (the baseline keeps --baseline-rounds and is also scored at the cut),
unless --rounds fixes them. One torch thread, as reproduce_seed and a node's default.

    python scripts/bench_privacy.py --out runs/bench_privacy.json
    python scripts/bench_privacy.py --rounds 10 --runs off,example:3,participant:3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = "off,example:1,example:3,example:8,participant:3,participant:8"
REFERENCE_HORIZON = 60  # z is also reported for this many rounds, the seed's length


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--genesis", type=Path, default=ROOT / "genesis" / "seed-10.toml", help="the task to run")
    p.add_argument("--data-dir", help="directory holding the dataset's IDX files (searched first)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated off | MODE:EPSILON (default {DEFAULT_RUNS})")
    p.add_argument("--baseline-rounds", type=int, default=60, help="rounds of the run without DP (default 60)")
    p.add_argument("--rounds", type=int, help="rounds of each DP run (default: --baseline-rounds, cut to the budget)")
    p.add_argument("--budget-minutes", type=float, default=70.0, help="CPU budget for the whole set (default 70)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--clip-norm", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=10, help="score the global model every N rounds (and the last)")
    p.add_argument("--out", type=Path, default=Path("runs") / "bench_privacy.json")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Run:
    mode: str  # "off" | "participant" | "example"
    epsilon: float  # 0 for "off"

    @classmethod
    def parse(cls, text: str) -> Run:
        if text == "off":
            return cls("off", 0.0)
        mode, _, eps = text.partition(":")
        if mode not in ("participant", "example") or not eps:
            raise SystemExit(f"error: a run is off or MODE:EPSILON with MODE participant or example, got {text!r}")
        return cls(mode, float(eps))

    @property
    def label(self) -> str:
        return "off" if self.mode == "off" else f"{self.mode}:{self.epsilon:g}"


def privacy_for(run: Run, rounds: int, args: argparse.Namespace) -> Any:
    from swarmnode.privacy.config import PrivacyConfig

    if run.mode == "off":
        return PrivacyConfig()
    return PrivacyConfig.from_dict({"dp": run.mode, "epsilon": run.epsilon, "delta": args.delta, "rounds": rounds,
                                    "clip_norm": args.clip_norm})


def task_for(task: Any, privacy: Any, num_params: int) -> Any:
    """Participant-level noise has norm ~ z S sqrt(d) per update, far above the seed's max_update_norm: raise
    the bound to admit it (a genesis with dp = "participant" has to do the same), else every update is refused."""
    from swarmnode.privacy.dp import dp_noise_for, noise_norm_bound

    if privacy.dp != "participant":
        return task
    noise = dp_noise_for(privacy, task, 1, min_participants=task.num_clients)
    need = privacy.clip_norm + noise_norm_bound(noise.noise_std, num_params)
    return dataclasses.replace(task, max_update_norm=max(task.max_update_norm, math.ceil(need)))


def calibrate(swarm: Any, privacy: Any) -> float:
    """Derive every client's noise up front (cached), so that round timings exclude the calibration."""
    from swarmnode.privacy.dp import dp_noise_for

    t0 = time.perf_counter()
    if privacy.dp_on:
        for c in swarm.clients:
            dp_noise_for(privacy, swarm.task, len(c.train), min_participants=len(swarm.clients))
    return time.perf_counter() - t0


def time_one_round(task: Any, dataset: Any, run: Run, args: argparse.Namespace, num_params: int) -> dict[str, float]:
    from swarmnode.experiment import Swarm
    from swarmnode.learning.evaluate import evaluate

    privacy = privacy_for(run, args.baseline_rounds, args)
    swarm = Swarm(task_for(task, privacy, num_params), dataset, privacy=privacy)
    c0 = time.process_time()
    calibrate(swarm, privacy)
    c1 = time.process_time()
    rep = swarm.run_round(score_clients=False, score_test=False)
    c2 = time.process_time()
    evaluate(task.model_spec(), swarm.model.params, dataset.test)
    return {"round_s": c2 - c1, "calibration_s": c1 - c0, "eval_s": time.process_time() - c2,
            "round_wall_s": rep.seconds}


def run_one(task: Any, dataset: Any, run: Run, rounds: int, score_at: set[int], args: argparse.Namespace,
            num_params: int) -> dict[str, Any]:
    from swarmnode.experiment import Swarm
    from swarmnode.privacy.dp import dp_noise_for

    privacy = privacy_for(run, rounds, args)
    run_task = task_for(task, privacy, num_params)
    t0, c0 = time.perf_counter(), time.process_time()
    swarm = Swarm(run_task, dataset, privacy=privacy)
    calib = calibrate(swarm, privacy)
    history: list[dict[str, Any]] = []
    for r in range(rounds):
        rep = swarm.run_round(score_clients=False, score_test=r in score_at)
        entry = {"round": rep.round, "client_loss": rep.client_loss, "used": rep.used,
                 "excluded": len(rep.excluded), "seconds": rep.seconds, **rep.extra}
        if r in score_at:
            entry["test_accuracy"] = rep.global_test.accuracy
            entry["test_loss"] = rep.global_test.loss
        history.append(entry)
        acc = f" test acc {rep.global_test.accuracy:.4f}" if r in score_at else ""
        eps = f" eps {rep.extra['dp_epsilon']:.3f}" if "dp_epsilon" in rep.extra else ""
        print(f"  [{run.label}] round {r:3d} used {rep.used} loss {rep.client_loss:.4f}{acc}{eps} "
              f"{rep.seconds:.1f}s", flush=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    spent = swarm.epsilon_spent()
    zs = [n.noise_multiplier for n in swarm.dp_noise.values()]
    result: dict[str, Any] = {
        "mode": run.mode, "epsilon_budget": run.epsilon, "delta": args.delta if privacy.dp_on else None,
        "rounds": rounds, "clip_norm": args.clip_norm if privacy.dp_on else None,
        "max_update_norm": run_task.max_update_norm,
        "z_min": min(zs, default=0.0), "z_max": max(zs, default=0.0),
        "epsilon_spent": max(spent.values(), default=0.0), "final_test_accuracy": history[-1].get("test_accuracy"),
        "wall_s": wall, "cpu_s": cpu, "calibration_s": calib, "history": history,
    }
    if privacy.dp_on:
        noise = [dp_noise_for(privacy, run_task, len(c.train), min_participants=len(swarm.clients))
                 for c in swarm.clients]
        result["noise_std"] = max(n.noise_std for n in noise)
        ref = dataclasses.replace(privacy, rounds=REFERENCE_HORIZON)
        median = sorted(swarm.clients, key=lambda c: len(c.train))[len(swarm.clients) // 2]
        result[f"z_for_{REFERENCE_HORIZON}_rounds"] = dp_noise_for(ref, run_task, len(median.train),
                                                                   min_participants=len(swarm.clients)).noise_multiplier
        norms = [h["dp_pre_clip_norm"] for h in history if "dp_pre_clip_norm" in h]
        if norms:  # participant mode: how the noise compares with the clipped signal it hides
            result["rounds_with_updates"] = sum(1 for h in history if h["used"] > 0)
            m = len(swarm.clients)
            result["first_round_pre_clip_norm"] = norms[0]  # later rounds start from the noised model
            result["noise_norm_per_update"] = result["noise_std"] * math.sqrt(num_params)
            result["noise_norm_of_mean"] = result["noise_std"] * math.sqrt(num_params / m)
    return result


def table(results: list[dict[str, Any]], baseline_at: dict[int, float]) -> str:
    lines = [f"{'mode':>11} {'epsilon':>7} {'rounds':>6} {'z':>13} {'z@60':>7} {'final acc':>9} {'no-DP acc':>9} "
             f"{'eps spent':>9} {'wall s':>7} {'cpu s':>7}"]
    for r in results:
        z = "-" if r["mode"] == "off" else (f"{r['z_min']:.3f}" if r["z_min"] == r["z_max"]
                                            else f"{r['z_min']:.3f}-{r['z_max']:.3f}")
        z60 = r.get(f"z_for_{REFERENCE_HORIZON}_rounds")
        acc = r["final_test_accuracy"]
        base = baseline_at.get(r["rounds"])
        lines.append(f"{r['mode']:>11} {r['epsilon_budget'] or '-':>7} {r['rounds']:6d} {z:>13} "
                     f"{f'{z60:.3f}' if z60 else '-':>7} {f'{acc:.4f}' if acc is not None else '-':>9} "
                     f"{f'{base:.4f}' if base is not None else '-':>9} {r['epsilon_spent']:9.4f} {r['wall_s']:7.0f} {r['cpu_s']:7.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from consensus.genesis import load_genesis
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.models import build_model, num_parameters
    from swarmnode.learning.tasks import Task

    torch.set_num_threads(1)
    runs = [Run.parse(x.strip()) for x in args.runs.split(",") if x.strip()]
    task = Task.from_dict(load_genesis(args.genesis).task)
    dataset = load_dataset(task.dataset, args.data_dir)
    num_params = num_parameters(build_model(task.model_spec(), 0))
    print(f"task {args.genesis.name}: {task.dataset} from {dataset.source}, {task.num_clients} clients, "
          f"{task.partition} {task.partition_params}, {task.model} ({num_params:,} params), rule {task.rule}, "
          f"{task.local_steps} local steps of batch {task.batch_size}; 1 torch thread", flush=True)

    timings = {}
    for mode in dict.fromkeys(r.mode for r in runs):
        probe = Run(mode, 3.0 if mode != "off" else 0.0)
        timings[mode] = time_one_round(task, dataset, probe, args, num_params)
        print(f"timing: one {mode} round {timings[mode]['round_s']:.1f} s CPU ({timings[mode]['round_wall_s']:.1f} s "
              f"wall; calibration {timings[mode]['calibration_s']:.1f} s, a test evaluation "
              f"{timings[mode]['eval_s']:.1f} s)", flush=True)

    def estimate(dp_rounds: int) -> float:
        total = 0.0
        for r in runs:
            n = args.baseline_rounds if r.mode == "off" else dp_rounds
            t = timings[r.mode]
            total += n * t["round_s"] + (n // args.eval_every + 2) * t["eval_s"] + t["calibration_s"]
        return total

    budget = args.budget_minutes * 60.0
    rounds = args.rounds if args.rounds is not None else args.baseline_rounds
    full = estimate(rounds)
    print(f"estimate: {full / 60:.0f} CPU min for {args.baseline_rounds} baseline and {rounds} DP rounds", flush=True)
    if args.rounds is None and full > budget:
        while rounds > 5 and estimate(rounds) > budget:
            rounds -= 1
        print(f"over the {args.budget_minutes:g}-minute budget: DP runs cut to {rounds} rounds (estimate "
              f"{estimate(rounds) / 60:.0f} CPU min); each DP run's noise is calibrated for its {rounds} rounds", flush=True)

    results: list[dict[str, Any]] = []
    baseline_at: dict[int, float] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for run in runs:
        n = args.baseline_rounds if run.mode == "off" else rounds
        score_at = {r for r in range(n) if (r + 1) % args.eval_every == 0} | {n - 1}
        if run.mode == "off":
            score_at.add(rounds - 1)  # the baseline at the DP runs' length, like for like
        print(f"run {run.label}: {n} rounds", flush=True)
        res = run_one(task, dataset, run, n, score_at, args, num_params)
        if run.mode == "off":
            baseline_at = {h["round"] + 1: h["test_accuracy"] for h in res["history"] if "test_accuracy" in h}
        results.append(res)
        print(f"run {run.label}: final accuracy {res['final_test_accuracy']:.4f}, epsilon spent "
              f"{res['epsilon_spent']:.4f}, {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU", flush=True)
        doc = {"task": task.to_dict(), "genesis": str(args.genesis), "num_params": num_params, "timings": timings,
               "dp_rounds": rounds, "baseline_rounds": args.baseline_rounds, "baseline_accuracy_at": baseline_at,
               "torch_threads": torch.get_num_threads(), "results": results, "written": time.time()}
        args.out.write_text(json.dumps(doc, indent=1))
    print(table(results, baseline_at))
    for r in results:
        if "noise_norm_of_mean" in r:
            print(f"{r['mode']}:{r['epsilon_budget']:g}: z {r['z_max']:.3f}, noise per update (norm) "
                  f"{r['noise_norm_per_update']:.4g}, in the mean of {task.num_clients} {r['noise_norm_of_mean']:.4g}; "
                  f"signal: each update clipped to {r['clip_norm']:g} (round 0 pre-clip norm {r['first_round_pre_clip_norm']:.3g}); "
                  f"max_update_norm raised to {r['max_update_norm']:g}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
