"""Robust aggregation rules: exact, order-independent, bounded against outliers; caps, buckets, parameters."""

import itertools
import math
import random
from decimal import Decimal, getcontext
from fractions import Fraction

import pytest
import torch

from swarmnode.aggregation.codec import (
    GlobalModel,
    QTensor,
    model_hash,
    quantize_delta,
)
from swarmnode.aggregation.errors import UnknownRule
from swarmnode.aggregation.rules import (
    CENTER_PREFIX,
    CLIP_BITS,
    MAX_SAMPLES,
    MOMENTUM_EXPONENT,
    ROBUST_MOMENTUM_PREFIX,
    Contribution,
    RuleSpec,
    aggregate,
    bucket_permutation,
    bucket_seed,
    capped_weights,
    clip_factor,
    fedavg,
    run_rule,
)

# the same small model and honest updates as the classic rules' tests
from tests.unit.test_rules import SHAPES, _contrib, _flat, _flat_float, _honest, _model  # noqa: E402

U = 1 / 1024  # a power of two: hand-computed cases stay exact in fixed point

ROBUST_SPECS = [
    RuleSpec("norm-bounded"),
    RuleSpec("norm-bounded", {"factor": 1.5, "bucket": 2}),
    RuleSpec("centered-clipping"),
    RuleSpec("centered-clipping", {"iters": 2, "tau_factor": 0.8, "bucket": 3}),
    RuleSpec("robust"),
    RuleSpec("robust", {"bucket": 2, "weight_cap": 700}),
    RuleSpec("robust", {"krum_f": 2, "gate": "none", "iters": 1}),
    RuleSpec("median", {"bucket": 2}),
    RuleSpec("multi-krum", {"f": 1, "bucket": 2, "weight_cap": "median"}),
    RuleSpec("fedavgm", {"weight_cap": "median"}),
]



def _vec(*xs: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([x * U for x in xs], dtype=torch.float64)}


def _vec_contribs(rows: list[tuple[float, ...]], samples: int = 100) -> list[Contribution]:
    return [_contrib(_vec(*r), samples) for r in rows]


def _values_in_units(delta: dict[str, QTensor]) -> list[float]:
    return [float(x) / U for x in delta["w"].to_float().double()]


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("spec", ROBUST_SPECS, ids=lambda s: f"{s.name}{s.params}")
def test_bit_identical_under_permutation_across_rounds(spec):
    """Two rounds (the second uses the first's server state) give one hash whatever the input order."""
    first = [_contrib(d, 500 + 37 * i) for i, d in enumerate(_honest(7, seed=1))]
    second = [_contrib(d, 480 + 11 * i) for i, d in enumerate(_honest(7, seed=2))]
    outlier = {k: v * -50 for k, v in _honest(1, seed=3)[0].items()}
    second.append(_contrib(outlier, 10**9))

    def two_rounds(a, b):
        m1, _ = aggregate(spec, _model(), a)
        return model_hash(aggregate(spec, m1, b)[0])

    reference = two_rounds(first, second)
    rng = random.Random(7)
    for _ in range(5):
        a, b = first[:], second[:]
        rng.shuffle(a)
        rng.shuffle(b)
        assert two_rounds(a, b) == reference, f"{spec} depends on input order"


def test_exhaustive_permutations_small():
    contribs = [_contrib(d, 10 * (i + 1)) for i, d in enumerate(_honest(5, seed=9))]
    for spec in (RuleSpec("robust", {"bucket": 2}), RuleSpec("centered-clipping")):
        hashes = {model_hash(aggregate(spec, _model(), list(p))[0]) for p in itertools.permutations(contribs)}
        assert len(hashes) == 1, spec


def test_threads_do_not_change_robust_results():
    contribs = [_contrib(d, 50 + i) for i, d in enumerate(_honest(9))]
    before = torch.get_num_threads()
    try:
        hashes = set()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            hashes.add(model_hash(aggregate(RuleSpec("robust"), _model(), contribs)[0]))
        assert len(hashes) == 1
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- exact clipping


def test_clip_factor_is_floor_of_exact_value():
    getcontext().prec = 80
    rng = random.Random(3)
    for _ in range(200):
        norm = Fraction(rng.randint(1, 10**12), rng.randint(1, 10**9))
        bound = Fraction(rng.randint(1, 10**12), rng.randint(1, 10**9))
        got = clip_factor(norm, bound)
        if norm <= bound:
            assert got == 1 << CLIP_BITS
            continue
        exact = (Decimal(bound.numerator) * norm.denominator / (Decimal(bound.denominator) * norm.numerator)).sqrt()
        assert got == int(exact * (1 << CLIP_BITS)), (norm, bound)
    assert clip_factor(Fraction(4), Fraction(1)) == 1 << (CLIP_BITS - 1)  # half, exactly
    assert clip_factor(Fraction(5), Fraction(0)) == 0
    assert clip_factor(Fraction(0), Fraction(0)) == 1 << CLIP_BITS


# ---------------------------------------------------------------- hand-computed cases


def test_norm_bounded_by_hand():
    # norms 1, 5, 10 (in U); the lower median is 5: (6, 8) is halved to (3, 4); the mean is (2, 3)
    contribs = _vec_contribs([(0, 1), (3, 4), (6, 8)])
    result = run_rule(RuleSpec("norm-bounded"), contribs, {})
    assert _values_in_units(result.delta) == [2.0, 3.0]
    assert set(result.used) == {c.update_id for c in contribs} and result.excluded == ()
    # factor 2: the bound is 10, nothing is clipped: the plain mean (3, 13/3) up to one unit of the last place
    got = _values_in_units(run_rule(RuleSpec("norm-bounded", {"factor": 2}), contribs, {}).delta)
    assert got == pytest.approx([3.0, 13 / 3], abs=1e-5)
    # a fixed bound of 1 (real units is U * 1): every row is scaled to norm 1
    fixed = run_rule(RuleSpec("norm-bounded", {"bound": U}), contribs, {})
    assert _values_in_units(fixed.delta) == pytest.approx([(0 + 0.6 + 0.6) / 3, (1 + 0.8 + 0.8) / 3], abs=1e-6)


def test_centered_clipping_by_hand_and_its_state():
    contribs = _vec_contribs([(0, 1), (3, 4), (60, 80)])
    spec = RuleSpec("centered-clipping", {"iters": 1, "tau": 5 * U})
    model = GlobalModel({"w": torch.zeros(2)})
    m1, r1 = aggregate(spec, model, contribs)
    # centre 0, tau 5: (60, 80) -> (3, 4); v = ((0 + 3 + 3) / 3, (1 + 4 + 4) / 3) = (2, 3)
    assert _values_in_units(r1.delta) == [2.0, 3.0]
    centre = m1.server_state[CENTER_PREFIX + "w"]
    assert centre.exponent == MOMENTUM_EXPONENT
    assert [float(x) / U for x in centre.to_float().double()] == [2.0, 3.0]
    # round 2 from centre (2, 3) with inputs (2, 3), (2, 6), (2, 103): diffs 0, 3, 100 -> 0, 3, 5 -> v = (2, 3 + 8/3)
    m2, r2 = aggregate(spec, m1, _vec_contribs([(2, 3), (2, 6), (2, 103)]))
    assert _values_in_units(r2.delta) == pytest.approx([2.0, 3 + 8 / 3], abs=1e-5)


def test_centered_clipping_one_iteration_from_zero_is_norm_bounded():
    contribs = [_contrib(d, 300) for d in _honest(6, seed=4)]
    cc = run_rule(RuleSpec("centered-clipping", {"iters": 1}), contribs, {})
    nb = run_rule(RuleSpec("norm-bounded"), contribs, {})
    for name in SHAPES:
        assert torch.equal(cc.delta[name].values, nb.delta[name].values)
        assert cc.delta[name].exponent == nb.delta[name].exponent


def test_more_iterations_move_the_centre_closer_to_the_honest_cluster():
    honest = _honest(7, seed=5)
    attackers = [{k: v * -30 for k, v in d.items()} for d in _honest(2, seed=6)]
    contribs = [_contrib(d, 100) for d in honest + attackers]
    target = sum(_flat_float(d) for d in honest) / len(honest)
    errors = [(_flat(run_rule(RuleSpec("centered-clipping", {"iters": it}), contribs, {}).delta) - target).norm()
              for it in (1, 3, 8)]
    assert errors[2] < errors[0], errors


def test_robust_momentum_matches_fedavgm_when_nothing_is_clipped():
    # identical updates: every norm equals the median, nothing is clipped, centred clipping returns the
    # mean; so robust is fedavgm over the same mean, round after round
    same = _honest(1, seed=8)[0]
    contribs = [Contribution(bytes([i]) * 32, 100, quantize_delta(same)) for i in range(5)]
    params = {"server_lr": 1.0, "momentum": 0.5}
    r_model, f_model = _model(), _model()
    for _ in range(3):
        r_model, r_res = aggregate(RuleSpec("robust", params), r_model, contribs)
        f_model, f_res = aggregate(RuleSpec("fedavgm", params), f_model, contribs)
        for name in SHAPES:
            assert torch.equal(r_res.delta[name].values, f_res.delta[name].values)
    assert set(r_model.server_state) == ({CENTER_PREFIX + n for n in SHAPES}
                                         | {ROBUST_MOMENTUM_PREFIX + n for n in SHAPES})


# ---------------------------------------------------------------- outliers


@pytest.mark.parametrize("spec", [RuleSpec("norm-bounded"), RuleSpec("centered-clipping"), RuleSpec("robust"),
                                  RuleSpec("robust", {"bucket": 2})], ids=lambda s: f"{s.name}{s.params}")
def test_a_large_norm_outlier_is_bounded(spec):
    honest = _honest(9, seed=11)
    outlier = {k: v * 1e4 for k, v in _honest(1, seed=12)[0].items()}
    contribs = [_contrib(d, 600) for d in honest] + [_contrib(outlier, 600)]
    honest_mean = sum(_flat_float(d) for d in honest) / len(honest)
    honest_norms = [_flat_float(d).norm().item() for d in honest]
    got = _flat(run_rule(spec, contribs, {}).delta)
    # every row is bounded by the median norm (the centred-clipping steps by the median distance), so the
    # aggregate stays near the honest mean, no longer than the longest honest update
    assert got.norm().item() <= max(honest_norms) * 1.001, spec
    assert (got - honest_mean).norm().item() <= 0.2 * honest_mean.norm().item(), spec
    plain = _flat(fedavg(contribs).delta)
    assert (plain - honest_mean).norm().item() > 10 * honest_mean.norm().item()  # unbounded, it dominates


def test_robust_rules_resist_sign_flipped_scaled_pair():
    honest = _honest(8, seed=13)
    attackers = [{k: -100.0 * v for k, v in d.items()} for d in _honest(2, seed=13)]
    contribs = [_contrib(d, 600) for d in honest + attackers]
    honest_mean = sum(_flat_float(d) for d in honest) / len(honest)
    for spec in (RuleSpec("centered-clipping"), RuleSpec("robust")):
        got = _flat(run_rule(spec, contribs, {}).delta)
        assert (got - honest_mean).norm().item() / honest_mean.norm().item() < 0.2, spec
        assert torch.nn.functional.cosine_similarity(got, honest_mean, dim=0).item() > 0.98


def test_the_gate_drops_updates_that_oppose_the_coordinate_wise_median():
    honest = _honest(8, seed=41)
    flipped = [{k: -v for k, v in d.items()} for d in _honest(2, seed=41)[:2]]
    contribs = [_contrib(d, 100) for d in honest + flipped]
    bad_ids = {c.update_id for c in contribs[8:]}
    gated = run_rule(RuleSpec("robust"), contribs, {})
    assert {uid for uid, _ in gated.excluded} == bad_ids
    assert all(why == "opposes the coordinate-wise median" for _, why in gated.excluded)
    assert not bad_ids & set(gated.used)
    open_gate = run_rule(RuleSpec("robust", {"gate": "none"}), contribs, {})
    assert open_gate.excluded == () and bad_ids <= set(open_gate.used)
    honest_mean = sum(_flat_float(d) for d in honest) / len(honest)
    err = [(_flat(r.delta) - honest_mean).norm().item() for r in (gated, open_gate)]
    assert err[0] < err[1] / 2, err


def test_the_gate_never_drops_half_or_more():
    # four against four: no majority to gate with
    a = _honest(4, seed=43)
    contribs = [_contrib(d, 100) for d in a] + [_contrib({k: -v for k, v in d.items()}, 100) for d in a]
    assert run_rule(RuleSpec("robust"), contribs, {}).excluded == ()
    # identical honest updates: nothing opposes anything
    same = quantize_delta(_honest(1, seed=44)[0])
    assert run_rule(RuleSpec("robust"), [Contribution(bytes([i]) * 32, 5, same) for i in range(4)], {}).excluded == ()


def test_robust_krum_selection_reports_what_it_drops():
    honest = _honest(7, seed=45)
    bad = [{k: v * 40 + 0.05 for k, v in d.items()} for d in _honest(2, seed=46)]
    contribs = [_contrib(d, 100) for d in honest + bad]
    res = run_rule(RuleSpec("robust", {"krum_f": 2, "gate": "none"}), contribs, {})
    assert {uid for uid, _ in res.excluded} == {c.update_id for c in contribs[7:]}
    assert all(why.startswith("krum score rank") for _, why in res.excluded)
    assert len(res.used) == 7


# ---------------------------------------------------------------- bucketing


def test_bucket_seed_and_permutation_depend_only_on_the_ids():
    ids = [bytes([i]) * 32 for i in range(9)]
    perm = bucket_permutation(ids)
    assert sorted(perm) == list(range(9))
    by_id = [ids[i] for i in perm]
    rng = random.Random(2)
    for _ in range(5):
        shuffled = ids[:]
        rng.shuffle(shuffled)
        assert bucket_seed(shuffled) == bucket_seed(ids)
        assert [shuffled[i] for i in bucket_permutation(shuffled)] == by_id
    changed = ids[:-1] + [b"\xff" * 32]
    assert bucket_seed(changed) != bucket_seed(ids)
    orders = {tuple(bucket_permutation([bytes([i, j]) * 16 for i in range(6)])) for j in range(20)}
    assert len(orders) > 10, "the permutation should look random across id sets"


def test_bucket_contents_do_not_change_the_grouping():
    ids = [bytes([i]) * 32 for i in range(6)]
    a = [Contribution(uid, 100, quantize_delta(d)) for uid, d in zip(ids, _honest(6, seed=1), strict=True)]
    b = [Contribution(uid, 7 + i, quantize_delta(d)) for i, (uid, d) in enumerate(zip(ids, _honest(6, seed=2),
                                                                                      strict=True))]
    # median over 3 buckets of 2 picks the middle bucket; which updates form it depends only on the ids
    perm = bucket_permutation(ids)
    for contribs in (a, b):
        res = run_rule(RuleSpec("median", {"bucket": 2}), contribs, {})
        pairs = [perm[j : j + 2] for j in range(0, 6, 2)]
        means = []
        for pair in pairs:
            w = capped_weights([contribs[i] for i in pair], "none")
            means.append(sum(_flat(contribs[i].tensors) * wi for i, wi in zip(pair, w, strict=True)) / sum(w))
        expected = torch.stack(means).median(dim=0).values
        assert torch.allclose(_flat(res.delta), expected, atol=1e-7)
        assert set(res.used) == set(ids)


def test_one_bucket_of_everything_is_fedavg():
    contribs = [_contrib(d, 100 + i) for i, d in enumerate(_honest(5, seed=3))]
    whole = run_rule(RuleSpec("fedavg", {"bucket": 5}), contribs, {})
    assert torch.allclose(_flat(whole.delta), _flat(fedavg(contribs).delta), atol=1e-7)


def test_bucketed_krum_reports_real_update_ids():
    honest = _honest(6, seed=21)
    bad = [{k: v * -100 for k, v in d.items()} for d in _honest(2, seed=22)]
    contribs = [_contrib(d, 100) for d in honest + bad]
    res = run_rule(RuleSpec("multi-krum", {"f": 1, "bucket": 2}), contribs, {})
    ids = {c.update_id for c in contribs}
    assert set(res.used) | {uid for uid, _ in res.excluded} == ids
    assert all(why.startswith("bucket krum score") for _, why in res.excluded)


# ---------------------------------------------------------------- sample-weight caps


def test_capped_weights_on_both_sides():
    cs = [Contribution(bytes([i]) * 32, n, {}) for i, n in enumerate([10, 20, 30, 2**40, 0])]
    assert capped_weights(cs, "none") == [10, 20, 30, MAX_SAMPLES, 1]
    assert capped_weights(cs, "median") == [10, 20, 20, 20, 1]  # lower median of (0, 10, 20, 30, 2**40)
    assert capped_weights(cs, 15) == [10, 15, 15, 15, 1]
    assert capped_weights(cs, 1) == [1, 1, 1, 1, 1]
    assert capped_weights(cs, 10**12) == [10, 20, 30, MAX_SAMPLES, 1]


def test_median_cap_stops_an_inflated_report():
    honest = _honest(5, seed=31)
    liar = {k: v * -1 for k, v in honest[0].items()}
    contribs = [_contrib(d, 1000 + i) for i, d in enumerate(honest)] + [_contrib(liar, 2**24)]
    honest_mean = sum(_flat_float(d) for d in honest) / len(honest)
    trusting = _flat(run_rule(RuleSpec("fedavg"), contribs, {}).delta)
    capped = _flat(run_rule(RuleSpec("fedavg", {"weight_cap": "median"}), contribs, {}).delta)
    assert torch.nn.functional.cosine_similarity(trusting, honest_mean, dim=0).item() < -0.9  # the liar wins
    assert torch.nn.functional.cosine_similarity(capped, honest_mean, dim=0).item() > 0.5
    # the cap is the lower median of 1000..1004 and 2**24, 1002: the same as everyone above it reporting 1002
    as_median = [Contribution(c.update_id, min(c.num_samples, 1002), c.tensors) for c in contribs]
    assert torch.equal(capped, _flat(run_rule(RuleSpec("fedavg"), as_median, {}).delta))
    # below the cap nothing changes: honest counts 1000..1004 under a cap of 5000 give plain fedavg
    assert torch.equal(_flat(run_rule(RuleSpec("fedavg", {"weight_cap": 5000}), contribs[:-1], {}).delta),
                       _flat(run_rule(RuleSpec("fedavg"), contribs[:-1], {}).delta))


def test_robust_rules_cap_by_default_and_can_trust_reports():
    contribs = _vec_contribs([(1, 0)], 100) + _vec_contribs([(0, 1)], 100) + _vec_contribs([(1, 1)], 10**6)
    default = _values_in_units(run_rule(RuleSpec("norm-bounded", {"factor": 10}), contribs, {}).delta)
    assert default == pytest.approx([2 / 3, 2 / 3], abs=1e-6)  # all three weigh 100
    trusting = _values_in_units(run_rule(RuleSpec("norm-bounded", {"factor": 10, "weight_cap": "none"}),
                                         contribs, {}).delta)
    assert trusting[0] > 0.99 and trusting[1] > 0.99


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("spec", [
    RuleSpec("robust", {"itres": 2}),
    RuleSpec("robust", {"iters": 0}),
    RuleSpec("robust", {"iters": 1.5}),
    RuleSpec("robust", {"momentum": 1.0}),
    RuleSpec("robust", {"server_lr": 0}),
    RuleSpec("robust", {"bucket": 0}),
    RuleSpec("robust", {"weight_cap": "mean"}),
    RuleSpec("robust", {"weight_cap": 0}),
    RuleSpec("robust", {"weight_cap": True}),
    RuleSpec("robust", {"gate": "mean"}),
    RuleSpec("robust", {"gate": True}),
    RuleSpec("robust", {"krum_f": -1}),
    RuleSpec("centered-clipping", {"tau": -1}),
    RuleSpec("centered-clipping", {"tau": "nan"}),
    RuleSpec("centered-clipping", {"tau_factor": 0}),
    RuleSpec("centered-clipping", {"factor": 2}),
    RuleSpec("norm-bounded", {"factor": "x"}),
    RuleSpec("norm-bounded", {"iters": 2}),
    RuleSpec("norm-bounded", {"bucket": "two"}),
    RuleSpec("median", {"bucket": 65}),
    RuleSpec("fedavg", {"weight_cap": -3}),
    RuleSpec("multi-krum", {"f": 1.5}),
    RuleSpec("robust-ish"),
], ids=lambda s: f"{s.name}{s.params}")
def test_bad_parameters_are_unknown_rule(spec):
    with pytest.raises(UnknownRule):
        run_rule(spec, [_contrib(d, 10) for d in _honest(3)], {})


def test_good_parameters_in_genesis_forms():
    contribs = [_contrib(d, 10) for d in _honest(3)]
    for spec in (RuleSpec("robust", {"iters": "2", "bucket": 2.0, "weight_cap": "50", "tau": 0.0001}),
                 RuleSpec("centered-clipping", {"weight_cap": "none", "tau_factor": 1.5}),
                 RuleSpec("norm-bounded", {"bound": 1, "weight_cap": 3})):
        res = run_rule(spec, contribs, {})
        assert all(math.isfinite(float(v.to_float().abs().max())) for v in res.delta.values())
