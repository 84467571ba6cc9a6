"""Differential privacy (swarmnode/privacy/dp.py): calibration against the accountant, clipping, private noise,
DP-SGD against a hand loop over examples, and the unchanged no-DP training path."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from swarmnode.experiment import Swarm, local_update
from swarmnode.learning.data import Dataset, Split
from swarmnode.learning.models import ModelSpec, build_model
from swarmnode.learning.tasks import Task
from swarmnode.learning.train import TrainConfig, train_local
from swarmnode.privacy.config import PrivacyConfig
from swarmnode.privacy.dp import (
    DPSGD,
    DPError,
    NonFiniteUpdate,
    NotPrivate,
    clip_and_noise,
    clip_per_example,
    dp_noise_for,
    epsilon_after,
    noise_multiplier_for,
    participant_noise_std,
    private_generator,
)

PARTICIPANT = PrivacyConfig.from_dict({"dp": "participant", "epsilon": 3.0, "delta": 1e-5, "rounds": 60})
EXAMPLE = PrivacyConfig.from_dict({"dp": "example", "epsilon": 2.0, "delta": 1e-5, "rounds": 5})
TINY = ModelSpec.of("mlp", {"hidden": 4}, (3,), 2)  # 3 features, 2 classes: 34 parameters


def norm(delta: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for t in delta.values()))


def tabular(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))


def initial(spec: ModelSpec = TINY) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in build_model(spec, 7).state_dict().items()}


# ---- calibration ----

@pytest.mark.parametrize("cfg, kw", [
    (PARTICIPANT, {}),
    (EXAMPLE, {"sampling_rate": 0.01, "steps_per_round": 20}),
])
def test_calibration_meets_the_budget_and_a_smaller_z_does_not(cfg: PrivacyConfig, kw: dict) -> None:
    z = noise_multiplier_for(cfg, **kw)

    spent = epsilon_after(cfg, cfg.rounds, z, **kw)
    over = epsilon_after(cfg, cfg.rounds, z * (1 - 2e-3), **kw)

    assert spent <= cfg.epsilon, f"z {z} spends {spent} > budget {cfg.epsilon}"
    assert over > cfg.epsilon, f"z {z * (1 - 2e-3)} still meets the budget ({over}): z is not the smallest"


def test_participant_z_for_epsilon_3_over_60_rounds() -> None:
    # 60 Gaussian releases at delta 1e-5: the RDP accountant needs z of about 11.5
    assert 11.3 < noise_multiplier_for(PARTICIPANT) < 11.8


def test_epsilon_grows_with_releases() -> None:
    z = 2.0
    eps = [epsilon_after(PARTICIPANT, k, z) for k in range(12)]

    assert eps[0] == 0.0
    assert all(a < b for a, b in zip(eps, eps[1:], strict=False)), eps
    assert epsilon_after(PARTICIPANT, 3, 0.0) == math.inf
    ex = [epsilon_after(EXAMPLE, k, 1.0, sampling_rate=0.02, steps_per_round=10) for k in range(6)]
    assert ex[0] == 0.0 and all(a < b for a, b in zip(ex, ex[1:], strict=False)), ex


def test_calibration_refuses_bad_parameters() -> None:
    with pytest.raises(NotPrivate):
        noise_multiplier_for(PrivacyConfig())
    with pytest.raises(DPError, match="sampling_rate"):
        noise_multiplier_for(EXAMPLE, steps_per_round=10)
    with pytest.raises(DPError, match="releases"):
        epsilon_after(PARTICIPANT, -1, 1.0)


def test_participant_noise_is_split_only_under_secure_aggregation() -> None:
    secagg = dataclasses.replace(PARTICIPANT, secure_aggregation=True, clip_norm=2.0)

    assert participant_noise_std(PARTICIPANT, 3.0, 10) == 3.0
    assert participant_noise_std(secagg, 3.0, 9) == pytest.approx(3.0 * 2.0 / 3.0)
    with pytest.raises(DPError, match="min_participants"):
        participant_noise_std(secagg, 3.0, None)


def test_dp_noise_for_uses_a_pinned_multiplier_and_the_task_steps() -> None:
    task = Task(batch_size=32, local_steps=50)
    pinned = dataclasses.replace(PARTICIPANT, noise_multiplier=4.0)

    assert dp_noise_for(pinned, task, 5400).noise_std == 4.0
    ex = dp_noise_for(EXAMPLE, task, 3200)
    assert (ex.sampling_rate, ex.steps_per_round) == (0.01, 50)
    assert ex.noise_multiplier == noise_multiplier_for(EXAMPLE, sampling_rate=0.01, steps_per_round=50)
    assert ex.epsilon_after(EXAMPLE.rounds) <= EXAMPLE.epsilon
    with pytest.raises(DPError, match="logit_adjust"):
        dp_noise_for(EXAMPLE, dataclasses.replace(task, logit_adjust=1.0), 3200)


# ---- clipping and noise ----

def test_clipping_bounds_the_whole_update() -> None:
    g = torch.Generator().manual_seed(1)
    big = {"a": torch.randn(300, generator=g) * 5, "b": torch.randn(4, 5, generator=g)}
    small = {n: t / (2 * norm(big)) for n, t in big.items()}

    clipped, pre = clip_and_noise(big, 1.5, 0.0, g)
    kept, pre_small = clip_and_noise(small, 1.5, 0.0, g)

    assert pre == pytest.approx(norm(big)) and pre > 1.5
    assert norm(clipped) <= 1.5 + 1e-6 and norm(clipped) == pytest.approx(1.5, rel=1e-6)
    assert all(clipped[n].dtype == torch.float32 for n in big)
    assert pre_small == pytest.approx(0.5)
    assert all(torch.equal(kept[n], small[n]) for n in small), "an update already within S must not change"


def test_noise_std_matches() -> None:
    zeros = {"w": torch.zeros(100_000), "b": torch.zeros(20_000)}

    noised, _ = clip_and_noise(zeros, 1.0, 0.5, torch.Generator().manual_seed(3))
    x = torch.cat([t.double() for t in noised.values()])

    # the sample std of 120k draws has a standard error of 0.5 / sqrt(240k) ~ 0.001: 2% is ~10 errors wide
    assert float(x.std()) == pytest.approx(0.5, rel=0.02)
    assert abs(float(x.mean())) < 0.01


def test_private_generators_differ_and_ignore_the_global_seed() -> None:
    zeros = {"w": torch.zeros(64)}
    draws = []
    for _ in range(2):
        torch.manual_seed(0)
        draws.append(clip_and_noise(zeros, 1.0, 1.0, private_generator())[0]["w"])

    assert not torch.equal(draws[0], draws[1]), "two private generators after torch.manual_seed(0) drew the same noise"


def test_bad_input_raises_typed_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(NonFiniteUpdate, match="'b'"):
        clip_and_noise({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}, 1.0, 0.1, gen)
    with pytest.raises(DPError, match="clip_norm"):
        clip_and_noise({"a": torch.ones(3)}, -1.0, 0.1, gen)
    with pytest.raises(DPError, match="noise_std"):
        clip_and_noise({"a": torch.ones(3)}, 1.0, float("inf"), gen)
    with pytest.raises(DPError, match="clip_norm"):
        DPSGD(0.0, 1.0, gen)
    with pytest.raises(NonFiniteUpdate):
        clip_per_example({"a": torch.tensor([[1.0], [float("inf")]])}, 1.0)
    assert issubclass(NonFiniteUpdate, DPError) and issubclass(DPError, ValueError)


def test_clip_per_example_clips_each_example_then_sums() -> None:
    grads = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]]), "b": torch.tensor([[0.0], [0.0]])}  # norms 5, 0.5

    summed, norms = clip_per_example(grads, 1.0)

    assert norms.tolist() == pytest.approx([5.0, 0.5])
    assert summed["w"].tolist() == pytest.approx([0.6 + 0.3, 0.8 + 0.4])
    assert summed["b"].shape == (1,)


# ---- training ----

def hand_dpsgd(params: dict[str, torch.Tensor], data: Split, lr: float, batch_size: int, steps: int, clip: float,
               gen: torch.Generator) -> dict[str, torch.Tensor]:
    """DP-SGD with zero noise, one example at a time: Poisson masks from `gen`, plain SGD."""
    model = build_model(TINY, 0)
    model.load_state_dict(params)
    n, q = len(data), batch_size / len(data)
    clipped_any = False
    for _ in range(steps):
        idx = (torch.rand(n, generator=gen) < q).nonzero().squeeze(1)
        total = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in model.named_parameters()}
        for i in idx.tolist():
            model.zero_grad()
            nn.functional.cross_entropy(model(data.images[i : i + 1]), data.labels[i : i + 1]).backward()
            g = {k: p.grad.double() for k, p in model.named_parameters()}
            scale = min(1.0, clip / norm(g))
            clipped_any |= scale < 1.0
            for k in total:
                total[k] += g[k] * scale
        with torch.no_grad():
            for k, p in model.named_parameters():
                p -= lr * (total[k] / (q * n)).float()
    assert clipped_any, "the clip norm never bit: the comparison would not test clipping"
    return {k: t.detach() - params[k] for k, t in model.state_dict().items()}


def test_dpsgd_matches_a_hand_loop_over_examples() -> None:
    data, params = tabular(40), initial()
    cfg = TrainConfig(lr=0.5, momentum=0.0, batch_size=8, local_steps=6)

    got = train_local(TINY, params, data, cfg, seed=123, dp=DPSGD(0.05, 0.0, torch.Generator().manual_seed(9)))
    want = hand_dpsgd(params, data, 0.5, 8, 6, 0.05, torch.Generator().manual_seed(9))

    for k in want:
        assert torch.allclose(got.delta[k], want[k], atol=1e-6), (k, got.delta[k], want[k])
    assert got.steps == 6


def test_dpsgd_batches_come_from_the_private_generator_not_the_seed() -> None:
    data, params = tabular(40), initial()
    cfg = TrainConfig(lr=0.5, momentum=0.0, batch_size=8, local_steps=3)

    a = train_local(TINY, params, data, cfg, seed=1, dp=DPSGD(1.0, 0.0, torch.Generator().manual_seed(5)))
    b = train_local(TINY, params, data, cfg, seed=2, dp=DPSGD(1.0, 0.0, torch.Generator().manual_seed(5)))
    c = train_local(TINY, params, data, cfg, seed=1, dp=DPSGD(1.0, 0.0, torch.Generator().manual_seed(6)))

    assert all(torch.equal(a.delta[k], b.delta[k]) for k in a.delta), "the public seed changed the DP-SGD batches"
    assert not all(torch.equal(a.delta[k], c.delta[k]) for k in a.delta)


def reference_sgd(params: dict[str, torch.Tensor], data: Split, cfg: TrainConfig, seed: int) -> dict[str, torch.Tensor]:
    """The no-DP local training as it was written before DP existed: shuffled batches from the seed."""
    model = build_model(TINY, 0)
    model.load_state_dict(params)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    gen, done = torch.Generator().manual_seed(seed), 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while done < cfg.local_steps:
            perm = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), cfg.batch_size):
                if done == cfg.local_steps:
                    break
                idx = perm[start : start + cfg.batch_size]
                loss = nn.functional.cross_entropy(model(data.images[idx]), data.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
    return {k: t.detach() - params[k] for k, t in model.state_dict().items()}


def test_the_no_dp_path_is_unchanged() -> None:
    data, params = tabular(50), initial()
    cfg = TrainConfig(lr=0.1, momentum=0.9, batch_size=16, local_steps=7)

    got = train_local(TINY, params, data, cfg, seed=42)
    want = reference_sgd(params, data, cfg, 42)

    assert all(torch.equal(got.delta[k], want[k]) for k in want), "train_local without DP no longer matches"


# ---- the simulation ----

def synthetic_swarm(privacy: PrivacyConfig | None, **over: object) -> Swarm:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (400, 28, 28), dtype=torch.uint8, generator=g),
                  torch.arange(400) % 10)
    task = Task(model="mlp", model_args={"hidden": 8}, num_clients=3, local_steps=3, lr=0.05, rule="fedavg",
                rule_params={}, **over)  # type: ignore[arg-type]
    return Swarm(task, Dataset("fashion-mnist", split, split.subset(torch.arange(50)), "synthetic"), privacy=privacy)


def test_swarm_with_dp_off_is_the_swarm_without_privacy() -> None:
    plain = synthetic_swarm(None).run_round(score_clients=False)
    off = synthetic_swarm(PrivacyConfig()).run_round(score_clients=False)

    assert plain.model_hash == off.model_hash
    assert off.extra == {}


@pytest.mark.parametrize("mode", ["participant", "example"])
def test_swarm_with_dp_reports_the_epsilon_spent(mode: str) -> None:
    # z pinned: calibrating for these clients' large sampling rate (32 / 120) takes seconds
    cfg = PrivacyConfig.from_dict({"dp": mode, "epsilon": 8.0, "rounds": 4, "noise_multiplier": 1.5})
    swarm = synthetic_swarm(cfg, max_update_norm=1e6)

    first = swarm.run_round(score_clients=False, score_test=False)
    second = swarm.run_round(score_clients=False, score_test=False)

    assert first.used == second.used == 3, (first.excluded, second.excluded)
    assert 0.0 < first.extra["dp_epsilon"] < second.extra["dp_epsilon"] < math.inf
    assert first.extra["dp_noise_multiplier"] == 1.5
    assert set(swarm.epsilon_spent()) == {0, 1, 2}


def test_local_update_with_participant_dp_clips_before_quantization() -> None:
    swarm = synthetic_swarm(None)
    c = swarm.clients[0]
    cfg = PrivacyConfig.from_dict({"dp": "participant", "epsilon": 1.0, "rounds": 1, "clip_norm": 1e-3,
                                   "noise_multiplier": 1e-9})

    upd = local_update(swarm.task, swarm.model.params, c.train, 0, c.index, "cpu", cfg)

    assert upd.dp is not None and upd.pre_clip_norm is not None and upd.pre_clip_norm > 1e-3
    assert norm(upd.result.delta) == pytest.approx(1e-3, rel=1e-3)
