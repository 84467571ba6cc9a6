"""The daemon's secure-aggregation glue without a chain: keys dealt into calldata, read back the way the
node reads them, updates masked into update blobs at the common fixed point, shares revealed into
calldata, and the exact sum of the clamped updates out, with a participant that committed and vanished."""

from __future__ import annotations

import math
import stat

import numpy as np
import pytest
import torch
from eth_utils import keccak

from swarmnode.node import txs
from swarmnode.node.secagg_node import (
    RoundKeys,
    SecAggNode,
    dealing_may_start,
    dealing_recipients,
    fixed_exponent,
    to_fixed,
)
from swarmnode.privacy import secagg
from swarmnode.privacy.config import PrivacyConfig

CHAIN, ROUND = 7331, 4
CFG = PrivacyConfig.from_dict({"secure_aggregation": True, "clip_norm": 0.5})


def nodes(tmp_path, n):
    return [SecAggNode(key=bytes([i + 1]) * 32, chain_id=CHAIN, privacy=CFG, data_dir=tmp_path / f"n{i}")
            for i in range(n)]


def view(ns, posts=(), reveals=()):
    keys = {i: n.share_pk for i, n in enumerate(ns)}
    return RoundKeys(ROUND, tuple(posts), tuple(reveals), keys, tuple(sorted(keys.items())),
                     {bytes([i]) * 20: i for i in range(len(ns))}, len(ns), 10_000, 0)


def test_the_fixed_point_keeps_128_inputs_exact_and_clamps_at_the_bound():
    e = fixed_exponent(CFG.value_bound)
    assert CFG.value_bound * 2**e <= secagg.MAX_ABS_VALUE < CFG.value_bound * 2 ** (e + 1)
    x = to_fixed({"w": torch.tensor([0.1, -5.0, 5.0, 0.0])}, CFG.value_bound, e)["w"]
    assert x.tolist() == [round(0.1 * 2**e), -round(2.0 * 2**e), round(2.0 * 2**e), 0]
    with pytest.raises(ValueError):
        fixed_exponent(0.0)


def test_masked_updates_sum_exactly_with_a_committer_that_never_reveals(tmp_path):
    ns = nodes(tmp_path, 4)
    posts, cache = [], {}
    for i, n in enumerate(ns):
        data = n.post_keys_calldata(view(ns), ROUND, i)
        r, mask_pk, commit, bundle = txs.decode_post_keys(data)
        assert r == ROUND
        posts.append((i, mask_pk, commit, keccak(bundle)))
        cache[keccak(bundle)] = bundle
        kept = n.secret_for(ROUND, commit)
        assert kept is not None and kept.index == i
        assert stat.S_IMODE(n._secret_path(ROUND, commit).stat().st_mode) == 0o600
        assert str(kept.self_seed) not in repr(kept) and str(kept.mask_sk) not in repr(kept)
        assert n._secret.hex() not in repr(n) and str(n._secret) not in repr(n)
    for n in ns:
        n.cache._by_hash = {h: (ROUND, b) for h, b in cache.items()}
    v = view(ns, posts)
    deltas = [{"b": torch.randn(3, generator=torch.Generator().manual_seed(i)),
               "w": torch.randn(2, 5, generator=torch.Generator().manual_seed(10 + i))} for i in range(4)]
    blobs = {}
    for i in (0, 1, 3):  # node 2 posted keys but never commits
        ks, rejected, missing = ns[i].keyset(v)
        assert not rejected and not missing and ks.indices == (0, 1, 2, 3)
        blobs[i] = ns[i].masked_blob(deltas[i], ks, ns[i].secret_for(ROUND, posts[i][2]))
    # a masked blob carries none of the clamped values it hides
    plain = to_fixed(deltas[0], CFG.value_bound, ns[0].exponent)
    assert not np.array_equal(ns[0].masked_input(blobs[0])["w"].astype(np.int64), plain["w"])
    committed = [0, 1, 3]
    reveals = []
    for i in (0, 1, 2):  # node 3 committed, then vanished without revealing
        data = txs.decode_reveal_call(ns[i].reveal_calldata(v, committed, i))[1]
        reveals.append((i, keccak(data)))
        for n in ns:
            n.cache._by_hash[keccak(data)] = (ROUND, data)
    v2 = view(ns, posts, reveals)
    ks, _, _ = ns[0].keyset(v2)
    masked = {i: ns[0].masked_input(b) for i, b in blobs.items()}
    layout = {"b": (3,), "w": (2, 5)}
    result = ns[0].unmask(v2, ks, committed, masked, layout)
    assert result.ok, result.reason
    for name in layout:
        want = sum(to_fixed(deltas[i], CFG.value_bound, ns[0].exponent)[name] for i in committed)
        assert np.array_equal(result.sum[name], want)
    # a reveal this node has not read yet: it waits rather than sum over fewer reveals than the others
    missing = view(ns, posts, [*reveals, (3, b"\x99" * 32)])
    with pytest.raises(secagg.InvalidInput):
        ns[0].unmask(missing, ks, committed, masked, layout)


def test_a_masked_blob_at_another_exponent_is_refused(tmp_path):
    from swarmnode.aggregation.codec import QTensor, encode_update
    from swarmnode.aggregation.errors import MalformedBlob

    n = nodes(tmp_path, 1)[0]
    blob = encode_update({"w": QTensor(torch.zeros(3, dtype=torch.int32), n.exponent + 1)})
    with pytest.raises(MalformedBlob):
        n.masked_input(blob)


def test_old_round_secrets_are_deleted(tmp_path):
    ns = nodes(tmp_path, 2)
    data = ns[0].post_keys_calldata(view(ns), ROUND, 0)
    commit = txs.decode_post_keys(data)[2]
    ns[0].forget_before(ROUND)
    assert ns[0].secret_for(ROUND, commit) is not None
    ns[0].forget_before(ROUND + 1)
    assert ns[0].secret_for(ROUND, commit) is None
    assert math.isfinite(ns[0].exponent)


def test_calldata_is_read_the_way_the_contract_reads_it():
    """Nonzero ABI padding is accepted on chain, so the node must read such calldata too (else the bundle
    whose hash the contract stored could never be found); offsets and lengths past the end are refused."""
    data = txs.post_keys_data(3, b"\x01" * 32, b"\x02" * 32, b"\x03" * 41)
    assert txs.decode_post_keys(data) == (3, b"\x01" * 32, b"\x02" * 32, b"\x03" * 41)
    padded = data[:-1] + b"\xff"  # the last padding byte of the 41-byte bundle
    assert txs.decode_post_keys(padded) == (3, b"\x01" * 32, b"\x02" * 32, b"\x03" * 41)
    assert txs.decode_post_keys(data[:-24]) is None  # the bundle runs past the end
    bad_offset = data[:4 + 96] + (2**255).to_bytes(32, "big") + data[4 + 128:]
    assert txs.decode_post_keys(bad_offset) is None
    rv = txs.reveal_data(3, b"\x09" * 5)
    assert txs.decode_reveal_call(rv[:-1] + b"\x01") == (3, b"\x09" * 5)
    assert txs.decode_reveal_call(rv[:40]) is None and txs.decode_reveal_call(b"") is None
    assert txs.decode_post_keys(rv) is None and txs.decode_reveal_call(data) is None


def test_a_low_order_share_key_gets_no_shares_and_does_not_stop_dealing(tmp_path):
    ns = nodes(tmp_path, 3)
    good = view(ns)
    order8 = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    keys = {**good.share_keys, 5: b"\x01" + b"\x00" * 31, 6: order8}  # low-order points
    recipients = dealing_recipients(keys, {0, 1, 2, 5, 6})
    assert [i for i, _ in recipients] == [0, 1, 2]
    assert [i for i, _ in dealing_recipients(keys, {0, 2})] == [0, 2]  # those who left get none
    bad = RoundKeys(ROUND, (), (), keys, recipients, good.indices, 5, 10_000, 0)
    data = ns[0].post_keys_calldata(bad, ROUND, 0)  # dealt to the 3 valid keys only
    bundle = secagg.decode_bundle(txs.decode_post_keys(data)[3])
    assert bundle.recipients == (0, 1, 2)


class _Chain:
    """Blocks of SwarmRounds calls, as CalldataCache reads them (block_by_number, receipts_of, head)."""

    def __init__(self, blocks):
        from types import SimpleNamespace

        from consensus.contracts import SWARM_ROUNDS_ADDRESS

        self._blocks = [SimpleNamespace(transactions=[SimpleNamespace(to=SWARM_ROUNDS_ADDRESS, data=d) for d, _ in b],
                                        receipts=[SimpleNamespace(state_root=b"\x01" if ok else b"") for _, ok in b])
                        for b in blocks]
        self.head = SimpleNamespace(block_number=len(blocks) - 1)
        self.reader = SimpleNamespace(block_by_number=lambda n: self._blocks[n], receipts_of=lambda b: b.receipts)
        self.reads = 0


def test_the_calldata_cache_reads_earlier_blocks_asked_for_later_and_skips_reverted_calls():
    from swarmnode.node.secagg_node import CalldataCache

    bundles = [bytes([i]) * (40 + i) for i in range(6)]
    blocks = [[(txs.post_keys_data(r, b"\x01" * 32, b"\x02" * 32, bundles[r]), r != 4)] for r in range(6)]
    chain = _Chain(blocks)
    cache = CalldataCache()
    cache.scan(chain, 4)  # a restarted node asks about a late round first
    assert cache.get(keccak(bundles[5])) == bundles[5] and cache.get(keccak(bundles[2])) is None
    assert cache.get(keccak(bundles[4])) is None, "a reverted call's calldata is not kept"
    cache.scan(chain, 1)  # then about an earlier one: blocks 1-3 are read now
    assert [cache.get(keccak(b)) is not None for b in bundles] == [False, True, True, True, False, True]
    cache.forget_before_block(3)
    assert cache.get(keccak(bundles[2])) is None and cache.get(keccak(bundles[3])) == bundles[3]


def _holders(count: int, active: int, head_time: int) -> RoundKeys:
    keys = {i: bytes([i + 1]) * 32 for i in range(count)}
    return RoundKeys(ROUND, (), (), keys, tuple(sorted(keys.items())), {}, active, 10_000, head_time)


def test_dealing_waits_for_missing_share_keys_from_when_it_was_first_held_up_not_from_an_old_opening() -> None:
    """Round 0 of a chain whose genesis is hours old: the opening is far behind, so counting from it the
    wait was void and the first two daemons dealt only to each other."""
    opened = 0
    first_blocked = 1_700_000_000
    assert not dealing_may_start(_holders(2, 4, first_blocked), opened, first_blocked, 5)
    assert not dealing_may_start(_holders(2, 4, first_blocked + 4), opened, first_blocked, 5)  # 1 s inside
    assert dealing_may_start(_holders(2, 4, first_blocked + 5), opened, first_blocked, 5)  # the wait is over
    assert dealing_may_start(_holders(4, 4, first_blocked), opened, first_blocked, 5)  # everyone has a key
    assert dealing_may_start(_holders(5, 4, first_blocked), opened, first_blocked, 5)
    # a round that opened after we were first held up (the next round): counted from its opening
    assert not dealing_may_start(_holders(3, 4, first_blocked + 9), first_blocked + 6, first_blocked, 5)
    assert dealing_may_start(_holders(3, 4, first_blocked + 11), first_blocked + 6, first_blocked, 5)
