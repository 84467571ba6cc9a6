"""Tx pool: every admission check rejects with its reason, ordering, bounds, pruning after a block."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from consensus.devtools import address_of, dev_key, sign_tx
from consensus.genesis_block import chain_class
from consensus.txpool import (
    AlreadyKnown,
    FeeTooLow,
    ForbiddenTarget,
    GasLimitExceeded,
    InsufficientFunds,
    IntrinsicGasTooLow,
    InvalidTxSignature,
    MalformedTransaction,
    NonceGap,
    NonceTooLow,
    OversizedTransaction,
    PoolFull,
    PoolLimits,
    ReplacementUnderpriced,
    SenderLimit,
    TxPool,
    TxRejected,
    WrongChainId,
)

CHAIN_ID = 7331
BASE_FEE = 10**9
TO = b"\x11" * 20
K0, K1, K2 = dev_key(0), dev_key(1), dev_key(2)
A0, A1, A2 = address_of(K0), address_of(K1), address_of(K2)
DECODE = chain_class(CHAIN_ID).get_vm_class_for_block_number(1).get_transaction_builder().decode


@dataclass
class FakeState:
    nonces: dict[bytes, int] = field(default_factory=dict)
    balances: dict[bytes, int] = field(default_factory=lambda: {A0: 10**21, A1: 10**21, A2: 10**21})

    def get_nonce(self, address: bytes) -> int:
        return self.nonces.get(address, 0)

    def get_balance(self, address: bytes) -> int:
        return self.balances.get(address, 0)


def make_pool(**limits: int) -> TxPool:
    return TxPool(CHAIN_ID, DECODE, PoolLimits(**limits))


def tx(key: bytes, nonce: int, **kw: object) -> bytes:
    kw.setdefault("chain_id", CHAIN_ID)
    chain_id = kw.pop("chain_id")
    return sign_tx(key, chain_id, nonce, to=kw.pop("to", TO), **kw)  # type: ignore[arg-type]


def test_accepts_valid_transactions_of_every_supported_kind() -> None:
    pool, state = make_pool(), FakeState()
    pool.add_raw(tx(K0, 0), state, BASE_FEE)
    pool.add_raw(tx(K0, 1, legacy=True), state, BASE_FEE)
    pool.add_raw(tx(K0, 2, to=b"\x00" * 19 + b"\x12"), state, BASE_FEE)  # one past the precompiles
    pool.add_raw(tx(K0, 3, to=b"\x00" * 20), state, BASE_FEE)
    assert len(pool) == 4
    assert pool.next_nonce(A0, state) == 4


def _tampered_signature() -> bytes:
    good = DECODE(tx(K0, 0))
    bad = good.copy(r=good.r ^ 1) if hasattr(good, "r") else good
    return bad.encode()


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (lambda: b"\xc0\x01junk", MalformedTransaction),
        (lambda: b"\x02" + b"\xff" * 10, MalformedTransaction),
        (lambda: tx(K0, 0, chain_id=1), WrongChainId),
        (lambda: _tampered_signature(), InvalidTxSignature),
        (lambda: tx(K0, 1), NonceGap),
        (lambda: tx(K0, 0, gas=20_000), IntrinsicGasTooLow),
        (lambda: tx(K0, 0, gas=31_000_000), GasLimitExceeded),
        (lambda: tx(K0, 0, max_fee=BASE_FEE - 1), FeeTooLow),
        (lambda: tx(K0, 0, value=10**22), InsufficientFunds),
        (lambda: tx(K0, 0, data=b"\x01" * 200_000, gas=10_000_000), OversizedTransaction),
        (lambda: tx(K0, 0, to=None, data=b"\x60\x00", gas=100_000), ForbiddenTarget),  # a contract creation
        (lambda: tx(K0, 0, to=b"\x00" * 19 + b"\x05", gas=100_000), ForbiddenTarget),  # MODEXP
        (lambda: tx(K0, 0, to=b"\x00" * 19 + b"\x11", gas=100_000), ForbiddenTarget),  # Prague's last precompile
    ],
)
def test_each_bad_transaction_is_rejected_with_its_reason(raw, error) -> None:
    pool, state = make_pool(), FakeState()
    pool.add_raw(tx(K1, 0), state, BASE_FEE)
    with pytest.raises(error) as info:
        pool.add_raw(raw(), state, BASE_FEE)
    assert str(info.value).startswith(error.reason + ":")
    assert len(pool) == 1  # the pool is intact
    assert pool.next_nonce(A0, state) == 0


def test_nonce_too_low_duplicates_and_replacement() -> None:
    pool, state = make_pool(), FakeState(nonces={A0: 5})
    with pytest.raises(NonceTooLow):
        pool.add_raw(tx(K0, 4), state, BASE_FEE)
    first = tx(K0, 5)
    pool.add_raw(first, state, BASE_FEE)
    with pytest.raises(AlreadyKnown):
        pool.add_raw(first, state, BASE_FEE)
    with pytest.raises(ReplacementUnderpriced):
        pool.add_raw(tx(K0, 5, max_fee=2 * 10**9 + 1), state, BASE_FEE)
    better = pool.add_raw(tx(K0, 5, max_fee=3 * 10**9, tip=5), state, BASE_FEE)
    assert len(pool) == 1 and better.hash in pool


def test_balance_covers_all_pending_transactions_of_a_sender() -> None:
    state = FakeState(balances={A0: 3 * 21_000 * 2 * 10**9})
    pool = make_pool()
    pool.add_raw(tx(K0, 0), state, BASE_FEE)
    pool.add_raw(tx(K0, 1), state, BASE_FEE)
    pool.add_raw(tx(K0, 2), state, BASE_FEE)
    with pytest.raises(InsufficientFunds):
        pool.add_raw(tx(K0, 3), state, BASE_FEE)


def test_bounds_per_sender_and_total() -> None:
    pool, state = make_pool(max_per_sender=2, max_txs=3), FakeState()
    pool.add_raw(tx(K0, 0), state, BASE_FEE)
    pool.add_raw(tx(K0, 1), state, BASE_FEE)
    with pytest.raises(SenderLimit):
        pool.add_raw(tx(K0, 2), state, BASE_FEE)
    pool.add_raw(tx(K1, 0), state, BASE_FEE)
    with pytest.raises(PoolFull):
        pool.add_raw(tx(K2, 0), state, BASE_FEE)
    assert isinstance(PoolFull("x"), TxRejected)


def test_select_orders_by_nonce_per_sender_then_by_tip() -> None:
    pool, state = make_pool(), FakeState()
    low = [pool.add_raw(tx(K0, n, tip=1), state, BASE_FEE) for n in range(3)]
    high = [pool.add_raw(tx(K1, 0, tip=50), state, BASE_FEE), pool.add_raw(tx(K1, 1, tip=2), state, BASE_FEE)]
    mid = pool.add_raw(tx(K2, 0, tip=10), state, BASE_FEE)
    chosen = pool.select(state, BASE_FEE, gas_limit=30_000_000)
    assert [t.hash for t in chosen] == [t.hash for t in (high[0], mid, high[1], *low)]


def test_a_priority_ranks_before_the_tip_but_never_before_an_earlier_nonce() -> None:
    """K2's priority call (tip 1) goes before K1's higher tips; K0's priority call at nonce 1 waits for
    its own nonce 0, which is not a priority call and so comes after the other priority calls."""
    pool, state = make_pool(), FakeState()
    urgent = b"\x42" * 20

    def priority(t, sender: bytes) -> int:
        return int(bytes(t.to) == urgent)

    k0 = [pool.add_raw(tx(K0, 0, tip=5), state, BASE_FEE), pool.add_raw(tx(K0, 1, tip=5, to=urgent), state, BASE_FEE)]
    k1 = [pool.add_raw(tx(K1, n, tip=50), state, BASE_FEE) for n in range(2)]
    k2 = pool.add_raw(tx(K2, 0, tip=1, to=urgent), state, BASE_FEE)
    chosen = pool.select(state, BASE_FEE, gas_limit=30_000_000, priority=priority)
    assert [t.hash for t in chosen] == [t.hash for t in (k2, *k1, k0[0], k0[1])]
    assert [t.hash for t in pool.select(state, BASE_FEE, gas_limit=30_000_000)] == [
        t.hash for t in (*k1, k0[0], k0[1], k2)]  # without it: tips only


def test_select_bounds_the_encoded_bytes_of_a_block() -> None:
    """Three 50 KB transactions of one sender and one small one of another: a byte bound that holds two of
    the large ones exactly takes them (and the small one), and never a later nonce after one left out."""
    pool, state = make_pool(), FakeState()
    big = [pool.add_raw(tx(K0, n, data=b"\x01" * 50_000, gas=1_000_000, tip=10), state, BASE_FEE) for n in range(3)]
    small = pool.add_raw(tx(K1, 0, tip=1), state, BASE_FEE)
    sizes = [len(t.encode()) for t in big]
    exact = sizes[0] + sizes[1] + len(small.encode())
    chosen = pool.select(state, BASE_FEE, gas_limit=30_000_000, max_bytes=exact)
    assert [t.hash for t in chosen] == [big[0].hash, big[1].hash, small.hash]
    chosen = pool.select(state, BASE_FEE, gas_limit=30_000_000, max_bytes=exact - 1)
    assert [t.hash for t in chosen] == [big[0].hash, big[1].hash]  # one byte short: the small one waits
    chosen = pool.select(state, BASE_FEE, gas_limit=30_000_000, max_bytes=sizes[0] - 1)
    assert [t.hash for t in chosen] == [small.hash]  # K0's nonce 0 does not fit, so neither do its later ones


def test_select_respects_gas_and_balance_in_sequence() -> None:
    pool, state = make_pool(), FakeState()
    for n in range(5):
        pool.add_raw(tx(K0, n), state, BASE_FEE)
    assert len(pool.select(state, BASE_FEE, gas_limit=3 * 21_000)) == 3
    state.balances[A0] = 2 * 21_000 * 2 * 10**9  # the balance dropped since admission
    assert len(pool.select(state, BASE_FEE, gas_limit=30_000_000)) == 2
    assert pool.select(state, 3 * 10**9, gas_limit=30_000_000) == []  # fee cap below the base fee


def test_prune_after_a_block_drops_used_nonces_and_keeps_the_rest() -> None:
    pool, state = make_pool(), FakeState()
    txs = [pool.add_raw(tx(K0, n), state, BASE_FEE) for n in range(4)]
    state.nonces[A0] = 2
    assert pool.prune(state) == 2
    assert [t.hash in pool for t in txs] == [False, False, True, True]
    assert pool.next_nonce(A0, state) == 4
    state.balances[A0] = 0
    assert pool.prune(state) == 2
    assert len(pool) == 0 and pool.statistics() == {"txs": 0, "senders": 0}


def test_check_runs_every_entry_check_without_admitting() -> None:
    pool, state = make_pool(max_per_sender=1), FakeState()
    pool.check(DECODE(tx(K0, 0)), state, BASE_FEE)
    assert len(pool) == 0, "check must not admit"
    pool.add_raw(tx(K0, 0), state, BASE_FEE)
    with pytest.raises(NonceGap):
        pool.check(DECODE(tx(K0, 2)), state, BASE_FEE)
    with pytest.raises(SenderLimit):
        pool.check(DECODE(tx(K0, 1)), state, BASE_FEE)
    state.nonces[A1] = 5
    with pytest.raises(NonceTooLow):
        pool.check(DECODE(tx(K1, 4)), state, BASE_FEE)
    assert len(pool) == 1
