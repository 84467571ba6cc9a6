"""The Flower ServerApp: FedAvg over every participant for the workload's rounds, starting from the
genesis model. After each round it writes the global model (round-<r>.safetensors) and a line with the
time (progress.jsonl); bench_vs_flower.py scores the models on the test set after the timed run, as it
does the swarm's, so no scoring runs inside the rounds being timed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from safetensors.torch import save_file

from swarmbench_flower import workload
from swarmbench_flower.client_app import _to_arrays, _to_torch

app = ServerApp()


class CountingFedAvg(FedAvg):
    """FedAvg that remembers how many replies of each round it aggregated: FedAvg goes on without the
    replies that failed (a ClientApp that died, a push that expired), and the benchmark reports it."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.aggregated: dict[int, int] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.aggregated[server_round] = sum(not r.has_error() for r in replies)
        return super().aggregate_train(server_round, replies)


def _record(out_dir: Path, strategy: CountingFedAvg, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
    """FedAvg's evaluate_fn: called with round 0 before the first round, then after each round."""
    t = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process of this machine
    params = {n: v.contiguous() for n, v in _to_torch(arrays).items()}
    save_file(params, str(out_dir / f"round-{server_round}.safetensors"))
    with open(out_dir / "progress.jsonl", "a") as f:
        f.write(json.dumps({"round": server_round, "t": t, "aggregated": strategy.aggregated.get(server_round)})
                + "\n")
    return None


@app.main()
def main(grid: Grid, context: Context) -> None:
    path = str(context.run_config["workload"])
    out_dir = Path(str(context.run_config["out-dir"]))
    w = workload.load(path)
    strategy = CountingFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=w.participants,
                              min_available_nodes=w.participants)
    strategy.start(grid=grid, initial_arrays=_to_arrays(workload.initial_model(path)), num_rounds=w.rounds,
                   evaluate_fn=lambda r, arrays: _record(out_dir, strategy, r, arrays))
    (out_dir / "done").write_text("ok\n")
