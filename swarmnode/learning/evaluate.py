"""Evaluation: loss, accuracy and per-class precision, recall and F1 of a model on a data split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from swarmnode.learning.data import Split, inputs
from swarmnode.learning.models import ModelSpec, build_model


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "loss": self.loss, "accuracy": self.accuracy, "precision": list(self.precision),
            "recall": list(self.recall), "f1": list(self.f1), "support": list(self.support),
        }


def _per_class(confusion: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    tp = confusion.diag().double()
    predicted = confusion.sum(0).double()  # column sums: how often each class was predicted
    actual = confusion.sum(1).double()  # row sums: how often each class occurs
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return tuple(precision.tolist()), tuple(recall.tolist()), tuple(f1.tolist())


@torch.inference_mode()
def evaluate_module(model: nn.Module, data: Split, num_classes: int = 10, batch_size: int = 2000) -> EvalResult:
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum = 0.0
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        x = inputs(data, idx)  # (B, *input_shape)
        y = data.labels[idx]
        logits = model(x)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    n = max(1, len(data))
    precision, recall, f1 = _per_class(confusion)
    return EvalResult(
        loss_sum / n, float(confusion.diag().sum()) / n, precision, recall, f1, tuple(confusion.sum(1).tolist())
    )


def evaluate(model_name: str | ModelSpec, params: Mapping[str, torch.Tensor], data: Split) -> EvalResult:
    spec = model_name if isinstance(model_name, ModelSpec) else ModelSpec.of(model_name)
    model = build_model(spec, 0)
    model.load_state_dict(dict(params))
    return evaluate_module(model, data, spec.num_classes)
