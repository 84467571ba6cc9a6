"""Tests for the Staking and SwarmRounds contracts as placed in the genesis state, on an in-memory py-evm chain."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_keys import keys
from eth_utils import keccak

from consensus.contracts import (
    CONTRACT_NAMES,
    STAKING_ADDRESS,
    SWARM_ROUNDS_ADDRESS,
    ContractArtifactError,
    artifact_json,
    artifact_path,
    code_bytes,
    compile_source,
    load_artifact,
)
from consensus.genesis_state import (
    _ROUNDS_INIT_TYPES,
    _STAKING_INIT_TYPES,
    ContractParams,
    GenesisError,
    build_genesis_alloc,
)
from consensus.votes import STEP_PRECOMMIT, STEP_PREVOTE, sign_digest, sign_vote, vote_signer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evm_harness import GAS_PRICE, CallReverted, Contract, EvmHarness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ETHER = 10**18
CHAIN_ID = 1337
STAKE = 10 * ETHER
HASH_A = b"\xaa" * 32
HASH_B = b"\xbb" * 32
ZERO32 = b"\x00" * 32

VALIDATOR_KEYS = [keys.PrivateKey(keccak(f"validator {i}".encode())) for i in range(4)]
PARTICIPANT_KEYS = [keys.PrivateKey(keccak(f"participant {i}".encode())) for i in range(2)]
OUTSIDER_KEY = keys.PrivateKey(keccak(b"outsider"))
V = [k.public_key.to_canonical_address() for k in VALIDATOR_KEYS]
P = [k.public_key.to_canonical_address() for k in PARTICIPANT_KEYS]
OUTSIDER = OUTSIDER_KEY.public_key.to_canonical_address()
PEER_IDS = ["16Uiu2HAm" + "V0" * 22, "16Uiu2HAm" + "V1" * 22]  # 53 chars, like secp256k1 peer ids

PARAMS = ContractParams(
    epoch_length=10,
    unbonding_blocks=5,
    slash_fraction_bps=1_000,
    min_stake=1 * ETHER,
    commit_window=4,
    reward_per_round=1 * ETHER,
    contributor_share_bps=7_000,
    mismatch_penalty_bps=500,
    reward_pool=100 * ETHER,
)
STAKING = Contract(STAKING_ADDRESS, load_artifact("Staking")["abi"])
ROUNDS = Contract(SWARM_ROUNDS_ADDRESS, load_artifact("SwarmRounds")["abi"])


def hexaddr(address: bytes) -> str:
    return "0x" + address.hex()


def make_validators(stakes: list[int] | None = None) -> list[tuple[bytes, int, str | None]]:
    stakes = stakes or [STAKE] * 4
    peer_ids: list[str | None] = [PEER_IDS[0], PEER_IDS[1], None, None]
    return [(V[i], stakes[i], peer_ids[i]) for i in range(len(stakes))]


def make_alloc(params: ContractParams = PARAMS, stakes: list[int] | None = None) -> dict:
    funded = {a: 1_000 * ETHER for a in [*V, *P, OUTSIDER]}
    return build_genesis_alloc(CHAIN_ID, make_validators(stakes), funded, params)


def make_chain(params: ContractParams = PARAMS, stakes: list[int] | None = None) -> EvmHarness:
    return EvmHarness(CHAIN_ID, make_alloc(params, stakes), [STAKING, ROUNDS])


@pytest.fixture
def evm() -> EvmHarness:
    return make_chain()


def ok(result):
    assert result.success, f"transaction reverted: {result.reason}"
    return result


def reverts(result, reason: str) -> None:
    assert not result.success, f"expected revert {reason!r}, but the transaction succeeded"
    assert result.reason == reason, f"expected revert {reason!r}, got {result.reason!r}"


def assert_solvent(evm: EvmHarness) -> None:
    liabilities = evm.call(STAKING, "liabilities")
    balance = evm.balance(STAKING_ADDRESS)
    assert balance == liabilities, f"Staking balance {balance} != liabilities {liabilities}"


def vote_tuple(vote) -> tuple:
    return (vote.height, vote.round, vote.step, vote.block_hash, vote.signature)


def conflicting_votes(key, height=7, round_=0, step=STEP_PREVOTE, chain_id=CHAIN_ID, hashes=(HASH_A, HASH_B)):
    return tuple(vote_tuple(sign_vote(key.to_bytes(), chain_id, height, round_, step, h)) for h in hashes)


def commit(evm, index_key, round_=0, update=b"\x01" * 32, samples=100, loss=250_000, acc=900_000):
    return evm.transact(index_key, ROUNDS, "commitUpdate", round_, update, samples, loss, acc)


def close_window(evm: EvmHarness, round_: int = 0) -> None:
    evm.mine_until(evm.call(ROUNDS, "getRound", round_)[1] - 1)


# ================================================================ artifacts and genesis

@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_committed_artifacts_match_a_fresh_compile(name):
    fresh = artifact_json(compile_source(name))
    assert artifact_path(name).read_text() == fresh, f"{name}.json is stale: run scripts/compile_contracts.py"


def test_compile_script_check_passes_on_committed_artifacts():
    spec = importlib.util.spec_from_file_location("compile_contracts", ROOT / "scripts" / "compile_contracts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.stale_artifacts() == []
    assert module.main(["--check"]) == 0


def test_load_artifact_rejects_unknown_contract():
    with pytest.raises(ContractArtifactError, match="'Nope'"):
        load_artifact("Nope")


def test_constructor_argument_types_match_the_abi():
    for name, types in (("Staking", _STAKING_INIT_TYPES), ("SwarmRounds", _ROUNDS_INIT_TYPES)):
        ctor = next(e for e in load_artifact(name)["abi"] if e["type"] == "constructor")
        assert [i["type"] for i in ctor["inputs"]] == types, name


def test_genesis_places_runtime_code_at_fixed_addresses():
    alloc = make_alloc()
    for name, address in (("Staking", STAKING_ADDRESS), ("SwarmRounds", SWARM_ROUNDS_ADDRESS)):
        assert alloc[address]["code"] == code_bytes(load_artifact(name), "bytecode_runtime"), name
        assert alloc[address]["nonce"] == 1
    assert alloc[SWARM_ROUNDS_ADDRESS]["balance"] == 0
    assert alloc[P[0]] == {"balance": 1_000 * ETHER, "nonce": 0, "code": b"", "storage": {}}


def test_genesis_staking_holds_total_stake_plus_reward_pool(evm):
    assert evm.balance(STAKING_ADDRESS) == 4 * STAKE + PARAMS.reward_pool
    assert_solvent(evm)


def test_genesis_is_deterministic_and_depends_on_params():
    assert make_alloc() == make_alloc()
    other = make_alloc(ContractParams(**{**PARAMS.__dict__, "commit_window": 9}))
    assert other[SWARM_ROUNDS_ADDRESS]["storage"] != make_alloc()[SWARM_ROUNDS_ADDRESS]["storage"]


def test_genesis_storage_follows_vyper_hashmap_layout():
    """Vyper 0.4 puts HashMap[k] at keccak256(slot ++ key) (slot first, unlike Solidity)."""
    alloc = make_alloc()
    layout = load_artifact("Staking")["layout"]["storage_layout"]
    storage = alloc[STAKING_ADDRESS]["storage"]
    assert storage[layout["totalStake"]["slot"]] == 4 * STAKE
    for address in V:
        key = keccak(layout["stakeOf"]["slot"].to_bytes(32, "big") + address.rjust(32, b"\x00"))
        assert storage[int.from_bytes(key, "big")] == STAKE


def test_genesis_staking_getters(evm):
    addresses, stakes = evm.call(STAKING, "getValidators")
    assert list(addresses) == [hexaddr(a) for a in V]
    assert list(stakes) == [STAKE] * 4
    assert evm.call(STAKING, "totalStake") == 4 * STAKE
    assert evm.call(STAKING, "validatorCount") == 4
    assert evm.call(STAKING, "isValidator", V[2]) is True
    assert evm.call(STAKING, "isValidator", OUTSIDER) is False
    assert evm.call(STAKING, "swarmRounds") == hexaddr(SWARM_ROUNDS_ADDRESS)
    assert evm.call(STAKING, "epochLength") == 10
    assert evm.call(STAKING, "unbondingBlocks") == 5
    assert evm.call(STAKING, "slashFractionBps") == 1_000
    assert evm.call(STAKING, "minStake") == ETHER
    assert evm.call(STAKING, "rewardPool") == 100 * ETHER
    assert evm.call(STAKING, "epochOf", 25) == 2


def test_genesis_swarm_rounds_getters(evm):
    assert evm.call(ROUNDS, "staking") == hexaddr(STAKING_ADDRESS)
    assert evm.call(ROUNDS, "commitWindow") == 4
    assert evm.call(ROUNDS, "rewardPerRound") == ETHER
    assert evm.call(ROUNDS, "contributorShareBps") == 7_000
    assert evm.call(ROUNDS, "mismatchPenaltyBps") == 500
    assert evm.call(ROUNDS, "currentRound") == 0
    assert evm.call(ROUNDS, "getRound", 0) == (0, 4, 0, ZERO32, 0, 0, 0, 2, False, False)
    assert evm.call(ROUNDS, "participantCount") == 2
    assert evm.call(ROUNDS, "peerIdOf", V[1]) == PEER_IDS[1]
    assert evm.call(ROUNDS, "isRegistered", V[2]) is False
    assert evm.call(ROUNDS, "peerIdOwner", keccak(text=PEER_IDS[0])) == hexaddr(V[0])
    assert evm.call(ROUNDS, "windowOpen") is True


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda vals: vals + [vals[0]], "duplicate validator"),
        (lambda vals: [(vals[0][0], ETHER - 1, None)], "below min stake"),
        (lambda vals: [], "at least one validator"),
        (lambda vals: [(STAKING_ADDRESS, ETHER, None)], "collides with a contract address"),
        (lambda vals: [(b"\x01" * 19, ETHER, None)], "must be 20 bytes"),
        (lambda vals: [(V[0], ETHER, "x" * 65)], "1..64 ASCII"),
        (lambda vals: [(V[0], ETHER, "same"), (V[1], ETHER, "same")], "duplicate peer id 'same'"),
    ],
)
def test_genesis_rejects_bad_validators(mutate, message):
    with pytest.raises(GenesisError, match=message):
        build_genesis_alloc(CHAIN_ID, mutate(make_validators()), {}, PARAMS)


def test_genesis_rejects_bad_accounts_and_params():
    with pytest.raises(GenesisError, match="balance must be >= 0, got -1"):
        build_genesis_alloc(CHAIN_ID, make_validators(), {P[0]: -1}, PARAMS)
    with pytest.raises(GenesisError, match="commit_window must be > 0, got 0"):
        ContractParams(commit_window=0)
    with pytest.raises(GenesisError, match="slash_fraction_bps must be in \\[0, 10000\\], got 10001"):
        ContractParams(slash_fraction_bps=10_001)


# ================================================================ Staking: deposit and withdraw

def test_deposit_adds_a_new_validator(evm):
    result = ok(evm.transact(OUTSIDER_KEY, STAKING, "deposit", value=2 * ETHER))
    assert result.event_names() == ["ValidatorAdded", "Deposited"]
    assert result.events_named("Deposited")[0] == {"account": hexaddr(OUTSIDER), "amount": 2 * ETHER, "newStake": 2 * ETHER}
    assert evm.call(STAKING, "isValidator", OUTSIDER) is True
    assert evm.call(STAKING, "getValidators")[0][-1] == hexaddr(OUTSIDER)
    assert evm.call(STAKING, "totalStake") == 42 * ETHER
    assert_solvent(evm)


def test_deposit_tops_up_an_existing_validator(evm):
    result = ok(evm.transact(VALIDATOR_KEYS[0], STAKING, "deposit", value=ETHER))
    assert result.event_names() == ["Deposited"]
    assert evm.call(STAKING, "stakeOf", V[0]) == 11 * ETHER
    assert evm.call(STAKING, "validatorCount") == 4


def test_deposit_reverts(evm):
    reverts(evm.transact(OUTSIDER_KEY, STAKING, "deposit", value=0), "deposit: zero value")
    reverts(evm.transact(OUTSIDER_KEY, STAKING, "deposit", value=ETHER // 2), "deposit: stake below min stake")
    reverts(evm.send_raw(OUTSIDER_KEY, STAKING_ADDRESS, b"", ETHER), "0x")  # plain transfers are refused


def test_partial_withdraw_after_unbonding(evm):
    requested = ok(evm.transact(VALIDATOR_KEYS[1], STAKING, "requestWithdraw", 4 * ETHER))
    release = requested.block_number + PARAMS.unbonding_blocks
    assert requested.events_named("WithdrawalRequested") == [
        {"account": hexaddr(V[1]), "amount": 4 * ETHER, "releaseBlock": release}
    ]
    assert evm.call(STAKING, "stakeOf", V[1]) == 6 * ETHER
    assert evm.call(STAKING, "totalStake") == 36 * ETHER
    assert evm.call(STAKING, "pendingWithdrawal", V[1]) == 4 * ETHER
    assert evm.call(STAKING, "withdrawableAt", V[1]) == release
    evm.mine_until(release - 2)
    reverts(evm.transact(VALIDATOR_KEYS[1], STAKING, "withdraw"), "withdraw: still unbonding")  # at release - 1
    before = evm.balance(V[1])
    result = ok(evm.transact(VALIDATOR_KEYS[1], STAKING, "withdraw"))  # at release
    assert result.block_number == release
    assert evm.balance(V[1]) == before + 4 * ETHER - result.gas_used * GAS_PRICE
    assert result.events_named("Withdrawn") == [{"account": hexaddr(V[1]), "amount": 4 * ETHER}]
    reverts(evm.transact(VALIDATOR_KEYS[1], STAKING, "withdraw"), "withdraw: nothing pending")
    assert_solvent(evm)


def test_full_withdraw_leaves_the_validator_set(evm):
    result = ok(evm.transact(VALIDATOR_KEYS[0], STAKING, "requestWithdraw", STAKE))
    assert "ValidatorRemoved" in result.event_names()
    addresses, stakes = evm.call(STAKING, "getValidators")
    assert list(addresses) == [hexaddr(V[3]), hexaddr(V[1]), hexaddr(V[2])]  # last one moved into the gap
    assert list(stakes) == [STAKE] * 3
    assert evm.call(STAKING, "isValidator", V[0]) is False
    ok(evm.transact(VALIDATOR_KEYS[3], STAKING, "requestWithdraw", STAKE))  # removing the moved entry still works
    assert list(evm.call(STAKING, "getValidators")[0]) == [hexaddr(V[2]), hexaddr(V[1])]
    assert_solvent(evm)


def test_request_withdraw_reverts(evm):
    reverts(evm.transact(VALIDATOR_KEYS[0], STAKING, "requestWithdraw", 0), "requestWithdraw: zero amount")
    reverts(evm.transact(VALIDATOR_KEYS[0], STAKING, "requestWithdraw", STAKE + 1), "requestWithdraw: amount exceeds stake")
    reverts(
        evm.transact(VALIDATOR_KEYS[0], STAKING, "requestWithdraw", STAKE - ETHER // 2),
        "requestWithdraw: remaining stake below min stake",
    )
    reverts(evm.transact(OUTSIDER_KEY, STAKING, "requestWithdraw", 1), "requestWithdraw: amount exceeds stake")


# ================================================================ Staking: slashing

def test_slash_with_real_conflicting_votes(evm):
    vote_a = sign_vote(VALIDATOR_KEYS[2].to_bytes(), CHAIN_ID, 7, 0, STEP_PREVOTE, HASH_A)
    vote_b = sign_vote(VALIDATOR_KEYS[2].to_bytes(), CHAIN_ID, 7, 0, STEP_PREVOTE, HASH_B)
    assert vote_signer(vote_a) == V[2] and vote_signer(vote_b) == V[2]
    result = ok(evm.transact(OUTSIDER_KEY, STAKING, "slash", V[2], vote_tuple(vote_a), vote_tuple(vote_b)))
    assert result.output == ETHER
    assert result.events_named("Slashed") == [
        {"offender": hexaddr(V[2]), "reporter": hexaddr(OUTSIDER), "height": 7, "round": 0, "step": 1, "amount": ETHER}
    ]
    assert evm.call(STAKING, "stakeOf", V[2]) == 9 * ETHER
    assert evm.call(STAKING, "totalStake") == 39 * ETHER
    assert evm.call(STAKING, "totalBurned") == ETHER
    assert evm.call(STAKING, "isSlashed", V[2], 7, 0, STEP_PREVOTE) is True
    assert evm.call(STAKING, "isSlashed", V[2], 7, 0, STEP_PRECOMMIT) is False
    assert evm.call(STAKING, "isValidator", V[2]) is True
    reverts(
        evm.transact(OUTSIDER_KEY, STAKING, "slash", V[2], vote_tuple(vote_b), vote_tuple(vote_a)),
        "slash: already slashed for this height/round/step",
    )
    # A nil vote conflicts with a block vote too; another (h, r, step) is a separate offence.
    nil_vs_block = conflicting_votes(VALIDATOR_KEYS[2], step=STEP_PRECOMMIT, hashes=(ZERO32, HASH_A))
    assert ok(evm.transact(OUTSIDER_KEY, STAKING, "slash", V[2], *nil_vs_block)).output == 9 * ETHER // 10
    assert_solvent(evm)


def _tampered(vote: tuple, signature: bytes) -> tuple:
    return (*vote[:4], signature)


def test_slash_rejects_bad_evidence(evm):
    key, offender = VALIDATOR_KEYS[2], V[2]
    vote_a, vote_b = conflicting_votes(key)
    other_height = conflicting_votes(key, height=8)[1]
    other_round = conflicting_votes(key, round_=1)[1]
    same_hash = conflicting_votes(key, hashes=(HASH_A, HASH_A))
    by_other = conflicting_votes(VALIDATOR_KEYS[1])
    other_chain = conflicting_votes(key, chain_id=CHAIN_ID + 1)
    bad_step_digest = keccak(abi_encode(["uint256"] * 4 + ["bytes32"], [CHAIN_ID, 7, 0, 3, HASH_A]))
    bad_step = (7, 0, 3, HASH_A, sign_digest(key.to_bytes(), bad_step_digest))
    bad_step_b = (7, 0, 3, HASH_B, sign_digest(key.to_bytes(), bad_step_digest))
    cases = [
        ((offender, vote_a, other_height), "slash: votes are for different height/round/step"),
        ((offender, vote_a, other_round), "slash: votes are for different height/round/step"),
        ((offender, *same_hash), "slash: votes have the same block hash"),
        ((offender, bad_step, bad_step_b), "slash: step is not 0, 1 or 2"),
        ((OUTSIDER, *conflicting_votes(OUTSIDER_KEY)), "slash: offender is not a validator"),
        ((offender, by_other[0], vote_b), "slash: vote A not signed by offender"),
        ((offender, vote_a, by_other[1]), "slash: vote B not signed by offender"),
        ((offender, *other_chain), "slash: vote A not signed by offender"),
        ((offender, _tampered(vote_a, vote_a[4][:64] + b"\x1d"), vote_b), "slash: signature v is not 27 or 28"),
        ((offender, vote_a, _tampered(vote_b, vote_b[4][:64])), "slash: signature is not 65 bytes"),
        ((offender, _tampered(vote_a, b"\x00" * 64 + b"\x1b"), vote_b), "slash: vote A not signed by offender"),
    ]
    for args, reason in cases:
        reverts(evm.transact(OUTSIDER_KEY, STAKING, "slash", *args), reason)
    assert evm.call(STAKING, "stakeOf", offender) == STAKE
    assert evm.call(STAKING, "totalBurned") == 0


def test_slash_binds_votes_to_the_chain_id():
    other_id = CHAIN_ID + 1
    funded = {OUTSIDER: 1_000 * ETHER}
    evm = EvmHarness(other_id, build_genesis_alloc(other_id, make_validators(), funded, PARAMS), [STAKING, ROUNDS])
    ours = conflicting_votes(VALIDATOR_KEYS[0])
    reverts(evm.transact(OUTSIDER_KEY, STAKING, "slash", V[0], *ours), "slash: vote A not signed by offender")
    theirs = conflicting_votes(VALIDATOR_KEYS[0], chain_id=other_id)
    assert ok(evm.transact(OUTSIDER_KEY, STAKING, "slash", V[0], *theirs)).output == ETHER


def test_slash_below_min_stake_forces_exit():
    evm = make_chain(ContractParams(**{**PARAMS.__dict__, "slash_fraction_bps": 9_500}))
    result = ok(evm.transact(OUTSIDER_KEY, STAKING, "slash", V[3], *conflicting_votes(VALIDATOR_KEYS[3])))
    assert result.output == 9_500 * STAKE // 10_000
    assert {"ValidatorRemoved", "WithdrawalRequested", "Slashed"} <= set(result.event_names())
    assert evm.call(STAKING, "isValidator", V[3]) is False
    assert evm.call(STAKING, "stakeOf", V[3]) == 0
    assert evm.call(STAKING, "pendingWithdrawal", V[3]) == STAKE // 20
    assert evm.call(STAKING, "totalStake") == 3 * STAKE
    assert_solvent(evm)


# ================================================================ Staking: rewards

def test_reward_hooks_are_only_for_swarm_rounds(evm):
    reverts(evm.transact(OUTSIDER_KEY, STAKING, "creditReward", OUTSIDER, ETHER), "staking: caller is not SwarmRounds")
    reverts(evm.transact(VALIDATOR_KEYS[0], STAKING, "penalize", V[1], 100), "staking: caller is not SwarmRounds")
    assert evm.call(STAKING, "rewardOf", OUTSIDER) == 0
    assert evm.call(STAKING, "creditReward", OUTSIDER, 1, sender=SWARM_ROUNDS_ADDRESS) == 1
    with pytest.raises(CallReverted, match="penalize: bps above 10000"):
        evm.call(STAKING, "penalize", V[1], 10_001, sender=SWARM_ROUNDS_ADDRESS)


def test_fund_reward_pool(evm):
    result = ok(evm.transact(OUTSIDER_KEY, STAKING, "fundRewardPool", value=5 * ETHER))
    assert result.events_named("RewardPoolFunded") == [{"funder": hexaddr(OUTSIDER), "amount": 5 * ETHER}]
    assert evm.call(STAKING, "rewardPool") == 105 * ETHER
    reverts(evm.transact(OUTSIDER_KEY, STAKING, "fundRewardPool", value=0), "fundRewardPool: zero value")
    assert_solvent(evm)


def test_claim_rewards_pays_the_credited_balance(evm):
    close_window(evm)
    for key in VALIDATOR_KEYS[:3]:
        ok(evm.transact(key, ROUNDS, "attestAggregate", 0, HASH_A))
    owed = evm.call(STAKING, "rewardOf", V[0])
    assert owed == ETHER // 3
    before = evm.balance(V[0])
    result = ok(evm.transact(VALIDATOR_KEYS[0], STAKING, "claimRewards"))
    assert result.output == owed
    assert result.events_named("RewardsClaimed") == [{"account": hexaddr(V[0]), "amount": owed}]
    assert evm.balance(V[0]) == before + owed - result.gas_used * GAS_PRICE
    assert evm.call(STAKING, "rewardOf", V[0]) == 0
    reverts(evm.transact(VALIDATOR_KEYS[0], STAKING, "claimRewards"), "claimRewards: nothing to claim")
    assert_solvent(evm)


def test_rewards_stop_when_the_pool_runs_dry():
    evm = make_chain(ContractParams(**{**PARAMS.__dict__, "reward_pool": ETHER // 2}))
    ok(commit(evm, VALIDATOR_KEYS[0]))
    ok(commit(evm, VALIDATOR_KEYS[1]))
    results = [ok(evm.transact(k, ROUNDS, "attestAggregate", 0, HASH_A)) for k in VALIDATOR_KEYS[:3]]
    credited = results[-1].events_named("RewardCredited")
    assert sum(e["amount"] for e in credited) == ETHER // 2
    assert evm.call(STAKING, "rewardPool") == 0
    assert evm.call(ROUNDS, "getRound", 0)[9] is True  # finalization does not depend on the pool
    assert_solvent(evm)


# ================================================================ SwarmRounds: registration

def test_register(evm):
    peer_id = "12D3KooW" + "p" * 44
    result = ok(evm.transact(PARTICIPANT_KEYS[0], ROUNDS, "register", peer_id))
    assert ok(commit(evm, PARTICIPANT_KEYS[0])).events_named("UpdateCommitted")[0]["participant"] == hexaddr(P[0])
    assert result.events_named("Registered") == [{"participant": hexaddr(P[0]), "peerId": peer_id}]
    assert evm.call(ROUNDS, "isRegistered", P[0]) is True
    assert evm.call(ROUNDS, "peerIdOf", P[0]) == peer_id
    assert evm.call(ROUNDS, "participantAt", 2) == hexaddr(P[0])
    assert evm.call(ROUNDS, "participantCount") == 3
    assert list(evm.call(ROUNDS, "getParticipants")) == [hexaddr(V[0]), hexaddr(V[1]), hexaddr(P[0])]
    reverts(evm.transact(PARTICIPANT_KEYS[0], ROUNDS, "register", "another"), "register: already registered")
    reverts(evm.transact(PARTICIPANT_KEYS[1], ROUNDS, "register", peer_id), "register: peer id already taken")
    reverts(evm.transact(PARTICIPANT_KEYS[1], ROUNDS, "register", ""), "register: empty peer id")
    reverts(evm.transact(PARTICIPANT_KEYS[1], ROUNDS, "register", "x" * 65), "0x")  # ABI bound String[64]
    with pytest.raises(CallReverted, match="participantAt: index out of range"):
        evm.call(ROUNDS, "participantAt", 3)


# ================================================================ SwarmRounds: commits

def test_commit_update_records_history(evm):
    result = ok(commit(evm, VALIDATOR_KEYS[0], update=HASH_A, samples=120, loss=345_678, acc=876_543))
    assert result.events_named("UpdateCommitted") == [
        {"round": 0, "participant": hexaddr(V[0]), "index": 0, "updateHash": HASH_A,
         "numSamples": 120, "localLoss": 345_678, "localAccuracy": 876_543}
    ]
    assert evm.call(ROUNDS, "getCommit", 0, 0) == (hexaddr(V[0]), HASH_A, 120, 345_678, 876_543, result.block_number)
    assert evm.call(ROUNDS, "hasCommitted", 0, V[0]) is True
    assert evm.call(ROUNDS, "hasCommitted", 0, V[1]) is False
    info = evm.call(ROUNDS, "getRound", 0)
    assert (info[4], info[5], info[8]) == (1, 120, False)  # commitCount, totalSamples, closedEarly
    with pytest.raises(CallReverted, match="getCommit: no such commit"):
        evm.call(ROUNDS, "getCommit", 0, 1)


def test_commit_update_reverts():
    evm = make_chain(ContractParams(**{**PARAMS.__dict__, "commit_window": 8}))
    reverts(commit(evm, OUTSIDER_KEY), "commitUpdate: sender not registered")
    reverts(commit(evm, VALIDATOR_KEYS[0], round_=1), "commitUpdate: wrong round")
    reverts(commit(evm, VALIDATOR_KEYS[0], update=ZERO32), "commitUpdate: empty update hash")
    reverts(commit(evm, VALIDATOR_KEYS[0], samples=0), "commitUpdate: zero samples")
    reverts(commit(evm, VALIDATOR_KEYS[0], acc=1_000_001), "commitUpdate: accuracy above 1e6")
    evm.mine_until(7)
    late = commit(evm, VALIDATOR_KEYS[0])
    assert late.block_number == 8  # the window is blocks [0, 8)
    reverts(late, "commitUpdate: commit window closed")
    assert evm.call(ROUNDS, "getRound", 0)[4] == 0


def test_commit_window_boundary_and_duplicates(evm):
    evm.mine_until(2)
    accepted = ok(commit(evm, VALIDATOR_KEYS[0]))  # block 3 = closeBlock - 1: last block of the window
    assert accepted.block_number == 3
    reverts(commit(evm, VALIDATOR_KEYS[0]), "commitUpdate: commit window closed")  # block 4
    evm2 = make_chain()
    ok(commit(evm2, VALIDATOR_KEYS[1]))
    reverts(commit(evm2, VALIDATOR_KEYS[1]), "commitUpdate: already committed this round")


def test_window_closes_early_when_every_participant_committed(evm):
    assert evm.call(ROUNDS, "windowOpen") is True
    ok(commit(evm, VALIDATOR_KEYS[0]))
    reverts(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, HASH_A), "attestAggregate: commit window still open")
    last = ok(commit(evm, VALIDATOR_KEYS[1]))
    assert last.events_named("WindowClosedEarly") == [{"round": 0, "closeBlock": last.block_number, "commitCount": 2}]
    info = evm.call(ROUNDS, "getRound", 0)
    assert (info[1], info[8]) == (last.block_number, True)
    assert evm.call(ROUNDS, "windowOpen") is False
    ok(evm.transact(PARTICIPANT_KEYS[0], ROUNDS, "register", "late-peer"))
    reverts(commit(evm, PARTICIPANT_KEYS[0]), "commitUpdate: commit window closed")
    ok(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, HASH_A))


# ================================================================ SwarmRounds: attestations and finalization

def test_attest_reverts(evm):
    reverts(evm.transact(VALIDATOR_KEYS[0], ROUNDS, "attestAggregate", 0, HASH_A), "attestAggregate: commit window still open")
    close_window(evm)
    reverts(evm.transact(PARTICIPANT_KEYS[0], ROUNDS, "attestAggregate", 0, HASH_A), "attestAggregate: sender is not a validator")
    reverts(evm.transact(VALIDATOR_KEYS[0], ROUNDS, "attestAggregate", 1, HASH_A), "attestAggregate: round not open yet")
    reverts(evm.transact(VALIDATOR_KEYS[0], ROUNDS, "attestAggregate", 0, ZERO32), "attestAggregate: empty model hash")
    ok(evm.transact(VALIDATOR_KEYS[0], ROUNDS, "attestAggregate", 0, HASH_A))
    reverts(evm.transact(VALIDATOR_KEYS[0], ROUNDS, "attestAggregate", 0, HASH_B), "attestAggregate: already attested this round")
    ok(evm.transact(VALIDATOR_KEYS[1], ROUNDS, "attestAggregate", 0, HASH_A))
    ok(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, HASH_A))
    reverts(evm.transact(VALIDATOR_KEYS[3], ROUNDS, "attestAggregate", 0, HASH_A), "attestAggregate: round already finalized")
    with pytest.raises(CallReverted, match="getAttestation: no such attestation"):
        evm.call(ROUNDS, "getAttestation", 0, 3)
    with pytest.raises(CallReverted, match="getRound: round not open yet"):
        evm.call(ROUNDS, "getRound", 2)


def test_finalization_pays_contributors_and_attesters_and_penalizes_mismatch(evm):
    ok(commit(evm, VALIDATOR_KEYS[0], update=b"\x01" * 32, samples=100))
    ok(commit(evm, VALIDATOR_KEYS[1], update=b"\x02" * 32, samples=300))  # closes the window early
    wrong = ok(evm.transact(VALIDATOR_KEYS[3], ROUNDS, "attestAggregate", 0, HASH_B))
    assert wrong.output is False
    for key in VALIDATOR_KEYS[:2]:
        assert ok(evm.transact(key, ROUNDS, "attestAggregate", 0, HASH_A)).output is False  # 20/40 of stake
    assert evm.call(ROUNDS, "attestedStake", 0, HASH_A) == 2 * STAKE
    final = ok(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, HASH_A))  # 30/40 > 2/3
    assert final.output is True
    assert final.events_named("RoundFinalized") == [
        {"round": 0, "modelHash": HASH_A, "finalBlock": final.block_number, "commitCount": 2, "attestedStake": 3 * STAKE}
    ]
    assert final.events_named("RoundOpened") == [
        {"round": 1, "openBlock": final.block_number, "closeBlock": final.block_number + 4}
    ]
    assert final.events_named("ContributorRewarded") == [
        {"round": 0, "participant": hexaddr(V[0]), "amount": 175 * ETHER // 1000},
        {"round": 0, "participant": hexaddr(V[1]), "amount": 525 * ETHER // 1000},
    ]
    assert [e["amount"] for e in final.events_named("ValidatorRewarded")] == [ETHER // 10] * 3
    assert final.events_named("AttestationMismatch") == [
        {"round": 0, "validator": hexaddr(V[3]), "attestedHash": HASH_B, "finalHash": HASH_A, "penalty": STAKE // 20}
    ]
    assert [evm.call(STAKING, "rewardOf", a) for a in V] == [275 * ETHER // 1000, 625 * ETHER // 1000, ETHER // 10, 0]
    assert evm.call(ROUNDS, "roundReward", 0, V[1]) == 625 * ETHER // 1000
    assert evm.call(STAKING, "rewardPool") == 99 * ETHER
    assert evm.call(STAKING, "stakeOf", V[3]) == STAKE - STAKE // 20
    assert evm.call(STAKING, "totalBurned") == STAKE // 20
    assert evm.call(ROUNDS, "isMismatched", 0, V[3]) is True
    assert evm.call(ROUNDS, "isMismatched", 0, V[2]) is False
    assert evm.call(ROUNDS, "getRound", 0) == (0, 2, final.block_number, HASH_A, 2, 400, 4, 2, True, True)
    assert evm.call(ROUNDS, "getAttestation", 0, 0) == (hexaddr(V[3]), HASH_B, STAKE, wrong.block_number)
    assert evm.call(ROUNDS, "attestationOf", 0, V[2]) == HASH_A
    assert evm.call(ROUNDS, "currentRound") == 1
    assert_solvent(evm)


def test_round_without_commits_finalizes_on_attestations(evm):
    close_window(evm)
    for key in VALIDATOR_KEYS[:3]:
        ok(evm.transact(key, ROUNDS, "attestAggregate", 0, HASH_A))
    info = evm.call(ROUNDS, "getRound", 0)
    assert (info[3], info[4], info[9]) == (HASH_A, 0, True)
    third = ETHER // 3  # the whole reward goes to validators; 1 wei of dust stays in the pool
    assert [evm.call(STAKING, "rewardOf", a) for a in V[:3]] == [third] * 3
    assert evm.call(STAKING, "rewardPool") == 100 * ETHER - 3 * third
    assert_solvent(evm)


def test_exactly_two_thirds_of_stake_does_not_finalize():
    evm = make_chain(stakes=[ETHER, ETHER, ETHER])
    close_window(evm)
    ok(evm.transact(VALIDATOR_KEYS[0], ROUNDS, "attestAggregate", 0, HASH_A))
    assert ok(evm.transact(VALIDATOR_KEYS[1], ROUNDS, "attestAggregate", 0, HASH_A)).output is False
    assert evm.call(ROUNDS, "currentRound") == 0
    assert ok(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, HASH_A)).output is True
    assert evm.call(ROUNDS, "currentRound") == 1


def test_next_round_opens_at_finalization_and_keeps_history(evm):
    ok(commit(evm, VALIDATOR_KEYS[0], update=HASH_B))
    close_window(evm)
    finals = [ok(evm.transact(k, ROUNDS, "attestAggregate", 0, HASH_A)) for k in VALIDATOR_KEYS[:3]]
    open_block = finals[-1].block_number
    reverts(commit(evm, VALIDATOR_KEYS[1], round_=0), "commitUpdate: wrong round")
    second = ok(commit(evm, VALIDATOR_KEYS[1], round_=1, update=b"\x03" * 32, samples=7))
    assert evm.call(ROUNDS, "getCommit", 1, 0)[:3] == (hexaddr(V[1]), b"\x03" * 32, 7)
    assert evm.call(ROUNDS, "getCommit", 0, 0)[:2] == (hexaddr(V[0]), HASH_B)
    assert evm.call(ROUNDS, "getRound", 1)[:5] == (open_block, open_block + 4, 0, ZERO32, 1)
    assert list(evm.call(ROUNDS, "getCommitters", 0)) == [hexaddr(V[0])]
    assert list(evm.call(ROUNDS, "getCommitters", 1)) == [hexaddr(V[1])]
    assert list(evm.call(ROUNDS, "getCommitters", 2)) == []
    assert second.block_number == open_block + 2  # inside the new window (after the reverted tx)
    close_window(evm, 1)
    for key in VALIDATOR_KEYS[1:]:
        ok(evm.transact(key, ROUNDS, "attestAggregate", 1, HASH_B))
    assert evm.call(ROUNDS, "getRound", 1)[3] == HASH_B
    assert evm.call(ROUNDS, "currentRound") == 2
    assert_solvent(evm)


def test_withdrawn_validator_cannot_attest(evm):
    ok(evm.transact(VALIDATOR_KEYS[3], STAKING, "requestWithdraw", STAKE))
    close_window(evm)
    reverts(evm.transact(VALIDATOR_KEYS[3], ROUNDS, "attestAggregate", 0, HASH_A), "attestAggregate: sender is not a validator")
    # with 30 ETH left bonded, two of three validators (20/30) are not enough, three are
    for key in VALIDATOR_KEYS[:2]:
        ok(evm.transact(key, ROUNDS, "attestAggregate", 0, HASH_A))
    assert evm.call(ROUNDS, "currentRound") == 0
    ok(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, HASH_A))
    assert evm.call(ROUNDS, "currentRound") == 1
