"""Local training: a few SGD/Adam steps from the global model on the node's own data; returns the delta."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from swarmnode.learning.data import Split, inputs
from swarmnode.learning.errors import LearningError, UnknownName
from swarmnode.learning.models import ModelSpec, build_model
from swarmnode.learning.optim import LocalOptimizer, local_optimizer

if TYPE_CHECKING:
    from swarmnode.privacy.dp import DPSGD


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
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise LearningError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        for name in ("lr", "momentum", "weight_decay", "prox_mu", "logit_adjust"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or value < 0 or (name == "lr" and value == 0)):
                raise LearningError(f"{name} must be a finite number {'> 0' if name == 'lr' else '>= 0'}, "
                                    f"got {value!r}")
        if self.local_steps < 1 and self.local_epochs < 1:
            raise LearningError("set local_steps >= 1 or local_epochs >= 1")

    def num_steps(self, n: int) -> int:
        """Optimizer steps of one round on `n` examples."""
        return self.local_steps if self.local_steps > 0 else self.local_epochs * -(-n // self.batch_size)


@dataclass(frozen=True)
class LocalResult:
    """A client's round: delta = local - global, plus what it trained on and how it went."""

    delta: dict[str, torch.Tensor]
    num_samples: int
    loss: float
    accuracy: float
    steps: int


def _optimizer(cfg: TrainConfig, params: Iterator[nn.Parameter]) -> LocalOptimizer:
    return local_optimizer(cfg.optimizer, params, cfg.lr, cfg.momentum, cfg.weight_decay)


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
    device: str = "cpu", dp: DPSGD | None = None,
) -> LocalResult:
    """Train from `global_params` on `data`; the batch order depends only on `seed`. On `device` "cuda"
    the arithmetic differs from the CPU's, so the update (and its hash) does too: every node still
    aggregates whatever was committed, exactly, on the CPU.

    With `dp` (swarmnode.privacy.dp.DPSGD) the same number of steps are DP-SGD steps (`_dpsgd_steps`): the
    batches are Poisson-sampled with dp.generator, not `seed`, which then only drives dropout."""
    if len(data) == 0:
        raise LearningError("cannot train on an empty data split")
    spec = model_name if isinstance(model_name, ModelSpec) else ModelSpec.of(model_name)
    model = build_model(spec, 0)
    model.load_state_dict(dict(global_params))
    model.to(device)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    steps = cfg.num_steps(len(data))
    opt = _optimizer(cfg, model.parameters())
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()} if cfg.prox_mu > 0 else None
    shift = label_shift(data.labels, cfg.logit_adjust, spec.num_classes)
    if shift is not None:
        shift = shift.to(device)
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        if dp is not None:
            loss_sum, correct, seen = _dpsgd_steps(model, opt, data, cfg, steps, anchor, shift, dp, device)
        else:
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
    return LocalResult(delta, len(data), loss_sum / seen if seen else 0.0, correct / seen if seen else 0.0, steps)


def _dpsgd_steps(model: nn.Module, opt: LocalOptimizer, data: Split, cfg: TrainConfig, steps: int,
                 anchor: dict[str, torch.Tensor] | None, shift: torch.Tensor | None, dp: DPSGD,
                 device: str) -> tuple[float, int, int]:
    """`steps` DP-SGD steps (Abadi et al. 2016); returns (loss sum, correct, examples seen).

    Each step draws a Poisson batch (every example independently with q = batch_size / n) from the private
    generator, takes per-example gradients (torch.func: vmap over grad of a one-example functional_call),
    clips each to dp.clip_norm, adds N(0, dp.noise_std^2) to their sum and divides by the expected batch
    size q * n. An empty batch still takes a noise-only step: skipping it would reveal the batch was empty.
    The FedProx term is data-independent, so its gradient is added after the noise, unclipped.
    """
    from torch.func import functional_call, grad_and_value, vmap

    from swarmnode.privacy.dp import DPError, add_noise, clip_per_example, sampling_rate

    if any(b.is_floating_point() for b in model.buffers()):
        raise DPError("DP-SGD needs a model without running statistics: batch norm mixes the examples of a batch")
    if shift is not None:
        raise DPError("logit_adjust reads the local label counts outside the clipped gradients: DP-SGD does not "
                      "cover it (set it to 0, or use participant-level DP)")
    n = len(data)
    q = sampling_rate(cfg.batch_size, n)
    params = dict(model.named_parameters())
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # x: (*input_shape), y: ()
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))  # (1, C)
        loss = nn.functional.cross_entropy(logits + shift if shift is not None else logits, y.unsqueeze(0))
        return loss, logits.squeeze(0).detach()

    per_example = vmap(grad_and_value(loss_one, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(steps):
        idx = (torch.rand(n, generator=dp.generator) < q).nonzero().squeeze(1)  # (B,), B ~ Binomial(n, q)
        if len(idx):
            x, y = inputs(data, idx).to(device), data.labels[idx].to(device)  # (B, *input_shape), (B,)
            grads, (losses, logits) = per_example({k: p.detach() for k, p in params.items()}, x, y)
            summed, _ = clip_per_example(grads, dp.clip_norm)  # {name: (*shape)} float64
            loss_sum += float(losses.sum())
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
        else:
            summed = {k: torch.zeros(p.shape, dtype=torch.float64) for k, p in params.items()}
        noisy = add_noise({k: t.cpu() for k, t in summed.items()}, dp.noise_std, dp.generator)
        opt.zero_grad(set_to_none=True)
        for k, p in params.items():
            g = (noisy[k] / (q * n)).to(device=p.device, dtype=p.dtype)
            p.grad = g + cfg.prox_mu * (p.detach() - anchor[k]) if anchor is not None else g
        opt.step()
    return loss_sum, correct, seen
