"""Secure aggregation (swarmnode/privacy/secagg.py): masks cancel, dropouts, hostile shares, strict decoders.

Every scenario runs the whole chain protocol in one process: key posts, K(r), masked commits, reveals in
chain order, unmasking. Names read as participants, threshold and faults (`n10_drop2_before_2_after`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmnode.privacy import secagg as sa

CHAIN, ROUND = 4242, 17


@dataclass
class Swarm:
    """n participants with registry indices `indices`, their secrets, posts and key set for one round."""

    node_secrets: dict[int, bytes]
    share: dict[int, tuple[bytes, bytes]]
    posts: list[sa.RoundPost]
    round_secrets: dict[int, sa.RoundSecret]
    keyset: sa.KeySet
    threshold: int

    def reveals(self, alive: list[int], committed: list[int]) -> list[tuple[int, bytes]]:
        return [(v, sa.reveal(v, self.share[v][0], self.keyset, committed)) for v in alive]


def make_swarm(indices: list[int], configured: int = 0, chain: int = CHAIN, round_: int = ROUND,
               tamper=None) -> Swarm:
    node_secrets = {i: os.urandom(32) for i in indices}
    share = {i: sa.share_keypair(node_secrets[i], chain) for i in indices}
    recipients = [(i, share[i][1]) for i in indices]
    t = sa.threshold_for(len(indices), configured)
    posts, round_secrets = [], {}
    for i in indices:
        post, secret = sa.make_round_keys(node_secrets[i], i, chain, round_, recipients, t)
        posts.append(tamper(post) if tamper else post)
        round_secrets[i] = secret
    keyset, rejected = sa.build_keyset(chain, round_, posts, {i: share[i][1] for i in indices}, configured)
    assert rejected == {}, f"valid posts rejected: {rejected}"
    return Swarm(node_secrets, share, posts, round_secrets, keyset, t)


def inputs(indices: list[int], seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    lim = sa.MAX_ABS_VALUE
    out = {}
    for i in indices:
        w = rng.integers(-lim, lim + 1, size=(40, 25), dtype=np.int64)
        w[0, :2] = (-lim, lim)  # the extremes of the admitted range
        out[i] = {"layer.weight": w, "layer.bias": rng.integers(-3, 4, size=25, dtype=np.int64),
                  "head.weight": torch.tensor(rng.integers(-1000, 1000, size=(5, 3)), dtype=torch.int64)}
    return out


def plain_sum(xs: dict[int, dict[str, np.ndarray]], members: list[int]) -> dict[str, np.ndarray]:
    return {name: sum(np.asarray(xs[u][name], dtype=np.int64) for u in members) for name in xs[members[0]]}


def assert_exact(result: sa.UnmaskResult, expected: dict[str, np.ndarray]) -> None:
    assert result.ok, f"no sum: {result.reason}; secrets {result.secrets}; revealers {result.revealers}"
    assert sorted(result.sum) == sorted(expected)
    for name, want in expected.items():
        got = result.sum[name]
        assert got.dtype == np.int64 and got.shape == want.shape, f"{name}: {got.dtype} {got.shape}"
        wrong = np.flatnonzero(got != want)
        assert wrong.size == 0, f"{name}: {wrong.size} coordinates differ, first at {wrong[:5]}"


def run_round(swarm: Swarm, xs, committed: list[int], alive: list[int], reveals=None) -> sa.UnmaskResult:
    masked = {u: sa.mask(xs[u], swarm.round_secrets[u], swarm.keyset) for u in committed}
    if reveals is None:
        reveals = swarm.reveals(alive, committed)
    return sa.unmask_sum(masked, swarm.keyset, committed, reveals)


# ---------------------------------------------------------------- masks cancel

@pytest.mark.parametrize("n", [2, 5, 10])
def test_masks_cancel_to_the_exact_plain_sum(n: int) -> None:
    indices = [3 * i + 1 for i in range(n)]  # registry indices need not be contiguous
    swarm = make_swarm(indices)
    xs = inputs(indices, seed=n)
    result = run_round(swarm, xs, committed=indices, alive=indices)
    assert_exact(result, plain_sum(xs, indices))
    assert result.revealers == {} and result.inputs == {}
    assert all(s.recovered and s.needed == "self-seed" for s in result.secrets.values())


def test_n1_masks_with_its_self_mask_only_and_recovers_its_sum() -> None:
    swarm = make_swarm([0])
    xs = inputs([0])
    assert swarm.threshold == 1
    assert_exact(run_round(swarm, xs, [0], [0]), plain_sum(xs, [0]))


# ---------------------------------------------------------------- dropouts

def test_n10_drop2_before_commit_2_after_commit_leaves_t_revealers_and_the_exact_sum() -> None:
    indices = list(range(10))
    swarm = make_swarm(indices)
    assert swarm.threshold == 6
    xs = inputs(indices)
    committed = [u for u in indices if u not in (2, 7)]  # 2 and 7 posted keys, then never committed
    alive = [u for u in committed if u not in (0, 9)]  # 0 and 9 committed, then never revealed
    result = run_round(swarm, xs, committed, alive)
    assert_exact(result, plain_sum(xs, committed))
    assert result.secrets[2].needed == "mask-key" and result.secrets[2].recovered
    assert result.secrets[0].needed == "self-seed" and result.secrets[0].recovered


def test_n10_fewer_than_t_revealers_reports_unrecoverable_without_raising() -> None:
    indices = list(range(10))
    swarm = make_swarm(indices)
    xs = inputs(indices)
    committed = indices[:8]
    alive = indices[:5]  # 5 < t = 6
    result = run_round(swarm, xs, committed, alive)
    assert not result.ok and result.sum is None
    assert result.unrecoverable == tuple(indices)
    assert "5 shares, threshold 6" in result.secrets[0].detail
    assert "unrecoverable" in result.reason


def test_missing_or_misshapen_masked_input_gives_no_sum_and_names_the_participant() -> None:
    indices = list(range(4))
    swarm = make_swarm(indices)
    xs = inputs(indices)
    masked = {u: sa.mask(xs[u], swarm.round_secrets[u], swarm.keyset) for u in indices}
    masked[1] = {k: v[..., :1] for k, v in masked[1].items()}
    del masked[3]
    result = sa.unmask_sum(masked, swarm.keyset, indices, swarm.reveals(indices, indices))
    assert not result.ok
    assert set(result.inputs) == {1, 3}, result.inputs


# ---------------------------------------------------------------- hostile revealers and dealers

def forged_reveal(swarm: Swarm, revealer: int, committed: list[int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    entries = tuple((u, sa.SELF_SEED if u in committed else sa.MASK_KEY,
                     int.from_bytes(rng.bytes(32), "big")) for u in swarm.keyset.indices)
    return sa.encode_reveal(sa.Reveal(CHAIN, ROUND, revealer, entries))


def test_n10_hostile_revealer_first_in_chain_order_is_outvoted_by_honest_shares() -> None:
    indices = list(range(10))
    swarm = make_swarm(indices)
    xs = inputs(indices)
    committed = indices[:9]
    reveals = [(0, forged_reveal(swarm, 0, committed, seed=1))] + swarm.reveals(indices[1:], committed)
    result = run_round(swarm, xs, committed, [], reveals=reveals)
    assert_exact(result, plain_sum(xs, committed))
    assert result.secrets[0].detail == "decoded 10 shares, 1 wrong (revealers [0])", result.secrets[0]
    assert all(result.secrets[u].detail == "first t shares of revealers not caught lying" for u in range(1, 10))


def test_n10_hostile_revealer_with_only_one_spare_share_falls_back_to_the_subset_search() -> None:
    indices = list(range(10))
    swarm = make_swarm(indices)
    xs = inputs(indices)
    committed = indices
    honest = swarm.reveals([2, 3, 4, 5, 6, 7], committed)  # t = 6 honest shares
    reveals = [honest[0], (0, forged_reveal(swarm, 0, committed, 2))] + honest[1:]
    result = run_round(swarm, xs, committed, [], reveals=reveals)
    assert_exact(result, plain_sum(xs, committed))
    assert "subset" in result.secrets[5].detail, result.secrets[5]


def test_a_revealer_disclosing_the_wrong_share_kind_is_ignored_and_named() -> None:
    indices = list(range(5))
    swarm = make_swarm(indices)
    xs = inputs(indices)
    committed = indices[:4]
    wrong = sa.Reveal(CHAIN, ROUND, 4, tuple((u, sa.MASK_KEY, 1) for u in indices))  # s_sk shares of committed
    reveals = [(4, sa.encode_reveal(wrong)), (4, b"second reveal"), (0, b"garbage" * 5)]
    reveals += swarm.reveals(indices[:4], committed)
    result = run_round(swarm, xs, committed, [], reveals=reveals)
    assert_exact(result, plain_sum(xs, committed))
    assert "mask-key share of a committed participant" in result.revealers[4]
    assert "bad magic" in result.revealers[0]


def test_reed_solomon_decoding_corrects_up_to_half_the_spare_shares() -> None:
    rng = np.random.default_rng(3)
    k, n = 6, 14
    coeffs = [int.from_bytes(rng.bytes(33), "big") % sa.FIELD_PRIME for _ in range(k)]
    xs = list(range(1, n + 1))
    ys = [sum(c * x**d for d, c in enumerate(coeffs)) % sa.FIELD_PRIME for x in xs]
    assert sa._rs_decode(xs, ys, k) == coeffs
    for bad in ([0, 5, 9, 13], [1, 2, 3, 4]):  # (n - k) / 2 = 4 errors
        noisy = [(y + 1 + i) % sa.FIELD_PRIME if i in bad else y for i, y in enumerate(ys)]
        assert sa._rs_decode(xs, noisy, k) == coeffs, f"errors at {bad}"
    five = [(y + 1) % sa.FIELD_PRIME if i < 5 else y for i, y in enumerate(ys)]
    assert sa._rs_decode(xs, five, k) != coeffs


def garbage_for(recipient: int, dealer: int):
    def tamper(post: sa.RoundPost) -> sa.RoundPost:
        if post.index != dealer:
            return post
        bundle = sa.decode_bundle(post.bundle)
        entries = tuple((r, os.urandom(len(ct)) if r == recipient else ct) for r, ct in bundle.entries)
        return replace(post, bundle=sa.encode_bundle(replace(bundle, entries=entries)))
    return tamper


def test_dealer_garbage_for_one_recipient_is_skipped_and_the_others_suffice() -> None:
    indices = list(range(6))
    swarm = make_swarm(indices, tamper=garbage_for(recipient=1, dealer=4))
    xs = inputs(indices)
    committed = [0, 1, 2, 3, 5]  # the dealer drops out: its s_sk must come from the others' shares
    reveal1 = sa.decode_reveal(swarm.reveals([1], committed)[0][1])
    assert 4 not in [u for u, _, _ in reveal1.entries]
    with pytest.raises(sa.UndecryptableShare, match="dealer 4 dealt to 1"):
        sa.open_shares(swarm.keyset.entries[4], 1, swarm.share[1][0], CHAIN, ROUND)
    result = run_round(swarm, xs, committed, committed)
    assert_exact(result, plain_sum(xs, committed))
    assert result.secrets[4].shares == 4


def test_dealer_garbage_for_everyone_then_dropping_out_is_reported_against_that_dealer() -> None:
    def all_garbage(post: sa.RoundPost) -> sa.RoundPost:
        for r in range(5):
            post = garbage_for(r, 2)(post)
        return post
    indices = list(range(5))
    swarm = make_swarm(indices, tamper=all_garbage)
    xs = inputs(indices)
    committed = [0, 1, 3, 4]
    result = run_round(swarm, xs, committed, committed)
    assert not result.ok and result.unrecoverable == (2,)
    assert result.secrets[2].shares == 0


# ---------------------------------------------------------------- reveal's refusals, contexts

def test_reveal_refuses_to_disclose_both_shares_of_one_participant() -> None:
    indices = list(range(4))
    swarm = make_swarm(indices)
    first = sa.reveal(0, swarm.share[0][0], swarm.keyset, [0, 1, 2])
    assert sa.reveal(0, swarm.share[0][0], swarm.keyset, [0, 1, 2], previous=first) == first
    with pytest.raises(sa.ConflictingReveal, match="participant 3"):
        sa.reveal(0, swarm.share[0][0], swarm.keyset, [0, 1, 2, 3], previous=first)
    with pytest.raises(sa.InvalidInput, match=r"\[9\]"):
        sa.reveal(0, swarm.share[0][0], swarm.keyset, [0, 9])
    kinds = {u: k for u, k, _ in sa.decode_reveal(first).entries}
    assert kinds == {0: sa.SELF_SEED, 1: sa.SELF_SEED, 2: sa.SELF_SEED, 3: sa.MASK_KEY}


def test_another_chain_or_round_cannot_open_the_shares() -> None:
    swarm = make_swarm([0, 1, 2])
    entry = swarm.keyset.entries[1]
    sa.open_shares(entry, 0, swarm.share[0][0], CHAIN, ROUND)
    for chain, round_ in ((CHAIN + 1, ROUND), (CHAIN, ROUND + 1)):
        with pytest.raises(sa.UndecryptableShare):
            sa.open_shares(entry, 0, swarm.share[0][0], chain, round_)
    with pytest.raises(sa.UndecryptableShare):
        sa.open_shares(entry, 0, swarm.share[2][0], CHAIN, ROUND)  # another recipient's key
    # a replayed post is left out of the next round's key set; one relabelled for it does not open there
    _, rejected = sa.build_keyset(CHAIN, ROUND + 1, swarm.posts, {i: swarm.share[i][1] for i in range(3)})
    assert set(rejected) == {0, 1, 2} and "round 17" in rejected[1]
    relabelled = replace(entry.bundle, round=ROUND + 1)
    keyset2, _ = sa.build_keyset(CHAIN, ROUND + 1, [replace(swarm.posts[1], bundle=sa.encode_bundle(relabelled))],
                                 {1: swarm.share[1][1]})
    assert sa.decode_reveal(sa.reveal(0, swarm.share[0][0], keyset2, [1])).entries == ()


def test_build_keyset_drops_bad_posts_deterministically_with_reasons() -> None:
    swarm = make_swarm([0, 1, 2, 3])
    keys = {i: swarm.share[i][1] for i in range(4)}
    p = swarm.posts
    posts = [p[0], replace(p[1], mask_pk=bytes(32)), replace(p[2], bundle=p[2].bundle[:-1]), p[0], p[3]]
    keyset, rejected = sa.build_keyset(CHAIN, ROUND, posts, keys)
    assert keyset.indices == (0, 3)
    assert "low order" in rejected[1].lower() or "mask key" in rejected[1], rejected[1]
    assert "bundle" in rejected[2]
    _, strict = sa.build_keyset(CHAIN, ROUND, swarm.posts, keys, configured_threshold=4)
    assert all("threshold" in why for why in strict.values()) and len(strict) == 4


def test_keyset_digest_is_the_same_for_the_same_posts_and_names_any_difference() -> None:
    swarm = make_swarm([0, 1, 2])
    keys = {i: swarm.share[i][1] for i in range(3)}
    again, _ = sa.build_keyset(CHAIN, ROUND, list(swarm.posts), keys)
    assert again.digest() == swarm.keyset.digest() and len(again.digest()) == 32
    fewer, _ = sa.build_keyset(CHAIN, ROUND, swarm.posts[:2], keys)
    other_round = replace(swarm.keyset, round=ROUND + 1)
    assert len({swarm.keyset.digest(), fewer.digest(), other_round.digest()}) == 3


def test_threshold_for_is_a_majority_or_the_configured_value_and_at_least_two() -> None:
    assert [sa.threshold_for(n) for n in (1, 2, 3, 4, 10, 100, 128)] == [1, 2, 2, 3, 6, 51, 65]
    assert sa.threshold_for(10, 4) == 4 and sa.threshold_for(10, 1) == 2 and sa.threshold_for(1, 1) == 1
    for n, t in ((3, 4), (0, 0), (129, 0)):
        with pytest.raises(sa.InvalidThreshold):
            sa.threshold_for(n, t)


def test_mask_rejects_out_of_range_or_float_inputs_and_a_secret_not_posted() -> None:
    swarm = make_swarm([0, 1])
    secret = swarm.round_secrets[0]
    with pytest.raises(sa.ValueOutOfRange, match="outside"):
        sa.mask({"w": np.array([sa.MAX_ABS_VALUE + 1])}, secret, swarm.keyset)
    with pytest.raises(sa.ValueOutOfRange, match="dtype"):
        sa.mask({"w": np.zeros(3, np.float32)}, secret, swarm.keyset)
    with pytest.raises(sa.InvalidInput, match="does not match"):
        sa.mask({"w": np.zeros(3, np.int64)}, replace(secret, self_seed=os.urandom(32)), swarm.keyset)
    with pytest.raises(sa.InvalidInput, match="chain"):
        sa.mask({"w": np.zeros(3, np.int64)}, replace(secret, round=ROUND + 1), swarm.keyset)


# ---------------------------------------------------------------- what a masked input reveals

def test_a_masked_input_alone_looks_uniform_and_differs_from_its_input() -> None:
    indices = [0, 1, 2]
    swarm = make_swarm(indices)
    size = 1 << 18
    zeros = {"w": np.zeros(size, np.int64)}  # the most structured input there is
    y = sa.mask(zeros, swarm.round_secrets[0], swarm.keyset)["w"]
    bits = (y[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    ones = bits.mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 6 * 0.5 / np.sqrt(size)), f"bit balance {ones}"
    counts = np.bincount(y.view(np.uint8), minlength=256)
    expected = y.size * 4 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400, f"byte chi-square {chi2:.0f} with 255 degrees of freedom"  # p ~ 1e-8 for a uniform y
    ramp = {"w": (np.arange(size, dtype=np.int64) % 2001) - 1000}
    y2 = sa.mask(ramp, swarm.round_secrets[0], swarm.keyset)["w"]
    same = int(np.count_nonzero(y2.view(np.int32).astype(np.int64) == ramp["w"]))
    assert same <= 2, f"{same} coordinates left unmasked"
    assert abs(float(np.corrcoef(y2.astype(np.float64), ramp["w"])[0, 1])) < 0.02


# ---------------------------------------------------------------- determinism

def test_same_inputs_give_identical_masks_and_sums_on_repeated_runs() -> None:
    indices = list(range(5))
    swarm = make_swarm(indices)
    xs = inputs(indices)
    committed, alive = [0, 1, 3, 4], [0, 1, 3]
    a = run_round(swarm, xs, committed, alive)
    b = run_round(swarm, xs, committed, alive)
    assert_exact(a, plain_sum(xs, committed))
    assert all(np.array_equal(a.sum[k], b.sum[k]) for k in a.sum)
    m1 = sa.mask(xs[2], swarm.round_secrets[2], swarm.keyset)
    m2 = sa.mask(xs[2], swarm.round_secrets[2], swarm.keyset)
    assert all(np.array_equal(m1[k], m2[k]) for k in m1)
    assert sa.reveal(1, swarm.share[1][0], swarm.keyset, committed) == sa.reveal(1, swarm.share[1][0],
                                                                                 swarm.keyset, committed)


def test_known_answers_pin_the_prg_keys_and_masks_across_machines() -> None:
    # ChaCha20 with the zero key and nonce (RFC 8439 A.1 test vector 1) as little-endian words
    assert sa.prg_words(bytes(32), 4).tolist() == [2917185654, 2419978656, 3848953152, 683509331]
    digest = hashlib.sha256(sa.prg_words(bytes(range(32)), 1000).tobytes()).hexdigest()
    assert digest == "5b551985d6f0c6943fe1ab68cc2e7079bc1beb91adb37ce323b9e7c7201f6693"
    chain, round_ = 1337, 5
    nodes = [bytes([i + 1]) * 32 for i in range(3)]
    assert sa.share_keypair(nodes[0], chain)[1].hex() == (
        "cc259718c95675eb84e9fe4c30cceed1c725c532611566340c1752ad1ccaa93d")
    assert sa.mask_keypair(nodes[0], chain, round_)[1].hex() == (
        "c38940a687e2aff630aee1e8aced05651857d02940b78105ccb591bba66e7b67")
    share = {i: sa.share_keypair(nodes[i], chain) for i in range(3)}
    recipients = [(i, share[i][1]) for i in range(3)]
    posts, secrets = [], []
    for i in range(3):
        post, _ = sa.make_round_keys(nodes[i], i, chain, round_, recipients, 2)
        seed = bytes([0xA0 + i]) * 32  # a fixed b_u, for the known answer only
        sk, pk = sa.mask_keypair(nodes[i], chain, round_)
        posts.append(sa.RoundPost(i, pk, sa.self_seed_commitment(chain, round_, i, seed), post.bundle))
        secrets.append(sa.RoundSecret(chain, round_, i, sk, seed))
    keyset, _ = sa.build_keyset(chain, round_, posts, {i: share[i][1] for i in range(3)})
    y = sa.mask({"w": np.arange(-6, 6).reshape(3, 4), "b": np.array([7, -7])}, secrets[1], keyset)
    assert y["b"].tolist() == [751029510, 3407933979]
    assert hashlib.sha256(b"".join(y[n].tobytes() for n in sorted(y))).hexdigest() == (
        "65dc6c08018df0564561d8778884c0f93d5afbfec31b0dc957349bd7afd86a37")


# ---------------------------------------------------------------- strict, total decoders

_SEED_SWARM = make_swarm([0, 3, 5])
SEEDS = {
    "bundle": (_SEED_SWARM.posts[1].bundle, sa.decode_bundle, sa.encode_bundle),
    "reveal": (_SEED_SWARM.reveals([3], [0, 3])[0][1], sa.decode_reveal, sa.encode_reveal),
    "round-secret": (_SEED_SWARM.round_secrets[5].to_bytes(), sa.RoundSecret.from_bytes, lambda s: s.to_bytes()),
}
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def decodes_or_raises_the_typed_error(name: str, data: bytes) -> None:
    _, decode, encode = SEEDS[name]
    try:
        value = decode(data)
    except sa.MalformedSecAgg:
        return
    except Exception as exc:
        raise AssertionError(f"{name} decoder is not total: {type(exc).__name__}: {exc}; input {data[:200]!r}") from exc
    assert encode(value) == bytes(data), f"{name}: accepted a non-canonical encoding {data[:200]!r}"


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_valid_encodings_round_trip(name: str) -> None:
    data, decode, encode = SEEDS[name]
    assert encode(decode(data)) == data


@pytest.mark.parametrize("name", sorted(SEEDS))
@FUZZ
@given(prefix=st.integers(0, 64), tail=st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_raise_malformed(name: str, prefix: int, tail: bytes) -> None:
    decodes_or_raises_the_typed_error(name, SEEDS[name][0][:prefix] + tail)


@st.composite
def mutations(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "extend"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        else:
            data += data[-draw(st.integers(1, 200)):] if data else b"\x00"
    return bytes(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
@FUZZ
@given(data=st.data())
def test_mutated_encodings_decode_or_raise_malformed(name: str, data: st.DataObject) -> None:
    decodes_or_raises_the_typed_error(name, data.draw(mutations(SEEDS[name][0])))


@FUZZ
@given(data=st.data())
def test_unmask_survives_arbitrary_and_mutated_reveals(data: st.DataObject) -> None:
    swarm = _SEED_SWARM
    good = swarm.reveals([0, 3, 5], [0, 3, 5])
    hostile = data.draw(st.one_of(st.binary(max_size=600), mutations(good[0][1])))
    reveals = [(0, hostile)] + good[1:]
    result = sa.unmask_sum({}, swarm.keyset, [0, 3, 5], reveals)  # no inputs: the shares alone are exercised
    assert isinstance(result, sa.UnmaskResult) and not result.ok
