"""Aggregation rules: exact, order-independent, robust where they claim to be."""

import itertools
import random

import pytest
import torch

from swarmnode.aggregation.codec import GlobalModel, content_id, encode_update, model_hash, quantize_delta
from swarmnode.aggregation.rules import Contribution, RuleSpec, aggregate, fedavg, krum_scores, run_rule

SHAPES = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (10, 36)}


def _honest(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) * 0.01 for k, s in SHAPES.items()}
    return [{k: base[k] + torch.randn(s, generator=g) * 0.002 for k, s in SHAPES.items()} for _ in range(n)]


def _contrib(delta: dict[str, torch.Tensor], samples: int) -> Contribution:
    upd = quantize_delta(delta)
    return Contribution(content_id(encode_update(upd)), samples, upd)


def _model() -> GlobalModel:
    return GlobalModel({k: torch.zeros(s) for k, s in SHAPES.items()})


def _flat(delta) -> torch.Tensor:
    return torch.cat([delta[k].to_float().reshape(-1).double() for k in sorted(delta)])


def _flat_float(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d[k].reshape(-1).double() for k in sorted(d)])


ALL_RULES = [
    RuleSpec("fedavg"),
    RuleSpec("fedavgm", {"server_lr": 1.0, "momentum": 0.9}),
    RuleSpec("median"),
    RuleSpec("trimmed-mean", {"beta": 0.2}),
    RuleSpec("krum", {"f": 2}),
    RuleSpec("multi-krum", {"f": 2, "m": 5}),
]


@pytest.mark.parametrize("spec", ALL_RULES, ids=lambda s: s.name)
def test_bit_identical_under_permutation_and_repetition(spec):
    contribs = [_contrib(d, 100 + 37 * i) for i, d in enumerate(_honest(7))]
    reference, _ = aggregate(spec, _model(), contribs)
    ref_hash = model_hash(reference)
    rng = random.Random(5)
    for _ in range(6):
        shuffled = contribs[:]
        rng.shuffle(shuffled)
        again, _ = aggregate(spec, _model(), shuffled)
        assert model_hash(again) == ref_hash, f"{spec.name} depends on input order"
    for _ in range(2):
        assert model_hash(aggregate(spec, _model(), contribs)[0]) == ref_hash, f"{spec.name} not repeatable"


def test_threads_do_not_change_the_result():
    contribs = [_contrib(d, 50 + i) for i, d in enumerate(_honest(9))]
    before = torch.get_num_threads()
    try:
        hashes = set()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            hashes.add(model_hash(aggregate(RuleSpec("fedavg"), _model(), contribs)[0]))
        assert len(hashes) == 1
    finally:
        torch.set_num_threads(before)


def test_fedavg_matches_float64_reference_within_quantization_bound():
    deltas = _honest(6, seed=3)
    samples = [10, 200, 35, 4000, 1, 77]
    contribs = [_contrib(d, n) for d, n in zip(deltas, samples, strict=True)]
    result = fedavg(contribs)
    ref = sum(_flat_float(d) * n for d, n in zip(deltas, samples, strict=True)) / sum(samples)
    got = _flat(result.delta)
    # Each input is within half a step of its own scale; the common scale is the median exponent.
    step = max(2.0 ** -c.tensors[k].exponent for c in contribs for k in c.tensors)
    assert (got - ref).abs().max().item() <= step, f"max error {(got - ref).abs().max().item()} > {step}"
    assert (got - ref).abs().max().item() < 1e-6


def test_robust_rules_resist_two_scaled_sign_flipped_updates():
    honest = _honest(8, seed=11)
    attackers = [{k: -100.0 * v for k, v in d.items()} for d in _honest(2, seed=11)]
    contribs = [_contrib(d, 600) for d in honest + attackers]
    honest_mean = sum(_flat_float(d) for d in honest) / len(honest)
    scale = honest_mean.norm().item()
    for spec in (RuleSpec("median"), RuleSpec("trimmed-mean", {"beta": 0.2}), RuleSpec("krum", {"f": 2}),
                 RuleSpec("multi-krum", {"f": 2})):
        got = _flat(run_rule(spec, contribs, {}).delta)
        rel = (got - honest_mean).norm().item() / scale
        assert rel < 0.5, f"{spec.name} drifted {rel:.2f}x the honest mean's norm away"
        cos = torch.nn.functional.cosine_similarity(got, honest_mean, dim=0).item()
        assert cos > 0.8, f"{spec.name} points away from the honest mean (cos {cos:.2f})"
    got = _flat(fedavg(contribs).delta)
    rel = (got - honest_mean).norm().item() / scale
    assert rel > 10, f"fedavg should be dragged far off by the attackers, got {rel:.2f}"
    assert torch.nn.functional.cosine_similarity(got, honest_mean, dim=0).item() < 0


def test_krum_excludes_the_attackers_and_says_why():
    honest = _honest(8, seed=2)
    attackers = [{k: -100.0 * v for k, v in d.items()} for d in _honest(2, seed=2)]
    contribs = [_contrib(d, 600) for d in honest + attackers]
    attacker_ids = {c.update_id for c in contribs[8:]}
    result = run_rule(RuleSpec("multi-krum", {"f": 2}), contribs, {})
    excluded = {uid for uid, _ in result.excluded}
    assert attacker_ids <= excluded
    assert all("krum score" in why for _, why in result.excluded)
    assert not attacker_ids & set(result.used)
    scores = krum_scores(contribs, 2)
    assert len(scores) == 10


def test_fedavgm_state_carries_momentum_deterministically():
    contribs = [_contrib(d, 100) for d in _honest(4)]
    spec = RuleSpec("fedavgm", {"server_lr": 1.0, "momentum": 0.5})
    m1, r1 = aggregate(spec, _model(), contribs)
    m2, r2 = aggregate(spec, m1, contribs)
    step1 = _flat(r1.delta)
    step2 = _flat(r2.delta)
    # second step = 0.5 * m1 + same delta = 1.5x the first, up to fixed-point rounding
    assert torch.allclose(step2, 1.5 * step1, atol=1e-8)
    assert model_hash(m2) == model_hash(aggregate(spec, aggregate(spec, _model(), contribs[::-1])[0], contribs)[0])


def test_no_contributions_leaves_the_model_unchanged():
    model = _model()
    new, result = aggregate(RuleSpec("median"), model, [])
    assert model_hash(new) == model_hash(model) and result.used == ()


def test_unknown_rule_is_a_typed_error():
    from swarmnode.aggregation.errors import UnknownRule

    with pytest.raises(UnknownRule, match="bogus"):
        run_rule(RuleSpec("bogus"), [_contrib(_honest(1)[0], 1)], {})


def test_median_of_even_count_is_midpoint_exactly():
    deltas = [{k: torch.full(s, float(v) / 1024) for k, s in SHAPES.items()} for v in (1, 2, 3, 10)]
    got = run_rule(RuleSpec("median"), [_contrib(d, 1) for d in deltas], {}).delta
    for k in SHAPES:
        assert torch.all(got[k].to_float() == 2.5 / 1024)


def test_permutations_exhaustively_for_small_inputs():
    contribs = [_contrib(d, 10 * (i + 1)) for i, d in enumerate(_honest(4, seed=9))]
    hashes = {model_hash(aggregate(RuleSpec("trimmed-mean", {"beta": 0.25}), _model(), list(p))[0])
              for p in itertools.permutations(contribs)}
    assert len(hashes) == 1
