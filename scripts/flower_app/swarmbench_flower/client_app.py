"""The Flower ClientApp: one participant's round with swarmnode's training code (see workload.py).

Weights travel as named NumPy arrays in an ArrayRecord, the figures in a MetricRecord; the FedAvg strategy
weights each reply by its `num-examples`, as swarmnode's fedavg rule weights an update by its commit's
sample count."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from swarmbench_flower import workload

app = ClientApp()


def _to_torch(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.array(arr.numpy())) for name, arr in record.items()}


def _to_arrays(params: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({name: Array.from_numpy_ndarray(t.detach().cpu().numpy()) for name, t in params.items()})


@app.train()
def train(msg: Message, context: Context) -> Message:
    path = str(context.run_config["workload"])
    index = int(context.node_config["partition-id"])
    round_ = int(msg.content["config"]["server-round"]) - 1  # Flower counts rounds from 1, the swarm from 0
    out = workload.client_round(path, index, round_, _to_torch(msg.content["arrays"]))
    metrics = MetricRecord({"num-examples": out.num_samples, "train-loss": out.train_loss,
                            "train-accuracy": out.train_accuracy, "held-out-accuracy": out.held_out_accuracy})
    return Message(RecordDict({"arrays": _to_arrays(out.local), "metrics": metrics}), reply_to=msg)
