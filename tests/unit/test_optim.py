"""swarmnode.learning.optim: the same parameters as torch.optim's SGD and Adam, bit for bit, step by step;
local training never imports torch._dynamo (which any torch.optim optimizer does)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from swarmnode.learning.errors import LearningError
from swarmnode.learning.optim import SGD, Adam, local_optimizer
from swarmnode.learning.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def _run(make_opt, seed: int, steps: int, skip_grad_of: int | None = None) -> list[list[torch.Tensor]]:
    model = _net(seed)
    opt = make_opt(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    trace = []
    for step in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if skip_grad_of is not None and step % 3 == 1:
            list(model.parameters())[skip_grad_of].grad = None  # a parameter without a gradient is left alone
        opt.step()
        trace.append([p.detach().clone() for p in model.parameters()])
    return trace


def _same(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> None:
    for step, (xs, ys) in enumerate(zip(a, b, strict=True)):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            assert torch.equal(x, y), f"step {step}, parameter {i}: max difference {(x - y).abs().max()}"


@pytest.mark.parametrize(("lr", "momentum", "weight_decay"), [(0.05, 0.9, 0.0), (0.1, 0.0, 0.0), (0.01, 0.5, 1e-3)])
def test_sgd_equals_torch_optim_sgd_bit_for_bit(lr: float, momentum: float, weight_decay: float) -> None:
    ours = _run(lambda p: SGD(p, lr=lr, momentum=momentum, weight_decay=weight_decay), 3, 25, skip_grad_of=1)
    theirs = _run(lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, weight_decay=weight_decay), 3, 25,
                  skip_grad_of=1)
    _same(ours, theirs)


@pytest.mark.parametrize(("lr", "weight_decay"), [(1e-3, 0.0), (3e-3, 1e-2)])
def test_adam_equals_torch_optim_adam_bit_for_bit(lr: float, weight_decay: float) -> None:
    ours = _run(lambda p: Adam(p, lr=lr, weight_decay=weight_decay), 5, 25, skip_grad_of=2)
    theirs = _run(lambda p: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay), 5, 25, skip_grad_of=2)
    _same(ours, theirs)


def test_the_comparison_can_fail() -> None:
    """A different rule (no momentum against momentum) is told apart after one step with a gradient history."""
    ours = _run(lambda p: SGD(p, lr=0.05, momentum=0.0), 3, 3)
    theirs = _run(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), 3, 3)
    with pytest.raises(AssertionError, match="step 1"):
        _same(ours, theirs)


def test_bad_settings_are_typed_errors() -> None:
    params = list(_net(0).parameters())
    with pytest.raises(LearningError, match="unknown optimizer 'rmsprop'"):
        local_optimizer("rmsprop", params, 0.1, 0.0, 0.0)
    with pytest.raises(LearningError, match="lr must be > 0"):
        SGD(params, lr=0.0)
    with pytest.raises(LearningError, match="lr must be > 0"):
        Adam(params, lr=float("nan"))
    with pytest.raises(LearningError, match="momentum must be >= 0"):
        SGD(params, lr=0.1, momentum=-0.1)
    with pytest.raises(LearningError, match="no parameters"):
        SGD([], lr=0.1)


def test_local_training_does_not_import_torch_dynamo() -> None:
    code = (
        "import sys, torch\n"
        "from swarmnode.learning.data import Split\n"
        "from swarmnode.learning.train import TrainConfig, train_local\n"
        "from swarmnode.learning.models import ModelSpec, build_model\n"
        "from swarmnode.learning.evaluate import evaluate\n"
        "spec = ModelSpec.of('small-cnn')\n"
        "params = build_model(spec, 0).state_dict()\n"
        "data = Split(torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (64,)))\n"
        "for opt in ('sgd', 'adam'):\n"
        "    train_local(spec, params, data, TrainConfig(optimizer=opt, local_steps=3), seed=1)\n"
        "evaluate(spec, params, data)\n"
        "print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(("field", "value"), [
    ("lr", 0.0), ("lr", -0.1), ("lr", float("nan")), ("lr", float("inf")), ("lr", "0.1"),
    ("momentum", -1e-9), ("momentum", float("nan")), ("momentum", float("inf")),
    ("weight_decay", -0.5), ("weight_decay", float("nan")), ("prox_mu", float("-inf")),
    ("logit_adjust", float("nan")), ("batch_size", 0), ("batch_size", 2.5), ("batch_size", True),
])
def test_a_training_setting_out_of_range_is_refused_when_the_task_is_read(field: str, value: object) -> None:
    """Before, NaN, infinite or negative settings passed the genesis and failed (or trained into NaN) in
    every node's every round."""
    with pytest.raises(LearningError, match=field):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_settings_at_the_edges_are_accepted() -> None:
    TrainConfig(lr=1e-12, momentum=0.0, weight_decay=0.0, prox_mu=0.0, logit_adjust=0.0, batch_size=1)
    TrainConfig(lr=10, momentum=0, weight_decay=0)  # integers from a TOML file
