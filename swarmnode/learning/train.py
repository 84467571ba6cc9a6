"""Local training: a few SGD/Adam steps from the global model on the node's own data; returns the delta."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from swarmnode.learning.data import Split, inputs
from swarmnode.learning.errors import LearningError, UnknownName
from swarmnode.learning.models import ModelSpec, build_model


@dataclass(frozen=True)
class TrainConfig:
    """How a client trains in one round. `local_steps` > 0 wins over `local_epochs`."""

    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    local_steps: int = 10
    local_epochs: int = 0
    prox_mu: float = 0.0  # FedProx proximal term; 0 disables it
    logit_adjust: float = 0.0  # tau of logit-adjusted local loss for label skew; 0 disables it

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise UnknownName(f"unknown optimizer {self.optimizer!r}; known: sgd, adam")
        if self.batch_size < 1 or self.lr <= 0:
            raise LearningError(f"batch_size must be >= 1 and lr > 0, got {self.batch_size}, {self.lr}")
        if self.local_steps < 1 and self.local_epochs < 1:
            raise LearningError("set local_steps >= 1 or local_epochs >= 1")


@dataclass(frozen=True)
class LocalResult:
    """A client's round: delta = local - global, plus what it trained on and how it went."""

    delta: dict[str, torch.Tensor]
    num_samples: int
    loss: float
    accuracy: float
    steps: int


def _optimizer(cfg: TrainConfig, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """`steps` index batches, walking fresh permutations of range(n) (the last partial batch is kept)."""
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if done == steps:
                return
            yield perm[start : start + batch_size]
            done += 1


def label_shift(labels: torch.Tensor, tau: float, num_classes: int = 10) -> torch.Tensor | None:
    """tau * log(local label prior), Laplace-smoothed: added to the logits in the local loss only.

    Logit adjustment (Menon et al. 2021; FedLC, Zhang et al. 2022): training on logits + log(prior)
    makes the raw logits estimate the class-balanced posterior, so a client that sees mostly one class
    stops pulling the shared classifier towards it. The model itself and inference are unchanged.
    """
    if tau == 0.0:
        return None
    counts = torch.bincount(labels, minlength=num_classes).double()
    prior = (counts + 1.0) / (counts.sum() + num_classes)
    return (tau * prior.log()).float()  # (C,)


def train_local(
    model_name: str | ModelSpec, global_params: Mapping[str, torch.Tensor], data: Split, cfg: TrainConfig, seed: int,
    device: str = "cpu",
) -> LocalResult:
    """Train from `global_params` on `data`; the batch order depends only on `seed`. On `device` "cuda"
    the arithmetic differs from the CPU's, so the update (and its hash) does too: every node still
    aggregates whatever was committed, exactly, on the CPU."""
    if len(data) == 0:
        raise LearningError("cannot train on an empty data split")
    spec = model_name if isinstance(model_name, ModelSpec) else ModelSpec.of(model_name)
    model = build_model(spec, 0)
    model.load_state_dict(dict(global_params))
    model.to(device)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    steps = cfg.local_steps if cfg.local_steps > 0 else cfg.local_epochs * -(-len(data) // cfg.batch_size)
    opt = _optimizer(cfg, model.parameters())
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()} if cfg.prox_mu > 0 else None
    shift = label_shift(data.labels, cfg.logit_adjust, spec.num_classes)
    if shift is not None:
        shift = shift.to(device)
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for idx in batches(len(data), cfg.batch_size, steps, gen):
            x, y = inputs(data, idx).to(device), data.labels[idx].to(device)  # (B, *input_shape), (B,)
            logits = model(x)  # (B, C)
            loss = nn.functional.cross_entropy(logits + shift if shift is not None else logits, y)
            if anchor is not None:
                prox = sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
                loss = loss + 0.5 * cfg.prox_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
    local = {n: t.detach().cpu() for n, t in model.state_dict().items()}
    delta = {n: (local[n] - global_params[n]).detach() for n in sorted(local)}
    return LocalResult(delta, len(data), loss_sum / seen, correct / seen, steps)
