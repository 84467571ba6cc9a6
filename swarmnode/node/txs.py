"""SwarmRounds transactions: build and sign the node's calls, and read commits back out of a block's txs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

from consensus.contracts import SWARM_ROUNDS_ADDRESS
from consensus.devtools import sign_tx
from swarmnode.node.machine import AttestCall, CommitCall, RejoinCall

FIXED_ONE = 1_000_000  # SwarmRounds stores loss and accuracy as value * 1e6
MAX_REPORTED = 2**64  # SwarmRounds' bound on a reported loss (and sample count)
COMMIT_GAS = 1_000_000
ATTEST_GAS = 15_000_000  # the most a finalizing attestation can need, with 25% to spare (two fit in a block)
# A finalizing attestation pays every contributor (or records every absentee) and sets every active
# participant expected in the next round, and settles every attestation of the round: a reward, or a penalty
# through Staking that may force the validator out of the set. Measured (tests/unit/test_contracts.py):
# 0.89M with 10 participants and 4 validators, 6.3M with 128 and 4, and at the limits (128 contributors, 64
# attestations, 60 of them wrong and forced out) 11.6M: under ~70K per participant and ~90K per attestation
# on top of ~0.15M. A flat ATTEST_GAS let only two attestations into a 30M block, so a node declares
# attest_gas(...) for the registry and attestations it sees.
ATTEST_BASE_GAS = 600_000
ATTEST_GAS_PER_PARTICIPANT = 100_000
ATTEST_GAS_PER_ATTESTATION = 100_000
MEMBERSHIP_GAS = 1_000_000  # register, leave


def selector(signature: str) -> bytes:
    return keccak(signature.encode())[:4]


COMMIT_TYPES = ["uint256", "bytes32"] + ["uint256"] * 8
COMMIT_SIG = f"commitUpdate({','.join(COMMIT_TYPES)})"
COMMIT_SELECTOR = selector(COMMIT_SIG)
ATTEST_SELECTOR = selector("attestAggregate(uint256,bytes32)")
REGISTER_SELECTOR = selector("register(string)")
REGISTER_APPROVED_SELECTOR = selector("register(string,bytes[])")
LEAVE_SELECTOR = selector("leave()")
REJOIN_SELECTOR = selector("rejoin()")
SHARE_KEY_SELECTOR = selector("setShareKey(bytes32)")
POST_KEYS_TYPES = ["uint256", "bytes32", "bytes32", "bytes"]
POST_KEYS_SELECTOR = selector(f"postMaskKeys({','.join(POST_KEYS_TYPES)})")
REVEAL_TYPES = ["uint256", "bytes"]
REVEAL_SELECTOR = selector(f"revealShares({','.join(REVEAL_TYPES)})")
# the calls a round needs (commits, attestations, secure aggregation's keys and reveals, rejoin): a proposer
# takes them before any other transaction, whatever the tips (see round_priority)
ROUND_SELECTORS = frozenset({COMMIT_SELECTOR, ATTEST_SELECTOR, SHARE_KEY_SELECTOR, POST_KEYS_SELECTOR,
                             REVEAL_SELECTOR, REJOIN_SELECTOR})
ADMIT_TAG = keccak(b"swarmnode-admit")


def fixed(x: float) -> int:
    """A non-negative metric in the contract's fixed point (NaN/inf/negative become 0)."""
    if not x == x or x < 0 or x == float("inf"):
        return 0
    return int(round(x * FIXED_ONE))


def held_out_fields(score: tuple[float, float, int] | None, max_count: int) -> tuple[int, int, int]:
    """(heldOutLoss, heldOutAccuracy, heldOutCount) for a commit from the base model's (loss, accuracy,
    examples) on the node's held-out split; (0, 0, 0) when it has none (None or no examples). The count
    is capped at `max_count` (the genesis max_samples: the contract refuses more)."""
    if score is None or score[2] <= 0:
        return 0, 0, 0
    loss, accuracy, count = score
    return min(fixed(loss), MAX_REPORTED), min(fixed(accuracy), FIXED_ONE), min(int(count), max_count)


def commit_data(c: CommitCall) -> bytes:
    # clamped to what the contract accepts: a diverged model's metric must not make the commit revert
    held_out = ((min(c.held_out_loss, MAX_REPORTED), min(c.held_out_accuracy, FIXED_ONE), c.held_out_count)
                if c.held_out_count > 0 else (0, 0, 0))
    return COMMIT_SELECTOR + abi_encode(COMMIT_TYPES, [c.round, c.update_hash, c.num_samples,
                                                       min(c.local_loss, MAX_REPORTED),
                                                       min(c.local_accuracy, FIXED_ONE), *held_out,
                                                       c.epsilon_spent, c.key_count])


def attest_data(round_: int, model_hash: bytes) -> bytes:
    return ATTEST_SELECTOR + abi_encode(["uint256", "bytes32"], [round_, model_hash])


def call_data(call: CommitCall | AttestCall | RejoinCall) -> bytes:
    if isinstance(call, CommitCall):
        return commit_data(call)
    if isinstance(call, RejoinCall):
        return REJOIN_SELECTOR
    return attest_data(call.round, call.model_hash)


def gas_for(data: bytes) -> int:
    if data[:4] in (POST_KEYS_SELECTOR, REVEAL_SELECTOR):  # calldata-heavy: shares travel in it
        return MEMBERSHIP_GAS + 48 * len(data)
    return ATTEST_GAS if data[:4] == ATTEST_SELECTOR else COMMIT_GAS if data[:4] == COMMIT_SELECTOR else MEMBERSHIP_GAS


def attest_gas(registered: int, attested: int, validators: int) -> int:
    """Gas for an attestation that may finalize, with `registered` participants in the registry (active or
    not), `attested` attestations already in the round and `validators` validators (each may still
    attest): about 1.4x what finalizing needs or more, and never above ATTEST_GAS. The registry and the
    attestations can still grow before it gets in (a hostile proposer can put registrations in front of
    it): an attestation that then runs out of gas reverts as a whole, and the node sends it again at
    ATTEST_GAS (machine.py)."""
    need = ATTEST_BASE_GAS + ATTEST_GAS_PER_PARTICIPANT * registered + ATTEST_GAS_PER_ATTESTATION * (attested + validators)
    return min(ATTEST_GAS, need)


def share_key_data(share_pk: bytes) -> bytes:
    return SHARE_KEY_SELECTOR + abi_encode(["bytes32"], [share_pk])


def post_keys_data(round_: int, mask_pk: bytes, commit: bytes, bundle: bytes) -> bytes:
    return POST_KEYS_SELECTOR + abi_encode(POST_KEYS_TYPES, [round_, mask_pk, commit, bundle])


def reveal_data(round_: int, shares: bytes) -> bytes:
    return REVEAL_SELECTOR + abi_encode(REVEAL_TYPES, [round_, shares])


def _dynamic_bytes(args: bytes, head_words: int, at: int) -> bytes | None:
    """The `bytes` argument whose offset is head word `at`, read the way the contract's ABI decoder reads it:
    offset and length must lie inside the calldata; padding bytes are not looked at (a call with nonzero
    padding succeeds on chain, so it must be readable here, or its bundle could never be found)."""
    if len(args) < 32 * head_words:
        return None
    offset = int.from_bytes(args[32 * at : 32 * at + 32], "big")
    if offset > len(args) - 32:
        return None
    length = int.from_bytes(args[offset : offset + 32], "big")
    if length > len(args) - offset - 32:
        return None
    return bytes(args[offset + 32 : offset + 32 + length])


def decode_post_keys(data: bytes) -> tuple[int, bytes, bytes, bytes] | None:
    """(round, mask key, seed commitment, bundle) of a postMaskKeys call, or None (malformed counts as not)."""
    if len(data) < 4 or bytes(data[:4]) != POST_KEYS_SELECTOR:
        return None
    args = bytes(data[4:])
    bundle = _dynamic_bytes(args, 4, 3)
    if bundle is None:
        return None
    return int.from_bytes(args[:32], "big"), args[32:64], args[64:96], bundle


def decode_reveal_call(data: bytes) -> tuple[int, bytes] | None:
    """(round, shares) of a revealShares call, or None."""
    if len(data) < 4 or bytes(data[:4]) != REVEAL_SELECTOR:
        return None
    args = bytes(data[4:])
    shares = _dynamic_bytes(args, 2, 1)
    if shares is None:
        return None
    return int.from_bytes(args[:32], "big"), shares


def register_data(peer_id: str, approvals: Sequence[bytes] = ()) -> bytes:
    """register(peerId) (stake admission: send the bond as value) or register(peerId, approvals)."""
    if not approvals:
        return REGISTER_SELECTOR + abi_encode(["string"], [peer_id])
    return REGISTER_APPROVED_SELECTOR + abi_encode(["string", "bytes[]"], [peer_id, list(approvals)])


def leave_data() -> bytes:
    return LEAVE_SELECTOR


def admission_digest(chain_id: int, participant: bytes) -> bytes:
    """What a validator signs to admit `participant` (SwarmRounds._checkApprovals recomputes it)."""
    return keccak(abi_encode(["bytes32", "uint256", "address", "address"],
                             [ADMIT_TAG, chain_id, SWARM_ROUNDS_ADDRESS, participant]))


def sign_admission(secret: bytes, chain_id: int, participant: bytes) -> bytes:
    """A validator's 65-byte approval (r || s || v, v in {27, 28}) of `participant` joining."""
    from eth_keys import keys

    sig = keys.PrivateKey(secret).sign_msg_hash(admission_digest(chain_id, participant))
    return sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v + 27])


def admission_signer(approval: bytes, chain_id: int, participant: bytes) -> bytes:
    """The validator address that signed `approval` for `participant` (ValueError if it is malformed)."""
    from eth_keys import keys

    if len(approval) != 65 or approval[64] not in (27, 28):
        raise ValueError(f"an approval is 65 bytes ending in 27 or 28, got {len(approval)} bytes")
    sig = keys.Signature(vrs=(approval[64] - 27, int.from_bytes(approval[:32], "big"),
                              int.from_bytes(approval[32:64], "big")))
    return bytes(sig.recover_public_key_from_msg_hash(admission_digest(chain_id, participant)).to_canonical_address())


def sort_approvals(approvals: Sequence[bytes], chain_id: int, participant: bytes) -> list[bytes]:
    """Approvals in the order the contract wants (strictly increasing signer), duplicates dropped."""
    by_signer = {admission_signer(a, chain_id, participant): a for a in approvals}
    return [by_signer[s] for s in sorted(by_signer, key=lambda a: int.from_bytes(a, "big"))]


def decode_commit(data: bytes) -> CommitCall | None:
    """The commitUpdate call in a tx's data, or None if the data is not one (malformed counts as not)."""
    if len(data) < 4 or bytes(data[:4]) != COMMIT_SELECTOR:
        return None
    try:
        r, h, *rest = abi_decode(COMMIT_TYPES, bytes(data[4:]))
    except Exception:  # eth_abi raises several types for short or bad data
        return None
    return CommitCall(int(r), bytes(h), *(int(x) for x in rest))


def commits_in(txs: Sequence[Any]) -> list[CommitCall]:
    """commitUpdate calls to SwarmRounds among a block's transactions (py-evm tx objects)."""
    out = []
    for tx in txs:
        if bytes(tx.to) != SWARM_ROUNDS_ADDRESS:
            continue
        call = decode_commit(bytes(tx.data))
        if call is not None:
            out.append(call)
    return out


def sign_cancel(secret: bytes, chain_id: int, nonce: int, to: bytes, min_fee_cap: int, base_fee: int) -> bytes:
    """A 0-value transfer to `to` (the sender itself) at `nonce`: it takes the place of a pending call that
    no longer makes sense, so that the nonce is used and the account's later transactions can go in."""
    max_fee = max(min_fee_cap, 2 * base_fee + 1, 10**9 + 1)
    return sign_tx(secret, chain_id, nonce, to=to, value=0, gas=21_000, max_fee=max_fee, tip=1)


def sign_call(secret: bytes, chain_id: int, nonce: int, data: bytes, base_fee: int, value: int = 0,
              gas: int | None = None) -> bytes:
    """A signed EIP-1559 call to SwarmRounds paying at most twice the current base fee (min 1 gwei), with
    `gas` (default: gas_for(data))."""
    max_fee = max(2 * base_fee, 10**9) + 1
    return sign_tx(secret, chain_id, nonce, to=SWARM_ROUNDS_ADDRESS, data=data,
                   gas=gas_for(data) if gas is None else gas, max_fee=max_fee, tip=1, value=value)


def round_priority(tx: Any) -> int:
    """1 for a call to SwarmRounds that a round needs (ROUND_SELECTORS), 0 for anything else. A proposer
    builds a block within a CPU budget; ranked first, these calls get in even when a flood of other
    transactions (registrations with another key's peer id cost ~20 ms each to execute) pays higher tips."""
    return int(bytes(tx.to) == SWARM_ROUNDS_ADDRESS and bytes(tx.data[:4]) in ROUND_SELECTORS)
