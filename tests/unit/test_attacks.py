"""The Byzantine attack library and the simulation's model of what the protocol does with each attack."""

import dataclasses
import math

import pytest
import torch

from swarmnode.adversary.attacks import (
    ATTACKS,
    INFLATED_SAMPLES,
    Adversary,
    AttackError,
    Changes,
    RoundContext,
    Submission,
    absurd_norm_blob,
    alie,
    alie_z,
    encode,
    encode_distinct,
    flip_labels,
    gaussian_noise,
    ipm,
    make_attack,
    min_max,
    non_finite_blob,
    scale,
    sign_flip,
    wrong_shape_blob,
)
from swarmnode.aggregation.codec import content_id, decode_update
from swarmnode.aggregation.errors import MalformedBlob, NormTooLarge, WrongShape
from swarmnode.aggregation.validate import validate_update
from swarmnode.experiment import Commit, Swarm, include_commits
from swarmnode.learning.data import Dataset, Split
from swarmnode.learning.tasks import Task

SHAPES = {"fc.weight": (5, 8), "fc.bias": (5,)}
PARAMS = {k: torch.zeros(s) for k, s in SHAPES.items()}


def _deltas(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) * 0.01 for k, s in SHAPES.items()}
    return [{k: base[k] + torch.randn(s, generator=g) * 0.003 for k, s in SHAPES.items()} for _ in range(n)]


def _flat(d) -> torch.Tensor:
    return torch.cat([d[k].reshape(-1).double() for k in sorted(d)])


def _ctx(index: int = 7, round_: int = 3, **kw) -> RoundContext:
    honest = _deltas(8, seed=1)
    own = _deltas(1, seed=2)[0]
    base = dict(round=round_, index=index, own=own, own_blob=encode(own), num_samples=5400, honest=honest, n=10, f=2,
                history=(), peer_blobs=tuple(encode(d) for d in honest), seed=0)
    base.update(kw)
    return RoundContext(**base)


# ---------------------------------------------------------------- the registry


def test_every_registered_attack_builds_and_crafts():
    assert {"sign-flip", "scaling", "gaussian", "alie", "ipm", "min-max", "label-flip", "nan", "inf", "wrong-shape",
            "inflated-samples", "replay-old", "replay-peer", "withhold", "equivocate"} <= set(ATTACKS)
    for name in ATTACKS:
        attack = make_attack(name)
        assert attack.name == name
        sub = attack.craft(_ctx())
        assert isinstance(sub, Submission) and len(sub.committed_hash) == 32
        ch = attack.changes
        assert ch.delta or ch.samples or ch.served or ch.data or ch.reveals, name


def test_the_silent_attack_commits_honestly_and_only_withholds_its_shares():
    attack = make_attack("silent")
    ctx = _ctx()
    assert attack.changes == Changes(reveals=True)
    assert attack.craft(ctx) == Submission.of(ctx.own_blob, ctx.num_samples)


def test_what_each_attack_changes():
    assert make_attack("alie").changes.omniscient and make_attack("min-max").changes.omniscient
    assert not make_attack("sign-flip").changes.omniscient
    assert make_attack("label-flip").changes.data and not make_attack("label-flip").changes.delta
    assert make_attack("inflated-samples").changes.samples
    assert make_attack("withhold").changes.served and make_attack("equivocate").changes.served


def test_unknown_attack_and_bad_parameters():
    with pytest.raises(AttackError, match="unknown attack"):
        make_attack("sybil")
    with pytest.raises(AttackError):
        make_attack("scaling", fctor=3)
    with pytest.raises(AttackError):
        make_attack("gaussian", sigma=0)
    with pytest.raises(AttackError):
        make_attack("inflated-samples", samples=0)
    with pytest.raises(AttackError, match="honest deltas"):
        make_attack("ipm").craft(_ctx(honest=()))


# ---------------------------------------------------------------- delta attacks


def test_sign_flip_and_scaling():
    d = _deltas(1)[0]
    assert torch.equal(_flat(sign_flip(d)), -_flat(d))
    assert torch.allclose(_flat(scale(d, 10.0)), 10 * _flat(d))
    sub = make_attack("scaling", factor=-4.0).craft(_ctx())
    got = decode_update(sub.served)
    assert torch.allclose(torch.cat([got[k].to_float().reshape(-1).double() for k in sorted(got)]),
                          -4 * _flat(_ctx().own), atol=1e-7)


def test_gaussian_noise_is_seeded():
    d = {"w": torch.zeros(20000)}
    a, b, c = gaussian_noise(d, 0.5, 1), gaussian_noise(d, 0.5, 1), gaussian_noise(d, 0.5, 2)
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])
    assert abs(a["w"].std().item() - 0.5) < 0.02
    attack = make_attack("gaussian", sigma=0.2)
    assert attack.craft(_ctx()).committed_hash == attack.craft(_ctx()).committed_hash
    assert attack.craft(_ctx()).committed_hash != attack.craft(_ctx(round_=4)).committed_hash


def test_alie_z_from_the_paper_formula():
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-12)  # s = 5: quantile 0.5
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)  # s = 4: Phi^-1(0.6)
    assert alie_z(10, 3) == pytest.approx(0.5244, abs=1e-4)  # s = 3: Phi^-1(0.7)
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-4)  # s = 26 - 12 = 14: Phi^-1(36 / 50)
    with pytest.raises(AttackError):
        alie_z(10, 6)


def test_alie_is_mean_minus_z_std():
    honest = _deltas(6, seed=4)
    x = torch.stack([_flat(d) for d in honest])
    got = _flat(alie(honest, 10, 3))
    assert torch.allclose(got, x.mean(0) - alie_z(10, 3) * x.std(0), atol=1e-6)
    assert torch.allclose(_flat(alie(honest, 10, 3, z=1.5)), x.mean(0) - 1.5 * x.std(0), atol=1e-6)


def test_ipm_is_minus_epsilon_mean():
    honest = _deltas(5, seed=5)
    mean = torch.stack([_flat(d) for d in honest]).mean(0)
    assert torch.allclose(_flat(ipm(honest, 0.1)), -0.1 * mean, atol=1e-7)
    assert torch.dot(_flat(ipm(honest, 2.0)), mean) < 0


def test_min_max_stays_within_the_honest_spread_and_is_maximal():
    honest = _deltas(7, seed=6)
    x = torch.stack([_flat(d) for d in honest])
    mu = x.mean(0)
    got = _flat(min_max(honest))
    max_pair = torch.cdist(x, x).max().item()
    assert (x - got).norm(dim=1).max().item() <= max_pair * (1 + 1e-5)
    gamma = (got - mu).norm().item()
    assert gamma > 0
    unit = -mu / mu.norm()
    assert torch.allclose((got - mu) / gamma, unit, atol=1e-4)  # along -mean
    farther = mu + (gamma + 1e-3) * unit
    assert (x - farther).norm(dim=1).max().item() > max_pair  # a slightly larger gamma breaks the bound


def test_omniscient_attackers_commit_distinct_hashes():
    for name in ("alie", "ipm", "min-max"):
        attack = make_attack(name)
        hashes = {attack.craft(_ctx(index=i)).committed_hash for i in (7, 8, 9)}
        assert len(hashes) == 3, name
    d = _deltas(1)[0]
    assert encode_distinct(d, 1) != encode_distinct(d, 2) != encode(d)
    back = decode_update(encode_distinct(d, 3))
    assert torch.allclose(torch.cat([back[k].to_float().reshape(-1).double() for k in sorted(back)]), _flat(d),
                          atol=1e-6)


def test_label_flip_transforms_training_labels():
    y = torch.arange(10).repeat(3)
    assert torch.equal(flip_labels(y), 9 - y)
    assert torch.equal(flip_labels(flip_labels(y)), y)
    attack = make_attack("label-flip")
    assert torch.equal(attack.labels(y), 9 - y)
    assert torch.equal(make_attack("sign-flip").labels(y), y)
    sub = attack.craft(_ctx())
    assert sub == Submission.of(_ctx().own_blob, 5400)  # it then behaves honestly with what it learned


# ---------------------------------------------------------------- bytes, samples, availability


def test_non_finite_bytes_do_not_decode():
    d = _deltas(1)[0]
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(MalformedBlob):
            decode_update(non_finite_blob(d, value))
    assert non_finite_blob(d, math.nan, 1) != non_finite_blob(d, math.nan, 2)


def test_absurd_norm_decodes_and_is_rejected():
    upd = decode_update(absurd_norm_blob(_deltas(1)[0]))
    with pytest.raises(NormTooLarge):
        validate_update(upd, PARAMS)


def test_wrong_shape_decodes_and_is_rejected():
    upd = decode_update(wrong_shape_blob(_deltas(1)[0]))
    assert tuple(upd["fc.weight"].values.shape) == (4, 8)
    with pytest.raises(WrongShape):
        validate_update(upd, PARAMS)


def test_inflated_samples_keeps_the_honest_update():
    sub = make_attack("inflated-samples").craft(_ctx())
    assert sub.num_samples == INFLATED_SAMPLES == 2**24
    assert sub.served == _ctx().own_blob and sub.available()


def test_replays():
    old = encode(_deltas(1, seed=9)[0])
    first = make_attack("replay-old").craft(_ctx())
    assert first == Submission.of(_ctx().own_blob, 5400)  # nothing to replay in its first round
    again = make_attack("replay-old").craft(_ctx(history=(old, b"later")))
    assert again.served == old and again.committed_hash == content_id(old)
    assert make_attack("replay-old", age=1).craft(_ctx(history=(old, encode(_deltas(1)[0])))).served != old
    peer = make_attack("replay-peer").craft(_ctx(index=2))
    assert peer.committed_hash == content_id(_ctx().peer_blobs[2])  # same bytes, same hash


def test_withhold_and_equivocate_are_unavailable():
    ctx = _ctx()
    withheld = make_attack("withhold").craft(ctx)
    assert withheld.served is None and not withheld.available()
    equivocal = make_attack("equivocate").craft(ctx)
    assert equivocal.served == ctx.own_blob and content_id(equivocal.served) != equivocal.committed_hash
    assert not equivocal.available()
    assert Submission.of(ctx.own_blob, 1).available()


# ---------------------------------------------------------------- the protocol model in the simulation


def test_include_commits_models_the_contract_and_availability():
    a, b = encode(_deltas(1, 1)[0]), encode(_deltas(1, 2)[0])
    commits = [
        Commit(0, content_id(a), 100, a),
        Commit(1, content_id(b), 100, b),
        Commit(2, content_id(a), 100, a),  # a replay of participant 0's bytes
        Commit(3, content_id(b"x"), 100, None),  # withheld
        Commit(4, content_id(b"y"), 100, b"z"),  # equivocation
        Commit(5, content_id(b"w"), 0, b"w"),  # zero samples
        Commit(6, content_id(b"v"), 2**64, b"v"),  # above the contract's bound
        Commit(7, content_id(b"u"), 2**64 - 1, b"u"),  # at the bound: accepted (weights are capped later)
    ]
    included, refused = include_commits(commits)
    assert [c.client for c in included] == [0, 1, 7]
    assert [why for _, why in refused] == ["duplicate-hash", "unavailable:withheld", "unavailable:hash-mismatch",
                                           "bad-num-samples", "bad-num-samples"]
    # a genesis max_samples bound refuses an inflated report outright
    capped, refused = include_commits([Commit(0, content_id(a), 12000, a), Commit(1, content_id(b), 12001, b)], 12000)
    assert [c.client for c in capped] == [0] and [why for _, why in refused] == ["bad-num-samples"]


def test_an_honest_share_above_max_samples_is_committed_at_the_cap_as_a_daemon_does() -> None:
    """Unequal shares (Dirichlet) under a genesis max_samples below the largest: a daemon commits
    min(trained, max_samples) (RoundWork.train), so the simulation must weigh that client at the cap, not
    drop it as bad-num-samples, nor weigh it by its whole share."""
    from swarmnode.aggregation.codec import GlobalModel, model_hash
    from swarmnode.aggregation.rules import RuleSpec, aggregate
    from swarmnode.experiment import build_clients, contribution_from_blob, local_update
    from swarmnode.learning.tasks import initial_params

    g = torch.Generator().manual_seed(0)
    train = Split(torch.randint(0, 256, (400, 28, 28), generator=g, dtype=torch.uint8), torch.arange(10).repeat(40))
    test = Split(torch.randint(0, 256, (100, 28, 28), generator=g, dtype=torch.uint8), torch.arange(10).repeat(10))
    data = Dataset("synthetic", train, test, "test")
    task = dataclasses.replace(Task(), model="mlp", num_clients=4, partition="dirichlet",
                               partition_params={"alpha": 0.3}, local_steps=2, rule="fedavgm", rule_params={})
    shares = [len(c.train) for c in build_clients(task, data)]
    cap = sorted(shares)[-2]
    assert max(shares) > cap, f"shares {shares} are not unequal enough to test the cap"
    report = Swarm(task, data, max_samples=cap).run_round(score_clients=False, score_test=False)
    assert report.used == 4 and not report.excluded, report.excluded

    def daemons(limit: int) -> bytes:  # what the daemons aggregate: every commit, numSamples capped at limit
        base = GlobalModel(initial_params(task))
        ups = [local_update(task, base.params, c.train, 0, c.index) for c in build_clients(task, data)]
        contribs = [contribution_from_blob(u.blob, min(u.result.num_samples, limit), base.params,
                                           task.max_update_norm) for u in reversed(ups)]
        return model_hash(aggregate(RuleSpec(task.rule, dict(task.rule_params)), base, contribs)[0])

    assert report.model_hash == daemons(cap) != daemons(max(shares))


def _tiny_swarm(attack: str | None, attackers=frozenset({2}), rule: str = "robust") -> Swarm:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(40)
    train = Split(torch.randint(0, 256, (400, 28, 28), generator=g, dtype=torch.uint8), labels)
    test = Split(torch.randint(0, 256, (100, 28, 28), generator=g, dtype=torch.uint8), torch.arange(10).repeat(10))
    task = dataclasses.replace(Task(), model="mlp", num_clients=4, partition="iid", partition_params={},
                               local_steps=2, rule=rule, rule_params={})
    adv = None if attack is None else Adversary(make_attack(attack), attackers)
    return Swarm(task, Dataset("synthetic", train, test, "test"), adv)


@pytest.mark.parametrize("attack,reason", [("nan", "malformed"), ("wrong-shape", "wrong-shape"),
                                           ("absurd-norm", "norm-too-large"), ("withhold", "unavailable:withheld"),
                                           ("equivocate", "unavailable:hash-mismatch"),
                                           ("replay-peer", "duplicate-hash")])
def test_the_swarm_excludes_what_the_protocol_excludes(attack, reason):
    swarm = _tiny_swarm(attack, frozenset({1, 3}))
    rep = swarm.run_round(score_clients=False, score_test=False)
    assert rep.used == 2
    assert [why for _, why in rep.excluded] == [reason, reason]
    assert math.isnan(rep.global_test.accuracy)


def test_the_swarm_runs_poisoned_updates_through_the_rule():
    clean, attacked = _tiny_swarm(None), _tiny_swarm("sign-flip")
    r_clean = clean.run_round(score_clients=False)
    r_bad = attacked.run_round(score_clients=False)
    assert r_bad.used == 4 and r_bad.excluded == [] and r_bad.model_hash != r_clean.model_hash
    again = _tiny_swarm("sign-flip").run_round(score_clients=False)
    assert again.model_hash == r_bad.model_hash  # deterministic


def test_replay_old_resends_round_zero_and_label_flip_changes_training():
    swarm = _tiny_swarm("replay-old")
    swarm.run_round(score_clients=False, score_test=False)
    swarm.run_round(score_clients=False, score_test=False)
    assert len(swarm.committed[2]) == 2 and swarm.committed[2][0] == swarm.committed[2][1]
    flipped = _tiny_swarm("label-flip")
    assert torch.equal(flipped._train_data(flipped.clients[2]).labels, 9 - flipped.clients[2].train.labels)
    assert torch.equal(flipped._train_data(flipped.clients[1]).labels, flipped.clients[1].train.labels)


def test_the_swarm_without_an_adversary_keeps_tamper():
    a = _tiny_swarm(None).run_round(score_clients=False, score_test=False)
    b = _tiny_swarm(None).run_round({1: -1.0}, score_clients=False, score_test=False)
    assert a.used == b.used == 4 and a.model_hash != b.model_hash
