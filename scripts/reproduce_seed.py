#!/usr/bin/env python3
"""Reproduce the seed experiment in process: N skewed clients, R rounds, against a centralized baseline.

Prints the seed's Table 3 columns per round (client loss and accuracy, averaged over clients) beside the
global model's test loss and accuracy and the centralized baseline's, then writes a PNG of the history
(like the seed's Figure 5) and a JSON file of every figure.

    python scripts/reproduce_seed.py --preset dominant          # 10 clients, 90% one class, 60 rounds
    python scripts/reproduce_seed.py --preset single-class      # #C=1, 100 rounds
    python scripts/reproduce_seed.py --rule median --rounds 30  # any flag overrides the preset
    python scripts/reproduce_seed.py --genesis genesis/seed-10.toml --rounds 6  # a genesis's task and max_samples
    python scripts/reproduce_seed.py --dp example --epsilon 3 --rounds 20  # DP-SGD, epsilon 3 over the 20 rounds

Training uses --threads torch threads (default 1, like a node's learning.torch_threads): local training's
floating point depends on the thread count, so only runs with the same count give the same model hashes
as a swarm of the same genesis.

--dp participant|example makes every client differentially private as a daemon would (swarmnode.privacy.dp),
with the noise calibrated so that --rounds rounds spend --epsilon at --delta; such runs use private
randomness and do not repeat. Participant-level noise has norm about z * S * sqrt(#params) per update:
raise --max-update-norm above it, or the validators refuse every update (the script says so).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The seed's setup on Fashion-MNIST with our fix: fixed-point FedAvgM (server momentum 0.9),
    # 50 local SGD steps of batch 32 at lr 0.1 per round (the Task defaults).
    "dominant": {"rounds": 60, "target": 0.86, "task": {}},
    # One class per client (#C=1): few local steps (5, lr 0.05) so clients drift little, with server momentum.
    "single-class": {
        "rounds": 100, "target": 0.75,
        "task": {"partition": "single-class", "partition_params": {}, "local_steps": 5, "lr": 0.05,
                 "rule_params": {"server_lr": 1.0, "momentum": 0.9}},
    },
    # make demo: the dominant-class setup, shorter.
    "demo": {"rounds": 15, "target": 0.80, "task": {}},
    # Smoke runs and tests: an MLP on a small subset.
    "tiny": {"rounds": 3, "target": 0.5, "task": {"model": "mlp", "num_clients": 3, "samples_per_client": 600,
                                                   "local_steps": 20, "lr": 0.05}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="dominant", help="starting settings (default: dominant)")
    p.add_argument("--rounds", type=int, help="learning rounds")
    p.add_argument("--target", type=float, help="report the first round whose test accuracy reaches this")
    p.add_argument("--dataset", choices=["fashion-mnist", "mnist"])
    p.add_argument("--data-dir", help="directory holding the dataset's IDX files (searched first)")
    p.add_argument("--clients", type=int, dest="num_clients")
    p.add_argument("--partition", choices=["iid", "dominant", "single-class", "shards", "dirichlet"])
    p.add_argument("--p", type=float, help="dominant-class fraction (partition dominant)")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (partition dirichlet)")
    p.add_argument("--model", choices=["federated-net", "small-cnn", "mlp"])
    p.add_argument("--rule", choices=["fedavg", "fedavgm", "median", "trimmed-mean", "krum", "multi-krum",
                                      "norm-bounded", "centered-clipping", "robust"])
    p.add_argument("--rule-param", action="append", default=[], metavar="KEY=VALUE",
                   help="aggregation rule parameter, e.g. momentum=0.9, beta=0.2, f=2, weight_cap=median (repeatable)")
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float, help="client optimizer momentum")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--local-steps", type=int)
    p.add_argument("--local-epochs", type=int)
    p.add_argument("--prox-mu", type=float, help="FedProx proximal coefficient")
    p.add_argument("--logit-adjust", type=float, help="tau of the logit-adjusted local loss (0 = plain loss)")
    p.add_argument("--samples-per-client", type=int, help="use only this many samples per client (0 = all)")
    p.add_argument("--max-update-norm", type=float, help="validators refuse updates with a larger L2 norm")
    p.add_argument("--dp", choices=["off", "participant", "example"], default="off",
                   help="differential privacy: per participant (DP-FedAvg) or per example (DP-SGD); default off")
    p.add_argument("--epsilon", type=float, help="the privacy budget spent over --rounds rounds (with --dp)")
    p.add_argument("--delta", type=float, default=1e-5, help="the DP delta (default 1e-5)")
    p.add_argument("--clip-norm", type=float, default=1.0,
                   help="L2 bound S of each update (participant) or each example's gradient (example); default 1.0")
    p.add_argument("--seed", type=int)
    p.add_argument("--genesis", type=Path, help="take the task and max_samples from this genesis file (task flags "
                   "still override); the model hashes then match its swarm's")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, as a node's learning.torch_threads: the local updates, hence "
                        "the model hashes, depend on it)")
    p.add_argument("--no-baseline", action="store_true", help="skip the centralized baseline")
    p.add_argument("--out-dir", type=Path, help="where to write history.json and history.png (default runs/<preset>)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p.parse_args(argv)


def _param_value(value: str) -> int | float | str:
    """A --rule-param value: an int, else a float, else the string itself (e.g. weight_cap=median)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def build_task(args: argparse.Namespace) -> Any:
    from swarmnode.learning.tasks import Task

    base, preset_task = Task(), dict(PRESETS[args.preset]["task"])
    if args.genesis is not None:  # the genesis's task instead of the preset's
        from consensus.genesis import load_genesis

        base, preset_task = Task.from_dict(load_genesis(args.genesis).task), {}
    overrides = dict(preset_task)
    for key in ("dataset", "num_clients", "partition", "model", "rule", "optimizer", "lr", "momentum",
                "weight_decay", "batch_size", "local_steps", "local_epochs", "prox_mu", "logit_adjust",
                "samples_per_client", "max_update_norm", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if args.local_epochs and args.local_steps is None:
        overrides["local_steps"] = 0
    if args.p is not None:
        overrides["partition_params"] = {"p": args.p}
    if args.alpha is not None:
        overrides["partition_params"] = {"alpha": args.alpha}
    if args.partition and args.partition not in ("dominant",) and args.p is None and args.alpha is None:
        overrides.setdefault("partition_params", {})
        if args.partition != preset_task.get("partition", base.partition):
            overrides["partition_params"] = {}
    if args.rule_param:
        params: dict[str, Any] = {}
        for item in args.rule_param:
            key, _, value = item.partition("=")
            if not _:
                raise SystemExit(f"error: --rule-param wants KEY=VALUE, got {item!r}")
            params[key] = _param_value(value)
        overrides["rule_params"] = params
    elif args.rule and args.rule != "fedavgm":
        overrides["rule_params"] = {}
    return dataclasses.replace(base, **overrides)


HEADER = (f"{'round':>5} {'client loss':>11} {'client acc':>10} {'client val':>10} {'test loss':>9} "
          f"{'test acc':>8} {'central':>8} {'round s':>7} {'train s/client':>14}")


def row(rep: Any, central: float | None) -> str:
    c = f"{central:8.4f}" if central is not None else f"{'-':>8}"
    return (f"{rep.round:5d} {rep.client_loss:11.4f} {rep.client_accuracy:10.4f} {rep.client_val_accuracy:10.4f} "
            f"{rep.global_test.loss:9.4f} {rep.global_test.accuracy:8.4f} {c} {rep.seconds:7.2f} "
            f"{rep.train_seconds_per_client:14.3f}")


def plot(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [h["round"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(rounds, [h["client_loss"] for h in history], label="train loss (clients)")
    ax1.plot(rounds, [h["client_val_loss"] for h in history], label="validation loss (clients)")
    ax1.plot(rounds, [h["test_loss"] for h in history], label="global test loss")
    ax1.set_xlabel("round")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(rounds, [h["test_accuracy"] for h in history], label="global model (swarm)")
    if history and history[0].get("central_accuracy") is not None:
        ax2.plot(rounds, [h["central_accuracy"] for h in history], label="centralized baseline")
    ax2.plot(rounds, [h["client_accuracy"] for h in history], label="client train accuracy", alpha=0.6)
    ax2.set_xlabel("round")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize(history: list[dict[str, Any]], target: float | None) -> dict[str, Any]:
    accs = [h["test_accuracy"] for h in history]
    reached = next((h["round"] for h in history if target is not None and h["test_accuracy"] >= target), None)
    centrals = [h["central_accuracy"] for h in history if h.get("central_accuracy") is not None]
    return {
        "rounds": len(history),
        "final_test_accuracy": accs[-1] if accs else None,
        "best_test_accuracy": max(accs) if accs else None,
        "target": target,
        "target_reached_at_round": reached,
        "final_central_accuracy": centrals[-1] if centrals else None,
        "mean_round_seconds": sum(h["seconds"] for h in history) / max(1, len(history)),
        "mean_train_seconds_per_client": sum(h["train_seconds_per_client"] for h in history) / max(1, len(history)),
    }


def privacy_config(args: argparse.Namespace, rounds: int) -> Any:
    """The [privacy] table of --dp, --epsilon, --delta and --clip-norm, calibrated over `rounds` rounds."""
    from swarmnode.privacy.config import PrivacyConfig

    if args.dp == "off":
        return PrivacyConfig()
    if args.epsilon is None:
        raise SystemExit("error: --dp needs --epsilon (the budget spent over --rounds rounds)")
    return PrivacyConfig.from_dict({"dp": args.dp, "epsilon": args.epsilon, "delta": args.delta, "rounds": rounds,
                                    "clip_norm": args.clip_norm})


def describe_privacy(privacy: Any, task: Any, swarm: Any) -> str:
    """One line: each client's noise multiplier and noise std, and whether the noised updates pass the norm check."""
    from swarmnode.learning.models import build_model, num_parameters
    from swarmnode.privacy.dp import dp_noise_for, noise_norm_bound

    noises = [dp_noise_for(privacy, task, len(c.train), min_participants=len(swarm.clients)) for c in swarm.clients]
    zs = sorted(n.noise_multiplier for n in noises)
    z = f"{zs[0]:.4g}" if zs[0] == zs[-1] else f"{zs[0]:.4g}..{zs[-1]:.4g}"
    line = (f"privacy: dp {privacy.dp}, epsilon {privacy.epsilon:g} at delta {privacy.delta:g} over {privacy.rounds} "
            f"rounds, clip {privacy.clip_norm:g}: noise multiplier z {z}, noise std {max(n.noise_std for n in noises):.4g}")
    if privacy.dp == "participant":
        need = privacy.clip_norm + noise_norm_bound(max(n.noise_std for n in noises),
                                                    num_parameters(build_model(task.model_spec(), 0)))
        if need > task.max_update_norm:
            line += (f"\nwarning: noised updates have L2 norm up to ~{need:.4g}, above max_update_norm "
                     f"{task.max_update_norm:g}: validators will refuse them (pass --max-update-norm {need:.0f})")
    return line


def run(args: argparse.Namespace) -> int:
    import torch

    from consensus.errors import ConsensusError
    from consensus.genesis import load_genesis
    from swarmnode.experiment import MAX_REPORTED, Centralized, Swarm
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.errors import LearningError
    from swarmnode.learning.models import build_model, num_parameters

    torch.set_num_threads(max(1, args.threads))
    preset = PRESETS[args.preset]
    rounds = args.rounds if args.rounds is not None else preset["rounds"]
    target = args.target if args.target is not None else preset["target"]
    try:
        task = build_task(args)
        max_samples = load_genesis(args.genesis).rounds.max_samples if args.genesis else MAX_REPORTED
        dataset = load_dataset(task.dataset, args.data_dir)
    except (LearningError, ConsensusError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = args.out_dir or Path("runs") / args.preset
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        privacy = privacy_config(args, rounds)
        swarm = Swarm(task, dataset, max_samples=max_samples, privacy=privacy)
        privacy_line = describe_privacy(privacy, task, swarm) if privacy.dp_on else None
    except ValueError as exc:  # a malformed privacy table, or one this task cannot honour
        print(f"error: {exc}", file=sys.stderr)
        return 2
    central = None if args.no_baseline else Centralized(task, swarm.clients)
    print(f"dataset {task.dataset} from {dataset.source}; {task.num_clients} clients, partition {task.partition} "
          f"{task.partition_params}; model {task.model} ({num_parameters(build_model(task.model_spec(), 0)):,} params); "
          f"rule {task.rule} {task.rule_params}; {task.optimizer} lr {task.lr}, {task.local_steps} local steps "
          f"of batch {task.batch_size}; {rounds} rounds; {torch.get_num_threads()} torch threads", flush=True)
    if privacy_line is not None:
        print(privacy_line, flush=True)
    if not args.quiet:
        print(HEADER, flush=True)
    history: list[dict[str, Any]] = []
    interrupted = False
    try:
        for _ in range(rounds):
            rep = swarm.run_round()
            central_acc = None
            if central is not None:
                central.train_steps(task.num_clients * max(1, task.local_steps or 1))
                central_acc = central.evaluate(dataset.test).accuracy
            history.append({
                "round": rep.round, "client_loss": rep.client_loss, "client_accuracy": rep.client_accuracy,
                "client_val_loss": rep.client_val_loss, "client_val_accuracy": rep.client_val_accuracy,
                "test_loss": rep.global_test.loss, "test_accuracy": rep.global_test.accuracy,
                "test_f1": list(rep.global_test.f1), "central_accuracy": central_acc,
                "model_hash": rep.model_hash.hex(), "used": rep.used, "excluded": rep.excluded,
                "seconds": rep.seconds, "train_seconds_per_client": rep.train_seconds_per_client, **rep.extra,
            })
            if not args.quiet:
                print(row(rep, central_acc), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the rounds completed so far", file=sys.stderr)
    summary = summarize(history, target)
    spent = swarm.epsilon_spent()
    if privacy.dp_on:
        summary["privacy"] = {**privacy.to_dict(), "epsilon_spent": max(spent.values(), default=0.0),
                              "client_noise_multipliers": {str(i): n.noise_multiplier
                                                           for i, n in swarm.dp_noise.items()}}
    result = {"preset": args.preset, "task": task.to_dict(), "summary": summary, "history": history,
              "interrupted": interrupted, "torch_threads": torch.get_num_threads(), "written": time.time()}
    (out_dir / "history.json").write_text(json.dumps(result, indent=1))
    if history:
        plot(history, out_dir / "history.png", f"{task.dataset}, {task.num_clients} clients, {task.partition}, {task.rule}")
    reached = summary["target_reached_at_round"]
    print(f"final global test accuracy {summary['final_test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f})"
          if history else "no rounds completed")
    if summary["final_central_accuracy"] is not None:
        print(f"centralized baseline, same gradient steps: {summary['final_central_accuracy']:.4f}")
    if target is not None and history:
        print(f"target {target:.2f}: " + (f"reached at round {reached}" if reached is not None else "not reached"))
    if privacy.dp_on:
        zs = [n.noise_multiplier for n in swarm.dp_noise.values()]
        print(f"privacy: noise multiplier {min(zs, default=0.0):.4g}..{max(zs, default=0.0):.4g}; epsilon spent "
              f"{max(spent.values(), default=0.0):.4f} of {privacy.epsilon:g} (delta {privacy.delta:g}, largest over "
              f"clients)")
    print(f"wall time per round {summary['mean_round_seconds']:.2f} s; local training "
          f"{summary['mean_train_seconds_per_client']:.3f} s per client per round")
    print(f"wrote {out_dir / 'history.json'} and {out_dir / 'history.png'}")
    return 130 if interrupted else 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
