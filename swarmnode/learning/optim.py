"""SGD and Adam for local training, computing exactly what torch.optim's CPU paths compute, without
torch.optim.

Why not torch.optim: constructing any torch.optim optimizer imports torch._dynamo (its methods are
wrapped in `torch._disable_dynamo`, which imports it on first call). That import costs 1.8-2.5 CPU-s and
about 150 MB of RSS in every daemon, once, in the first round's training; on a machine that runs ten
daemons it was most of round 0's extra CPU. Local training needs only the update rule.

The rules below are torch.optim's single-tensor implementations (`_single_tensor_sgd`, `_single_tensor_adam`;
on CPU, torch.optim uses neither the foreach nor the fused kernels) with dampening 0, no Nesterov,
no AMSGrad, not maximising: the same tensor operations in the same order, so the parameters come out
bit for bit the same (tests/unit/test_optim.py compares them step by step).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from swarmnode.learning.errors import LearningError


class LocalOptimizer:
    """What local training uses of an optimizer: `zero_grad` and `step` over a fixed list of parameters."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> None:
        self.params = list(params)
        if not self.params:
            raise LearningError("the optimizer was given no parameters")
        if not lr > 0 or not weight_decay >= 0:
            raise LearningError(f"lr must be > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        self.lr, self.weight_decay = float(lr), float(weight_decay)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    def step(self) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                if p.grad is not None:
                    grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
                    self._update(i, p, grad)

    def _update(self, i: int, p: torch.Tensor, grad: torch.Tensor) -> None:
        raise NotImplementedError


class SGD(LocalOptimizer):
    """torch.optim.SGD(params, lr, momentum, weight_decay) with dampening 0 and nesterov False."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        if not momentum >= 0:
            raise LearningError(f"momentum must be >= 0, got {momentum}")
        self.momentum = float(momentum)
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def _update(self, i: int, p: torch.Tensor, grad: torch.Tensor) -> None:
        if self.momentum != 0:
            buf = self._buffers[i]
            if buf is None:
                buf = self._buffers[i] = grad.detach().clone()
            else:
                buf.mul_(self.momentum).add_(grad, alpha=1)
            grad = buf
        p.add_(grad, alpha=-self.lr)


class Adam(LocalOptimizer):
    """torch.optim.Adam(params, lr, weight_decay) with betas (0.9, 0.999), eps 1e-8, amsgrad False."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self._steps = [0] * len(self.params)
        self._exp_avg: list[torch.Tensor | None] = [None] * len(self.params)
        self._exp_avg_sq: list[torch.Tensor | None] = [None] * len(self.params)

    def _update(self, i: int, p: torch.Tensor, grad: torch.Tensor) -> None:
        exp_avg, exp_avg_sq = self._exp_avg[i], self._exp_avg_sq[i]
        if exp_avg is None or exp_avg_sq is None:
            exp_avg = self._exp_avg[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg_sq = self._exp_avg_sq[i] = torch.zeros_like(p, memory_format=torch.preserve_format)
        self._steps[i] += 1
        step = float(self._steps[i])  # torch keeps it in a float32 tensor and reads it back: exact below 2^24
        exp_avg.lerp_(grad, 1 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1**step
        bias_correction2 = 1 - self.beta2**step
        step_size = self.lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
        p.addcdiv_(exp_avg, denom, value=-step_size)


def local_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, momentum: float,
                    weight_decay: float) -> LocalOptimizer:
    """The optimizer a TrainConfig names ("sgd" or "adam")."""
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise LearningError(f"unknown optimizer {name!r}; known: sgd, adam")
