"""Tests for the Staking and SwarmRounds contracts as placed in the genesis state, on an in-memory py-evm chain."""

from __future__ import annotations

import dataclasses
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
    ADMISSION_ALLOWLIST,
    ADMISSION_STAKE,
    ContractParams,
    GenesisError,
    _deploy,
    _scratch_state,
    build_genesis_alloc,
)
from consensus.votes import STEP_PRECOMMIT, STEP_PREVOTE, recover_address, sign_digest, sign_vote, vote_signer
from swarmnode.node.txs import ATTEST_GAS, attest_gas
from swarmnode.p2p.identity import peer_id_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evm_harness import GAS_PRICE, GENESIS_TIME, CallReverted, Contract, EvmHarness  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ETHER = 10**18
CHAIN_ID = 1337
STAKE = 10 * ETHER
HASH_A = b"\xaa" * 32
HASH_B = b"\xbb" * 32
ZERO32 = b"\x00" * 32
ZERO_ADDRESS = "0x" + "00" * 20
GENESIS_MODEL = b"\x99" * 32
WINDOW = 40  # seconds
BOND = ETHER
ADMIT_TAG = keccak(b"swarmnode-admit")

VALIDATOR_KEYS = [keys.PrivateKey(keccak(f"validator {i}".encode())) for i in range(4)]
PARTICIPANT_KEYS = [keys.PrivateKey(keccak(f"participant {i}".encode())) for i in range(2)]
OUTSIDER_KEY = keys.PrivateKey(keccak(b"outsider"))
GAS_KEYS = [keys.PrivateKey(keccak(f"gas participant {i}".encode())) for i in range(126)]
V = [k.public_key.to_canonical_address() for k in VALIDATOR_KEYS]
P = [k.public_key.to_canonical_address() for k in PARTICIPANT_KEYS]
OUTSIDER = OUTSIDER_KEY.public_key.to_canonical_address()


def peer_id(key: keys.PrivateKey) -> str:
    """The libp2p peer id of `key`, the only one `register` accepts from its account."""
    return peer_id_of(key.to_bytes()).to_base58()


PEER_IDS = [peer_id(k) for k in VALIDATOR_KEYS]
K0, K1, K2, K3 = VALIDATOR_KEYS

PARAMS = ContractParams(
    epoch_length=10,
    unbonding_blocks=5,
    slash_fraction_bps=1_000,
    min_stake=1 * ETHER,
    genesis_model_hash=GENESIS_MODEL,
    genesis_time=GENESIS_TIME,
    commit_window_s=WINDOW,
    straggler_grace_pct=0,  # off unless a test is about it: deadlines stay genesis + WINDOW
    min_grace_s=2,
    min_participants=1,
    skip_under_min=False,
    absent_rounds=3,
    admission_mode=ADMISSION_STAKE,
    max_samples=2**64,  # the contract's own bound unless a test is about the genesis cap
    participant_bond=BOND,
    reward_per_round=1 * ETHER,
    contributor_share_bps=7_000,
    mismatch_penalty_bps=500,
    reward_pool=100 * ETHER,
)
STAKING = Contract(STAKING_ADDRESS, load_artifact("Staking")["abi"])
ROUNDS_ABI = load_artifact("SwarmRounds")["abi"]
ROUNDS = Contract(SWARM_ROUNDS_ADDRESS, ROUNDS_ABI)
ROUND_FIELDS = [c["name"] for c in ROUNDS.functions["getRound"]["outputs"][0]["components"]]
PARTICIPANT_FIELDS = [c["name"] for c in ROUNDS.functions["getParticipant"]["outputs"][0]["components"]]


def with_params(**changes) -> ContractParams:
    return dataclasses.replace(PARAMS, **changes)


def hexaddr(address: bytes) -> str:
    return "0x" + address.hex()


def make_validators(stakes: list[int] | None = None, participants: int = 2) -> list[tuple[bytes, int, str | None]]:
    """Validators V[i] with `stakes`; the first `participants` of them are genesis participants."""
    stakes = stakes or [STAKE] * 4
    return [(V[i], stakes[i], PEER_IDS[i] if i < participants else None) for i in range(len(stakes))]


def make_alloc(params: ContractParams = PARAMS, stakes: list[int] | None = None, participants: int = 2,
               extra_funded: tuple[bytes, ...] = ()) -> dict:
    funded = {a: 1_000 * ETHER for a in [*V, *P, OUTSIDER, *extra_funded]}
    return build_genesis_alloc(CHAIN_ID, make_validators(stakes, participants), funded, params)


def make_chain(params: ContractParams = PARAMS, stakes: list[int] | None = None, participants: int = 2,
               extra_funded: tuple[bytes, ...] = ()) -> EvmHarness:
    return EvmHarness(CHAIN_ID, make_alloc(params, stakes, participants, extra_funded), [STAKING, ROUNDS],
                      genesis_time=params.genesis_time)


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
    bonds = evm.call(ROUNDS, "totalBonds")
    assert evm.balance(SWARM_ROUNDS_ADDRESS) == bonds, f"SwarmRounds holds {evm.balance(SWARM_ROUNDS_ADDRESS)}, bonds {bonds}"


def vote_tuple(vote) -> tuple:
    return (vote.height, vote.round, vote.step, vote.block_hash, vote.signature)


def conflicting_votes(key, height=7, round_=0, step=STEP_PREVOTE, chain_id=CHAIN_ID, hashes=(HASH_A, HASH_B)):
    return tuple(vote_tuple(sign_vote(key.to_bytes(), chain_id, height, round_, step, h)) for h in hashes)


# ---------------------------------------------------------------- SwarmRounds helpers

def address_of(key) -> bytes:
    return key.public_key.to_canonical_address()


def update_of(key, round_: int) -> bytes:
    """A distinct update hash per participant and round (the contract refuses duplicates in a round)."""
    return keccak(address_of(key) + round_.to_bytes(32, "big"))


def round_hash(round_: int) -> bytes:
    return keccak(b"aggregate" + round_.to_bytes(32, "big"))


def commit(evm, key, round_=0, update=None, samples=100, loss=250_000, acc=900_000, held_out=(0, 0, 0),
           timestamp=None, epsilon=0, key_count=0):
    """commitUpdate; `held_out` is (heldOutLoss, heldOutAccuracy, heldOutCount), not scored by default;
    `epsilon` the micro-epsilon spent (0: no budget), `key_count` the secure-aggregation key set's size."""
    update = update_of(key, round_) if update is None else update
    return evm.transact(key, ROUNDS, "commitUpdate", round_, update, samples, loss, acc, *held_out, epsilon,
                        key_count, timestamp=timestamp)


def attest(evm, key, round_=0, model_hash=HASH_A, timestamp=None):
    return evm.transact(key, ROUNDS, "attestAggregate", round_, model_hash, timestamp=timestamp)


def register(evm, key, peer=None, value=BOND, approvals=None, timestamp=None):
    peer = peer_id(key) if peer is None else peer
    args = (peer,) if approvals is None else (peer, approvals)
    return evm.transact(key, ROUNDS, "register", *args, value=value, timestamp=timestamp)


def round_info(evm, round_=0) -> dict:
    return dict(zip(ROUND_FIELDS, evm.call(ROUNDS, "getRound", round_), strict=True))


def participant(evm, address: bytes) -> dict:
    return dict(zip(PARTICIPANT_FIELDS, evm.call(ROUNDS, "getParticipant", address), strict=True))


def wait_deadline(evm, round_=0) -> int:
    """Mine so that the next block is at the round's closeTime; returns closeTime."""
    close = round_info(evm, round_)["closeTime"]
    if evm.head_timestamp < close - 1:
        evm.mine(close - 1)
    return close


def finalize(evm, round_=0, model_hash=HASH_A, keys_=VALIDATOR_KEYS[:3]):
    """Attest `model_hash` with validators holding > 2/3 of the stake; returns the finalizing result."""
    results = [ok(attest(evm, k, round_, model_hash)) for k in keys_]
    assert results[-1].output is True, f"round {round_} did not finalize"
    return results[-1]


def absent(evm, round_) -> list[str]:
    return list(evm.call(ROUNDS, "getAbsent", round_))


# ================================================================ artifacts and genesis

@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_committed_artifacts_match_a_fresh_compile(name):
    fresh = artifact_json(compile_source(name))
    assert artifact_path(name).read_text() == fresh, f"{name}.json is stale: run scripts/compile_contracts.py"


def test_compile_script_check_passes_on_committed_artifacts():
    spec = importlib.util.spec_from_file_location("compile_contracts", ROOT / "scripts" / "compile_contracts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0  # compiles every contract (stale_artifacts) and compares


def test_load_artifact_rejects_unknown_contract():
    with pytest.raises(ContractArtifactError, match="'Nope'"):
        load_artifact("Nope")


def test_constructor_argument_types_match_the_abi():
    for name, types in (("Staking", _STAKING_INIT_TYPES), ("SwarmRounds", _ROUNDS_INIT_TYPES)):
        ctor = next(e for e in load_artifact(name)["abi"] if e["type"] == "constructor")
        assert [i["type"] for i in ctor["inputs"]] == types, name


def test_every_swarm_rounds_constructor_argument_has_a_getter():
    ctor = next(e for e in ROUNDS_ABI if e["type"] == "constructor")
    names = [i["name"] for i in ctor["inputs"]]
    assert names == ["staking", "genesisModelHash", "commitWindowSecs", "stragglerGracePct", "minGraceSecs",
                     "minParticipants", "skipUnderMin", "absentRounds", "admissionMode", "maxSamples",
                     "participantBond", "rewardPerRound", "contributorShareBps", "mismatchPenaltyBps", "initialParticipants",
                     "initialPeerIds", "epsilonBudget", "privacyDelta", "secureAggregation", "revealWindowSecs"]
    # privacyDelta is recorded without a getter (the genesis shows it); revealWindowSecs shows in revealDeadline
    getters = {n: n for n in names if not n.startswith("initial") and n not in ("privacyDelta", "revealWindowSecs")}
    getters |= {"initialParticipants": "getInitialParticipants", "initialPeerIds": "getInitialPeerIds"}
    for name, getter in getters.items():
        entry = ROUNDS.functions.get(getter)
        assert entry is not None and entry["stateMutability"] == "view" and not entry["inputs"], name


def test_genesis_places_runtime_code_at_fixed_addresses():
    alloc = make_alloc()
    for name, address in (("Staking", STAKING_ADDRESS), ("SwarmRounds", SWARM_ROUNDS_ADDRESS)):
        assert alloc[address]["code"] == code_bytes(load_artifact(name), "bytecode_runtime"), name
        assert alloc[address]["nonce"] == 1
    assert alloc[SWARM_ROUNDS_ADDRESS]["balance"] == 0
    assert alloc[P[0]] == {"balance": 1_000 * ETHER, "nonce": 0, "code": b"", "storage": {}}


EIP_170_LIMIT = 24_576  # bytes of deployed code a CREATE may leave (the genesis places code without the check)


def test_every_contract_fits_the_eip_170_code_size_limit():
    """The genesis alloc would take larger code (and this chain takes no contract creation), but the
    contracts must stay deployable by a CREATE on any EVM chain, e.g. to audit or test them with common
    tools; SwarmRounds is within ~145 bytes of the limit (see README's gaps)."""
    sizes = {name: len(code_bytes(load_artifact(name), "bytecode_runtime")) for name in ("Staking", "SwarmRounds")}
    assert all(0 < n <= EIP_170_LIMIT for n in sizes.values()), sizes


def test_genesis_staking_holds_total_stake_plus_reward_pool(evm):
    assert evm.balance(STAKING_ADDRESS) == 4 * STAKE + PARAMS.reward_pool
    assert_solvent(evm)


@pytest.mark.parametrize("change", [
    {"commit_window_s": 9}, {"straggler_grace_pct": 50}, {"min_grace_s": 3}, {"min_participants": 2},
    {"skip_under_min": True}, {"absent_rounds": 0}, {"admission_mode": ADMISSION_ALLOWLIST},
    {"participant_bond": 2}, {"max_samples": 7}, {"genesis_model_hash": HASH_B}, {"genesis_time": GENESIS_TIME + 1},
])
def test_genesis_is_deterministic_and_depends_on_every_round_param(change):
    assert make_alloc() == make_alloc()
    other = make_alloc(with_params(**change))
    assert other[SWARM_ROUNDS_ADDRESS]["storage"] != make_alloc()[SWARM_ROUNDS_ADDRESS]["storage"], change


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
    expected = {
        "staking": hexaddr(STAKING_ADDRESS), "genesisModelHash": GENESIS_MODEL, "commitWindowSecs": WINDOW,
        "stragglerGracePct": 0, "minGraceSecs": 2, "minParticipants": 1, "skipUnderMin": False, "absentRounds": 3,
        "admissionMode": 0, "maxSamples": 2**64, "participantBond": BOND, "rewardPerRound": ETHER,
        "contributorShareBps": 7_000, "mismatchPenaltyBps": 500, "currentRound": 0, "participantCount": 2, "registrySize": 2,
        "initialParticipantCount": 2, "totalBonds": 0, "windowOpen": True,
    }
    assert {name: evm.call(ROUNDS, name) for name in expected} == expected
    assert round_info(evm, 0) == {
        "openBlock": 0, "openTime": GENESIS_TIME, "closeTime": GENESIS_TIME + WINDOW, "closeBlock": 0,
        "finalBlock": 0, "baseHash": GENESIS_MODEL, "finalHash": ZERO32, "commitCount": 0, "totalSamples": 0,
        "attestationCount": 0, "participantCount": 2, "expectedCount": 2, "expectedCommitted": 0, "absentCount": 0,
        "closedEarly": False, "skipped": False, "finalized": False,
    }
    assert evm.call(ROUNDS, "baseHash", 0) == GENESIS_MODEL
    assert list(evm.call(ROUNDS, "getInitialParticipants")) == [hexaddr(V[0]), hexaddr(V[1])]
    assert list(evm.call(ROUNDS, "getInitialPeerIds")) == PEER_IDS[:2]
    assert list(evm.call(ROUNDS, "getParticipants")) == [hexaddr(V[0]), hexaddr(V[1])]
    assert participant(evm, V[1]) == {"peerId": PEER_IDS[1], "index": 1, "registered": True, "active": True,
                                      "missed": 0, "expectedRound": 1, "bond": 0}
    assert participant(evm, V[2]) == {"peerId": "", "index": 0, "registered": False, "active": False,
                                      "missed": 0, "expectedRound": 0, "bond": 0}
    assert [evm.call(ROUNDS, "isExpected", a) for a in V] == [True, True, False, False]
    assert evm.call(ROUNDS, "peerIdOf", V[1]) == PEER_IDS[1]
    assert evm.call(ROUNDS, "isRegistered", V[2]) is False
    assert evm.call(ROUNDS, "peerIdOwner", keccak(text=PEER_IDS[0])) == hexaddr(V[0])
    with pytest.raises(CallReverted, match="baseHash: round not open yet"):
        evm.call(ROUNDS, "baseHash", 1)


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


@pytest.mark.parametrize(("change", "message"), [
    ({"commit_window_s": 0}, "commit_window_s must be > 0, got 0"),
    ({"commit_window_s": 2**40 + 1}, "commit_window_s must be <= 1099511627776"),
    ({"min_grace_s": 2**40 + 1}, "min_grace_s must be <= 1099511627776"),
    ({"straggler_grace_pct": 1_001}, "straggler_grace_pct must be <= 1000, got 1001"),
    ({"min_participants": 0}, "min_participants must be > 0, got 0"),
    ({"min_participants": 129}, "min_participants must be <= 128, got 129"),
    ({"admission_mode": 2}, "admission_mode must be 0 or 1, got 2"),
    ({"reward_per_round": 2**128 + 1}, "reward_per_round must be <= "),
    ({"absent_rounds": -1}, "absent_rounds must be >= 0, got -1"),
    ({"max_samples": 0}, "max_samples must be in \\[1, 18446744073709551616\\], got 0"),
    ({"max_samples": 2**64 + 1}, "max_samples must be in \\[1, 18446744073709551616\\]"),
    ({"skip_under_min": True, "genesis_model_hash": ZERO32}, "skip_under_min needs a non-zero genesis_model_hash"),
    ({"genesis_model_hash": b"\x01"}, "genesis_model_hash must be 32 bytes"),
    ({"slash_fraction_bps": 10_001}, "slash_fraction_bps must be in \\[0, 10000\\], got 10001"),
])
def test_contract_params_reject_out_of_range_values(change, message):
    with pytest.raises(GenesisError, match=message):
        with_params(**change)


def test_genesis_rejects_bad_accounts():
    with pytest.raises(GenesisError, match="balance must be >= 0, got -1"):
        build_genesis_alloc(CHAIN_ID, make_validators(), {P[0]: -1}, PARAMS)


CTOR_DEFAULTS = {
    "staking": STAKING_ADDRESS, "genesisModelHash": GENESIS_MODEL, "commitWindowSecs": WINDOW,
    "stragglerGracePct": 100, "minGraceSecs": 2, "minParticipants": 1, "skipUnderMin": False, "absentRounds": 3,
    "admissionMode": 0, "maxSamples": 10_000, "participantBond": BOND, "rewardPerRound": ETHER,
    "contributorShareBps": 7_000, "mismatchPenaltyBps": 500, "initialParticipants": [V[0]], "initialPeerIds": [PEER_IDS[0]],
    "epsilonBudget": 0, "privacyDelta": 0, "secureAggregation": False, "revealWindowSecs": 0,
}


def deploy_rounds(**changes) -> str | None:
    """Run the SwarmRounds constructor on raw arguments (no Python-side checks); the revert reason or None."""
    args = {**CTOR_DEFAULTS, **changes}
    initcode = code_bytes(load_artifact("SwarmRounds")) + abi_encode(_ROUNDS_INIT_TYPES, list(args.values()))
    try:
        _deploy(_scratch_state(CHAIN_ID, GENESIS_TIME), CHAIN_ID, initcode, "SwarmRounds")
    except GenesisError as exc:
        return str(exc).removeprefix("SwarmRounds constructor failed: ")
    return None


@pytest.mark.parametrize(("change", "refused"), [
    ({"staking": b"\x00" * 20}, "init: zero Staking address"),
    ({"commitWindowSecs": 0}, "init: zero commit window"),
    ({"commitWindowSecs": 1}, None),
    ({"commitWindowSecs": 2**40}, None),
    ({"commitWindowSecs": 2**40 + 1}, "init: commit window above 2**40 s"),
    ({"minGraceSecs": 2**40}, None),
    ({"minGraceSecs": 2**40 + 1}, "init: min grace above 2**40 s"),
    ({"stragglerGracePct": 1_000}, None),
    ({"stragglerGracePct": 1_001}, "init: straggler grace above 1000 pct"),
    ({"minParticipants": 0}, "init: min participants below 1"),
    ({"minParticipants": 128}, None),
    ({"minParticipants": 129}, "init: min participants above 128"),
    ({"skipUnderMin": True}, None),
    ({"skipUnderMin": True, "genesisModelHash": ZERO32}, "init: skipping needs a genesis model hash"),
    ({"genesisModelHash": ZERO32}, None),
    ({"admissionMode": 1}, None),
    ({"admissionMode": 2}, "init: admission mode is not 0 or 1"),
    ({"maxSamples": 0}, "init: max samples below 1"),
    ({"maxSamples": 1}, None),
    ({"maxSamples": 2**64}, None),
    ({"maxSamples": 2**64 + 1}, "init: max samples above 2**64"),
    ({"rewardPerRound": 2**128}, None),
    ({"rewardPerRound": 2**128 + 1}, "init: reward per round above 2**128"),
    ({"contributorShareBps": 10_001}, "init: contributor share above 10000 bps"),
    ({"mismatchPenaltyBps": 10_001}, "init: mismatch penalty above 10000 bps"),
    ({"initialPeerIds": []}, "init: participants and peer ids differ in length"),
    ({"initialParticipants": [b"\x00" * 20]}, "init: zero participant address"),
    ({"initialParticipants": [V[0], V[1]], "initialPeerIds": ["a", "a"]}, "register: peer id already taken"),
    ({"initialParticipants": [V[0], V[0]], "initialPeerIds": ["a", "b"]}, "register: already registered"),
    ({"epsilonBudget": 3_000_000, "privacyDelta": 10**13}, None),
    ({"epsilonBudget": 2**64, "privacyDelta": 10**18 - 1}, None),
    ({"epsilonBudget": 2**64 + 1, "privacyDelta": 1}, "init: epsilon budget above 2**64"),
    ({"epsilonBudget": 1, "privacyDelta": 10**18}, "init: privacy delta not below 1"),
    ({"epsilonBudget": 1}, "init: epsilon and delta go together"),
    ({"privacyDelta": 1}, "init: epsilon and delta go together"),
    ({"secureAggregation": True, "revealWindowSecs": 1, "minParticipants": 2}, None),
    ({"secureAggregation": True, "minParticipants": 2}, "init: secagg needs a reveal window"),
    ({"secureAggregation": True, "revealWindowSecs": 1}, "init: secagg needs 2 participants"),
    ({"revealWindowSecs": 2**40}, None),
    ({"revealWindowSecs": 2**40 + 1}, "init: reveal window above 2**40 s"),
])
def test_swarm_rounds_constructor_bounds(change, refused):
    assert deploy_rounds(**change) == refused


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
    ok(commit(evm, K1))  # V1 contributes; V0 only attests
    wait_deadline(evm)
    finalize(evm)
    owed = evm.call(STAKING, "rewardOf", V[0])
    assert owed == 3 * ETHER // 10 // 3
    before = evm.balance(V[0])
    result = ok(evm.transact(VALIDATOR_KEYS[0], STAKING, "claimRewards"))
    assert result.output == owed
    assert result.events_named("RewardsClaimed") == [{"account": hexaddr(V[0]), "amount": owed}]
    assert evm.balance(V[0]) == before + owed - result.gas_used * GAS_PRICE
    assert evm.call(STAKING, "rewardOf", V[0]) == 0
    reverts(evm.transact(VALIDATOR_KEYS[0], STAKING, "claimRewards"), "claimRewards: nothing to claim")
    assert_solvent(evm)


def test_rewards_stop_when_the_pool_runs_dry():
    evm = make_chain(with_params(reward_pool=ETHER // 2))
    ok(commit(evm, K0))
    ok(commit(evm, K1))
    final = finalize(evm)
    credited = final.events_named("RewardCredited")
    assert sum(e["amount"] for e in credited) == ETHER // 2
    assert evm.call(STAKING, "rewardPool") == 0
    for account in V:  # what roundReward derives matches what was really credited
        got = sum(e["amount"] for e in credited if e["account"] == hexaddr(account))
        assert evm.call(ROUNDS, "roundReward", 0, account) == got, hexaddr(account)
    assert round_info(evm)["finalized"] is True  # finalization does not depend on the pool
    assert_solvent(evm)


# ================================================================ SwarmRounds: commits

def test_commit_update_records_history(evm):
    result = ok(commit(evm, K0, update=HASH_A, samples=120, loss=345_678, acc=876_543))
    assert result.events_named("UpdateCommitted") == [
        {"round": 0, "participant": hexaddr(V[0]), "index": 0, "updateHash": HASH_A,
         "numSamples": 120, "localLoss": 345_678, "localAccuracy": 876_543,
         "heldOutLoss": 0, "heldOutAccuracy": 0, "heldOutCount": 0, "epsilonSpent": 0}
    ]
    assert evm.call(ROUNDS, "getCommit", 0, 0) == (hexaddr(V[0]), HASH_A, 120, 345_678, 876_543, 0, 0, 0,
                                                   result.block_number, 0)
    assert evm.call(ROUNDS, "hasCommitted", 0, V[0]) is True
    assert evm.call(ROUNDS, "hasCommitted", 0, V[1]) is False
    info = round_info(evm)
    assert (info["commitCount"], info["totalSamples"], info["expectedCommitted"], info["closedEarly"]) == (1, 120, 1, False)
    with pytest.raises(CallReverted, match="getCommit: no such commit"):
        evm.call(ROUNDS, "getCommit", 0, 1)


def test_commit_records_the_held_out_score_of_the_base_model(evm):
    # Prepare / Execute: one committer scored the base model on 30 held-out examples, the other has none
    scored = ok(commit(evm, K0, update=HASH_A, held_out=(1_234_567, 812_345, 30)))
    unscored = ok(commit(evm, K1, update=HASH_B, held_out=(0, 0, 0)))
    # Assert: stored, returned by getCommit and logged
    assert evm.call(ROUNDS, "getCommit", 0, 0) == (hexaddr(V[0]), HASH_A, 100, 250_000, 900_000,
                                                   1_234_567, 812_345, 30, scored.block_number, 0)
    assert evm.call(ROUNDS, "getCommit", 0, 1)[5:8] == (0, 0, 0), "a count of 0 is accepted: not scored"
    (event,) = scored.events_named("UpdateCommitted")
    assert (event["heldOutLoss"], event["heldOutAccuracy"], event["heldOutCount"]) == (1_234_567, 812_345, 30)
    (event,) = unscored.events_named("UpdateCommitted")
    assert (event["heldOutLoss"], event["heldOutAccuracy"], event["heldOutCount"]) == (0, 0, 0)


def test_held_out_scores_are_bounded():
    evm = make_chain(with_params(max_samples=600), participants=3)
    reverts(commit(evm, K0, held_out=(0, 1_000_001, 10)), "commitUpdate: heldOutAccuracy above 1e6")
    reverts(commit(evm, K0, held_out=(2**64 + 1, 500_000, 10)), "commitUpdate: heldOutLoss above 2**64")
    reverts(commit(evm, K0, held_out=(0, 500_000, 601)), "commitUpdate: heldOutCount above maxSamples")
    reverts(commit(evm, K0, held_out=(0, 1, 0)), "commitUpdate: held-out scores without a held-out count")
    reverts(commit(evm, K0, held_out=(1, 0, 0)), "commitUpdate: held-out scores without a held-out count")
    ok(commit(evm, K0, held_out=(2**64, 1_000_000, 600)))  # at every bound
    ok(commit(evm, K1, held_out=(0, 0, 600)))  # with a count, zeros are scores
    assert [evm.call(ROUNDS, "getCommit", 0, i)[5:8] for i in range(2)] == [(2**64, 1_000_000, 600), (0, 0, 600)]


def test_commit_update_reverts(evm):
    reverts(commit(evm, OUTSIDER_KEY), "commitUpdate: sender not registered")
    reverts(commit(evm, K2), "commitUpdate: sender not registered")  # a validator is not a participant by itself
    reverts(commit(evm, K0, round_=1), "commitUpdate: wrong round")
    reverts(commit(evm, K0, update=ZERO32), "commitUpdate: empty update hash")
    reverts(commit(evm, K0, samples=0), "commitUpdate: zero samples")
    reverts(commit(evm, K0, acc=1_000_001), "commitUpdate: accuracy above 1e6")
    ok(commit(evm, K0, acc=1_000_000))
    reverts(commit(evm, K0, update=HASH_B), "commitUpdate: already committed this round")
    assert round_info(evm)["commitCount"] == 1


def test_duplicate_update_hash_is_refused_within_a_round(evm):
    ok(commit(evm, K0, update=HASH_A))
    reverts(commit(evm, K1, update=HASH_A), "commitUpdate: duplicate update hash")
    ok(commit(evm, K1, update=HASH_B))
    finalize(evm)
    ok(commit(evm, K0, round_=1, update=HASH_A))  # another round: the same bytes are a new update
    reverts(commit(evm, K1, round_=1, update=HASH_A), "commitUpdate: duplicate update hash")


def test_genesis_max_samples_caps_the_reported_count_and_so_the_reward_share():
    """A participant claiming a huge sample count gets at most maxSamples' worth of the contributor pool."""
    evm = make_chain(with_params(max_samples=12_000), participants=3)
    assert evm.call(ROUNDS, "maxSamples") == 12_000
    reverts(commit(evm, K0, samples=12_001), "commitUpdate: numSamples above maxSamples")
    reverts(commit(evm, K0, samples=2**64), "commitUpdate: numSamples above maxSamples")
    ok(commit(evm, K0, samples=12_000))
    ok(commit(evm, K1, samples=6_000))
    ok(commit(evm, K2, samples=6_000))
    final = finalize(evm)
    pool = 7 * ETHER // 10
    assert [e["amount"] for e in final.events_named("ContributorRewarded")] == [pool // 2, pool // 4, pool // 4]
    assert_solvent(evm)


def test_reported_numbers_are_bounded_by_2_64():
    evm = make_chain(participants=3)
    reverts(commit(evm, K0, samples=2**64 + 1), "commitUpdate: numSamples above maxSamples")
    reverts(commit(evm, K0, loss=2**64 + 1), "commitUpdate: localLoss above 2**64")
    ok(commit(evm, K0, samples=2**64, loss=2**64))
    ok(commit(evm, K1, samples=2**64))
    ok(commit(evm, K2, samples=1))  # closes early: all three expected committed
    final = finalize(evm)  # the payout arithmetic holds at the bound
    pool, total = 7 * ETHER // 10, 2**65 + 1
    assert [e["amount"] for e in final.events_named("ContributorRewarded")] == [
        pool * 2**64 // total, pool * 2**64 // total, pool // total]
    assert_solvent(evm)


# ================================================================ SwarmRounds: the commit window in time

@pytest.mark.parametrize("attest_first", [False, True])
def test_commit_window_is_a_timestamp_deadline(attest_first):
    """Three expected participants, one of them silent: the window closes at closeTime, however few blocks came."""
    evm = make_chain(participants=3)
    close = GENESIS_TIME + WINDOW
    ok(commit(evm, K0))
    assert evm.call(ROUNDS, "windowOpen", timestamp=close - 1) is True
    assert evm.call(ROUNDS, "windowOpen", timestamp=close) is False
    reverts(attest(evm, K3, timestamp=close - 2), "attestAggregate: commit window still open")
    last = ok(commit(evm, K1, timestamp=close - 1))  # the last second of the window, 3 blocks after genesis
    assert last.block_number == 3
    if attest_first:
        first = ok(attest(evm, K3, timestamp=close))  # accepted at closeTime
        reverts(commit(evm, K2, timestamp=close + 1), "commitUpdate: commit window closed")
    else:
        reverts(commit(evm, K2, timestamp=close), "commitUpdate: commit window closed")  # refused at closeTime
        first = ok(attest(evm, K3, timestamp=close + 1))
    info = round_info(evm)
    assert (info["closedEarly"], info["commitCount"], info["closeTime"]) == (False, 2, close)
    assert info["closeBlock"] == first.block_number  # the first attestation's block


def test_window_closes_early_when_every_expected_participant_committed(evm):
    ok(register(evm, PARTICIPANT_KEYS[0]))  # registered mid-round: not expected, not waited for
    assert round_info(evm)["expectedCount"] == 2
    ok(commit(evm, PARTICIPANT_KEYS[0]))
    assert (round_info(evm)["commitCount"], round_info(evm)["expectedCommitted"]) == (1, 0)
    ok(commit(evm, K0))
    assert evm.call(ROUNDS, "windowOpen") is True
    reverts(attest(evm, K2), "attestAggregate: commit window still open")
    last = ok(commit(evm, K1))
    assert last.events_named("WindowClosedEarly") == [{"round": 0, "closeBlock": last.block_number, "commitCount": 3}]
    info = round_info(evm)
    assert (info["closeBlock"], info["closedEarly"], info["expectedCommitted"]) == (last.block_number, True, 2)
    assert info["closeTime"] == GENESIS_TIME + WINDOW  # unchanged; the early close does not need it
    assert evm.call(ROUNDS, "windowOpen") is False
    ok(register(evm, PARTICIPANT_KEYS[1]))
    reverts(commit(evm, PARTICIPANT_KEYS[1]), "commitUpdate: commit window closed")
    assert evm.head_timestamp < info["closeTime"]
    ok(attest(evm, K2))  # before closeTime: the window is closed
    assert round_info(evm)["closeBlock"] == last.block_number  # the first attestation keeps the early close block


def test_extend_keeps_the_window_open_below_min_participants():
    evm = make_chain(with_params(min_participants=2), participants=3)
    ok(commit(evm, K0))
    evm.mine(GENESIS_TIME + WINDOW + 10_000)  # long past the deadline
    assert evm.call(ROUNDS, "windowOpen") is True
    reverts(attest(evm, K3), "attestAggregate: commit window still open")
    reaching = ok(commit(evm, K1))  # reaches min past the deadline: accepted, and the window closes with it
    assert "WindowClosedEarly" not in reaching.event_names()  # V2 is still missing: not an early close
    assert evm.call(ROUNDS, "windowOpen") is False
    reverts(commit(evm, K2), "commitUpdate: commit window closed")
    first = ok(attest(evm, K3))
    info = round_info(evm)
    assert (info["closedEarly"], info["skipped"], info["closeBlock"]) == (False, False, first.block_number)
    final = finalize(evm, keys_=VALIDATOR_KEYS[:2])
    assert len(final.events_named("ContributorRewarded")) == 2


@pytest.mark.parametrize("late_by", [0, 10_000])
def test_a_first_commit_past_the_deadline_restarts_the_clock(late_by):
    """A network started long after its genesis time (or back from an outage) gets a whole window."""
    evm = make_chain(participants=3)
    start = GENESIS_TIME + WINDOW + late_by
    first = ok(commit(evm, K0, timestamp=start))
    assert first.events_named("WindowRestarted") == [{"round": 0, "openTime": start, "closeTime": start + WINDOW}]
    info = round_info(evm)
    assert (info["openBlock"], info["openTime"], info["closeTime"]) == (0, start, start + WINDOW)
    assert evm.call(ROUNDS, "windowOpen") is True
    second = ok(commit(evm, K1, timestamp=start + WINDOW - 1))
    assert "WindowRestarted" not in second.event_names()
    reverts(commit(evm, K2, timestamp=start + WINDOW), "commitUpdate: commit window closed")
    ok(attest(evm, K3))


def test_a_first_commit_before_the_deadline_keeps_the_clock(evm):
    first = ok(commit(evm, K0, timestamp=GENESIS_TIME + WINDOW - 1))
    assert "WindowRestarted" not in first.event_names()
    assert round_info(evm)["closeTime"] == GENESIS_TIME + WINDOW


def test_skip_mode_never_restarts_a_round_without_commits():
    evm = make_chain(with_params(skip_under_min=True))
    reverts(commit(evm, K0, timestamp=GENESIS_TIME + WINDOW), "commitUpdate: commit window closed")


def test_extend_before_the_deadline_needs_min_commits_for_an_early_close():
    evm = make_chain(with_params(min_participants=3), participants=2)
    ok(commit(evm, K0))
    ok(commit(evm, K1))  # every expected participant committed, but 2 < min
    assert round_info(evm)["closedEarly"] is False and evm.call(ROUNDS, "windowOpen") is True
    ok(register(evm, PARTICIPANT_KEYS[0]))
    closing = ok(commit(evm, PARTICIPANT_KEYS[0]))
    assert closing.events_named("WindowClosedEarly") == [{"round": 0, "closeBlock": closing.block_number, "commitCount": 3}]


def test_skip_finalizes_on_the_base_hash_without_contributors():
    evm = make_chain(with_params(min_participants=2, skip_under_min=True), participants=3)
    ok(commit(evm, K0))
    wait_deadline(evm)
    assert evm.call(ROUNDS, "windowOpen") is False
    reverts(attest(evm, K0, model_hash=HASH_A), "attestAggregate: skipped round must attest its base hash")
    final = finalize(evm, model_hash=GENESIS_MODEL)
    assert final.events_named("RoundSkipped") == [{"round": 0, "commitCount": 1}]
    assert "ContributorRewarded" not in final.event_names()
    validator_share = ETHER * 3 // 10  # the contributors' 70% stays in the pool
    assert [e["amount"] for e in final.events_named("ValidatorRewarded")] == [validator_share // 3] * 3
    assert evm.call(STAKING, "rewardPool") == 100 * ETHER - 3 * (validator_share // 3)
    assert evm.call(ROUNDS, "roundReward", 0, V[0]) == validator_share // 3  # its commit earned nothing
    info = round_info(evm)
    assert (info["skipped"], info["finalized"], info["finalHash"]) == (True, True, GENESIS_MODEL)
    assert evm.call(ROUNDS, "baseHash", 1) == GENESIS_MODEL
    assert round_info(evm, 1)["skipped"] is False
    assert_solvent(evm)


def test_skip_mode_round_reaching_min_is_aggregated():
    evm = make_chain(with_params(min_participants=2, skip_under_min=True), participants=3)
    ok(commit(evm, K0))
    ok(commit(evm, K1))
    wait_deadline(evm)
    final = finalize(evm, model_hash=HASH_A)
    assert "RoundSkipped" not in final.event_names()
    assert len(final.events_named("ContributorRewarded")) == 2
    assert (round_info(evm)["skipped"], evm.call(ROUNDS, "baseHash", 1)) == (False, HASH_A)


def test_skip_with_no_commits_at_all():
    evm = make_chain(with_params(skip_under_min=True))
    wait_deadline(evm)
    final = finalize(evm, model_hash=GENESIS_MODEL)
    assert final.events_named("RoundSkipped") == [{"round": 0, "commitCount": 0}]
    assert absent(evm, 0) == [hexaddr(V[0]), hexaddr(V[1])]


# ================================================================ SwarmRounds: straggler grace

GRACE_WINDOW = 100


@pytest.mark.parametrize(("pct", "min_grace", "third_at", "close_at"), [
    (100, 2, 30, 60),  # the stragglers get as long again as the others took
    (50, 2, 30, 45),
    (50, 20, 30, 50),  # the minimum grace wins
    (100, 2, 80, 100),  # the formula would give 160: a deadline is never extended
    (0, 2, 30, 100),  # off
])
def test_straggler_grace_shortens_the_deadline_once_two_thirds_committed(pct, min_grace, third_at, close_at):
    evm = make_chain(with_params(commit_window_s=GRACE_WINDOW, straggler_grace_pct=pct, min_grace_s=min_grace),
                     participants=4)  # expected 4: quorum = ceil(8 / 3) = 3
    t0 = GENESIS_TIME
    ok(commit(evm, K0, timestamp=t0 + 10))
    second = ok(commit(evm, K1, timestamp=t0 + 20))  # 2 < quorum: nothing yet
    assert "DeadlineShortened" not in second.event_names()
    assert round_info(evm)["closeTime"] == t0 + GRACE_WINDOW
    third = ok(commit(evm, K2, timestamp=t0 + third_at))
    assert round_info(evm)["closeTime"] == t0 + close_at
    shortened = close_at < GRACE_WINDOW
    assert third.events_named("DeadlineShortened") == ([{"round": 0, "closeTime": t0 + close_at}] if shortened else [])
    assert evm.call(ROUNDS, "graceApplied", 0) is (pct > 0)
    # only once: a later commit (a participant registered mid-round) leaves the deadline alone
    ok(register(evm, PARTICIPANT_KEYS[0], timestamp=t0 + third_at + 1))
    later = ok(commit(evm, PARTICIPANT_KEYS[0], timestamp=t0 + third_at + 2))
    assert "DeadlineShortened" not in later.event_names()
    assert round_info(evm)["closeTime"] == t0 + close_at
    reverts(commit(evm, K3, timestamp=t0 + close_at), "commitUpdate: commit window closed")


def test_straggler_grace_quorum_is_at_least_min_participants():
    params = with_params(commit_window_s=GRACE_WINDOW, straggler_grace_pct=100, min_participants=3)
    evm = make_chain(params, participants=3)  # ceil(2 * 3 / 3) = 2, but min is 3
    ok(commit(evm, K0, timestamp=GENESIS_TIME + 10))
    ok(commit(evm, K1, timestamp=GENESIS_TIME + 20))
    assert round_info(evm)["closeTime"] == GENESIS_TIME + GRACE_WINDOW
    assert evm.call(ROUNDS, "graceApplied", 0) is False


def test_straggler_grace_counts_only_expected_commits():
    """Newcomers registered mid-round are not expected in it: their commits must not start the grace
    that shortens the window for the expected participants still training."""
    evm = make_chain(with_params(commit_window_s=GRACE_WINDOW, straggler_grace_pct=50), participants=4)
    ok(commit(evm, K0, timestamp=GENESIS_TIME + 10))
    ok(commit(evm, K1, timestamp=GENESIS_TIME + 20))
    for i, key in enumerate(PARTICIPANT_KEYS[:2]):
        ok(register(evm, key, timestamp=GENESIS_TIME + 21 + 2 * i))
        newcomer = ok(commit(evm, key, timestamp=GENESIS_TIME + 22 + 2 * i))
        assert "DeadlineShortened" not in newcomer.event_names()
    info = round_info(evm)
    assert (info["commitCount"], info["expectedCommitted"], info["closeTime"]) == (4, 2, GENESIS_TIME + GRACE_WINDOW)
    third = ok(commit(evm, K2, timestamp=GENESIS_TIME + 40))  # the third of four expected: grace 20 s
    assert third.events_named("DeadlineShortened") == [{"round": 0, "closeTime": GENESIS_TIME + 60}]


def test_rejoin_only_after_being_dropped():
    """rejoin() resets the absence counter: allowed only once dropped, or a participant that never
    commits could keep itself expected (and every window waiting for it) forever."""
    evm = make_chain(with_params(absent_rounds=2))
    ok(commit(evm, K0))
    wait_deadline(evm, 0)
    finalize(evm, 0, round_hash(0))
    assert participant(evm, V[1])["missed"] == 1
    reverts(evm.transact(K1, ROUNDS, "rejoin"), "rejoin: sender is still expected")  # 1 < 2: still expected
    ok(commit(evm, K0, 1))
    wait_deadline(evm, 1)
    finalize(evm, 1, round_hash(1))
    assert participant(evm, V[1])["missed"] == 2 and evm.call(ROUNDS, "isExpected", V[1]) is False
    ok(evm.transact(K1, ROUNDS, "rejoin"))
    zero = make_chain(with_params(absent_rounds=0))  # never dropped: nothing to rejoin
    ok(commit(zero, K0))
    wait_deadline(zero, 0)
    finalize(zero, 0, round_hash(0))
    reverts(zero.transact(K1, ROUNDS, "rejoin"), "rejoin: sender is still expected")


def test_straggler_grace_lets_a_straggler_commit_inside_the_grace():
    evm = make_chain(with_params(commit_window_s=GRACE_WINDOW, straggler_grace_pct=100), participants=4)
    for key, at in ((K0, 10), (K1, 20), (K2, 30)):
        ok(commit(evm, key, timestamp=GENESIS_TIME + at))
    last = ok(commit(evm, K3, timestamp=GENESIS_TIME + 59))  # the last second of the shortened window
    assert "WindowClosedEarly" in last.event_names()


# ================================================================ SwarmRounds: absent participants

def test_absent_participants_are_recorded_dropped_and_come_back():
    evm = make_chain(with_params(absent_rounds=2))
    # round 0: V1 misses its first round
    ok(commit(evm, K0))
    wait_deadline(evm, 0)
    final = finalize(evm, 0, round_hash(0))
    assert final.events_named("ParticipantAbsent") == [{"round": 0, "participant": hexaddr(V[1]), "missed": 1}]
    assert "ParticipantDropped" not in final.event_names()
    assert absent(evm, 0) == [hexaddr(V[1])] and round_info(evm, 0)["absentCount"] == 1
    assert participant(evm, V[1])["missed"] == 1
    assert evm.call(ROUNDS, "isExpected", V[1]) is True  # 1 < absent_rounds
    assert round_info(evm, 1)["expectedCount"] == 2
    # round 1: a second miss in a row drops it from the expected set
    ok(commit(evm, K0, 1))
    wait_deadline(evm, 1)
    assert absent(evm, 1) == []  # not before the round finalizes
    final = finalize(evm, 1, round_hash(1))
    assert final.events_named("ParticipantAbsent") == [{"round": 1, "participant": hexaddr(V[1]), "missed": 2}]
    assert final.events_named("ParticipantDropped") == [{"round": 1, "participant": hexaddr(V[1])}]
    assert evm.call(ROUNDS, "isExpected", V[1]) is False
    assert evm.call(ROUNDS, "isRegistered", V[1]) is True  # still a participant, just not waited for
    assert (round_info(evm, 2)["expectedCount"], round_info(evm, 2)["participantCount"]) == (2 - 1, 2)
    # round 2: V0 alone closes the window early; V1 is not absent from a round that did not expect it
    closing = ok(commit(evm, K0, 2))
    assert "WindowClosedEarly" in closing.event_names()
    finalize(evm, 2, round_hash(2))
    assert absent(evm, 2) == [] and participant(evm, V[1])["missed"] == 2
    # round 3: V1 commits again (accepted, not counted as expected): it is expected from round 4 on
    ok(commit(evm, K1, 3))
    assert participant(evm, V[1])["missed"] == 0 and evm.call(ROUNDS, "isExpected", V[1]) is False
    assert round_info(evm, 3)["expectedCommitted"] == 0
    ok(commit(evm, K0, 3))
    finalize(evm, 3, round_hash(3))
    assert evm.call(ROUNDS, "isExpected", V[1]) is True and round_info(evm, 4)["expectedCount"] == 2


def test_a_dropped_participant_rejoins_and_is_waited_for_again():
    """A dropped participant's commit can lose the race against an early close every round (the others
    commit first, and the window closes in that block); rejoin() makes it expected from the next round."""
    evm = make_chain(with_params(absent_rounds=1))
    reverts(evm.transact(K1, ROUNDS, "rejoin"), "rejoin: sender is still expected")
    reverts(evm.transact(OUTSIDER_KEY, ROUNDS, "rejoin"), "rejoin: sender is not an active participant")
    ok(commit(evm, K0))
    wait_deadline(evm, 0)
    finalize(evm, 0, round_hash(0))  # V1 missed round 0: dropped (absent_rounds = 1)
    assert evm.call(ROUNDS, "isExpected", V[1]) is False
    assert "WindowClosedEarly" in ok(commit(evm, K0, 1)).event_names(), "round 1 does not wait for V1"
    result = ok(evm.transact(K1, ROUNDS, "rejoin"))  # mid-round 1: expected from round 2
    assert result.events_named("Rejoined") == [{"participant": hexaddr(V[1]), "round": 1}]
    assert participant(evm, V[1])["missed"] == 0 and evm.call(ROUNDS, "isExpected", V[1]) is False
    finalize(evm, 1, round_hash(1))
    assert evm.call(ROUNDS, "isExpected", V[1]) is True and round_info(evm, 2)["expectedCount"] == 2
    assert "WindowClosedEarly" not in ok(commit(evm, K0, 2)).event_names(), "round 2 must wait for V1"
    assert "WindowClosedEarly" in ok(commit(evm, K1, 2)).event_names()


def test_absent_rounds_zero_never_drops():
    evm = make_chain(with_params(absent_rounds=0))
    for r in range(3):
        ok(commit(evm, K0, r))
        wait_deadline(evm, r)
        final = finalize(evm, r, round_hash(r))
        assert final.events_named("ParticipantAbsent") == [{"round": r, "participant": hexaddr(V[1]), "missed": r + 1}]
        assert "ParticipantDropped" not in final.event_names()
    assert evm.call(ROUNDS, "isExpected", V[1]) is True and participant(evm, V[1])["missed"] == 3


# ================================================================ SwarmRounds: membership

def test_register_with_the_exact_bond_and_leave_refunds_it(evm):
    peer = peer_id(PARTICIPANT_KEYS[0])
    for value in (0, BOND - 1, BOND + 1):
        reverts(register(evm, PARTICIPANT_KEYS[0], peer, value=value), "register: value is not the participant bond")
    reverts(register(evm, PARTICIPANT_KEYS[0], peer, approvals=[b"\x00" * 65]),
            "register: approvals are for allow-list admission only")
    result = ok(register(evm, PARTICIPANT_KEYS[0], peer))
    assert result.events_named("Registered") == [{"participant": hexaddr(P[0]), "peerId": peer, "index": 2, "bond": BOND}]
    assert evm.balance(SWARM_ROUNDS_ADDRESS) == BOND == evm.call(ROUNDS, "totalBonds")
    assert participant(evm, P[0]) == {"peerId": peer, "index": 2, "registered": True, "active": True, "missed": 0,
                                      "expectedRound": 0, "bond": BOND}
    assert evm.call(ROUNDS, "isRegistered", P[0]) is True and evm.call(ROUNDS, "isExpected", P[0]) is False
    assert (evm.call(ROUNDS, "participantCount"), evm.call(ROUNDS, "registrySize")) == (3, 3)
    assert evm.call(ROUNDS, "participantAt", 2) == hexaddr(P[0])
    assert list(evm.call(ROUNDS, "getParticipants")) == [hexaddr(V[0]), hexaddr(V[1]), hexaddr(P[0])]
    reverts(register(evm, PARTICIPANT_KEYS[0]), "register: already registered")
    reverts(register(evm, PARTICIPANT_KEYS[1], peer), "register: peer id is not the sender's key")
    reverts(register(evm, PARTICIPANT_KEYS[1], ""), "register: peer id is not a secp256k1 peer id (length)")
    reverts(register(evm, PARTICIPANT_KEYS[1], "x" * 65), "0x")  # ABI bound String[64]
    with pytest.raises(CallReverted, match="participantAt: index out of range"):
        evm.call(ROUNDS, "participantAt", 3)
    # expected from the next round on
    ok(commit(evm, K0))
    ok(commit(evm, K1))
    finalize(evm)
    assert evm.call(ROUNDS, "isExpected", P[0]) is True and round_info(evm, 1)["expectedCount"] == 3
    # leave: the bond comes back, the index stays taken
    before = evm.balance(P[0])
    left = ok(evm.transact(PARTICIPANT_KEYS[0], ROUNDS, "leave"))
    assert left.events_named("Left") == [{"participant": hexaddr(P[0])}]
    assert evm.balance(P[0]) == before + BOND - left.gas_used * GAS_PRICE
    assert evm.balance(SWARM_ROUNDS_ADDRESS) == 0 == evm.call(ROUNDS, "totalBonds")
    assert evm.call(ROUNDS, "isRegistered", P[0]) is False and evm.call(ROUNDS, "isExpected", P[0]) is False
    assert (evm.call(ROUNDS, "participantCount"), evm.call(ROUNDS, "registrySize")) == (2, 3)
    assert round_info(evm, 1)["expectedCount"] == 2
    assert participant(evm, P[0])["bond"] == 0
    reverts(evm.transact(PARTICIPANT_KEYS[0], ROUNDS, "leave"), "leave: sender is not an active participant")
    reverts(evm.transact(OUTSIDER_KEY, ROUNDS, "leave"), "leave: sender is not an active participant")
    reverts(commit(evm, PARTICIPANT_KEYS[0], 1), "commitUpdate: sender not registered")
    # back under its (only possible) peer id: same index
    ok(register(evm, PARTICIPANT_KEYS[0]))
    assert participant(evm, P[0])["index"] == 2 and evm.call(ROUNDS, "registrySize") == 3
    assert evm.call(ROUNDS, "peerIdOwner", keccak(text=peer)) == hexaddr(P[0])
    assert evm.call(ROUNDS, "isExpected", P[0]) is False  # not in the round it came back in
    taken = ok(register(evm, PARTICIPANT_KEYS[1]))
    assert taken.events_named("Registered")[0]["index"] == 3
    assert_solvent(evm)


def test_a_genesis_participant_leaves_and_comes_back_under_its_peer_id(evm):
    left = ok(evm.transact(K1, ROUNDS, "leave"))
    assert evm.balance(SWARM_ROUNDS_ADDRESS) == 0 and left.events_named("Left") == [{"participant": hexaddr(V[1])}]
    reverts(register(evm, PARTICIPANT_KEYS[0], PEER_IDS[1]), "register: peer id is not the sender's key")
    again = ok(register(evm, K1, PEER_IDS[1]))
    assert again.events_named("Registered") == [{"participant": hexaddr(V[1]), "peerId": PEER_IDS[1], "index": 1,
                                                 "bond": BOND}]
    assert list(evm.call(ROUNDS, "getParticipants")) == [hexaddr(V[0]), hexaddr(V[1])]
    assert_solvent(evm)


def _b58(raw: bytes) -> str:
    import base58

    return base58.b58encode(raw).decode()


def _forged_peer_ids(key: keys.PrivateKey) -> dict[str, tuple[str, str]]:
    """Peer ids a hostile registrant might send, with the revert each must get."""
    real = peer_id_of(key.to_bytes()).to_bytes()  # 00 25 08 02 12 21 | parity | x
    x = int.from_bytes(real[7:], "big")
    p = 2**256 - 2**32 - 977
    not_on_curve = next(v for v in range(5, 100) if pow((v**3 + 7) % p, (p - 1) // 2, p) != 1)
    flipped = real[:6] + bytes([real[6] ^ 1]) + real[7:]  # the other y: another key, another address
    return {
        "other y": (_b58(flipped), "register: peer id is not the sender's key"),
        "ed25519 peer id": ("12D3KooW" + "p" * 44, "register: peer id is not a secp256k1 peer id (length)"),
        "not base58": ("0" + _b58(real)[1:], "register: peer id is not a secp256k1 peer id"),
        "bad char": (_b58(real)[:20] + "l" + _b58(real)[21:], "register: peer id is not base58"),
        "rsa prefix": (_b58(real[:3] + b"\x00" + real[4:]), "register: peer id is not a secp256k1 peer id"),
        "parity 4": (_b58(real[:6] + b"\x04" + real[7:]), "register: peer id key is not compressed secp256k1"),
        "x not on curve": (_b58(real[:7] + not_on_curve.to_bytes(32, "big")),
                           "register: peer id key is not on secp256k1"),
        "x above p": (_b58(real[:7] + (p + x % 100).to_bytes(32, "big")), "register: peer id key is not on secp256k1"),
    }


@pytest.mark.parametrize("case", sorted(_forged_peer_ids(PARTICIPANT_KEYS[0])))
def test_register_refuses_a_peer_id_that_is_not_the_senders_key(evm, case):
    forged, reason = _forged_peer_ids(PARTICIPANT_KEYS[0])[case]
    reverts(register(evm, PARTICIPANT_KEYS[0], forged), reason)
    assert evm.call(ROUNDS, "isRegistered", P[0]) is False


def test_register_accepts_every_key_own_peer_id_both_y_parities():
    keys_ = GAS_KEYS[:12]
    evm = make_chain(extra_funded=tuple(address_of(k) for k in keys_))
    parities = set()
    gas = []
    for key in keys_:
        parities.add(peer_id_of(key.to_bytes()).to_bytes()[6])
        result = ok(register(evm, key))
        assert result.events_named("Registered")[0]["peerId"] == peer_id(key)
        gas.append(result.gas_used)
    assert parities == {2, 3}
    print(f"\nregister with the peer id bound to the key: {min(gas):,}-{max(gas):,} gas")


def test_leave_of_the_last_missing_participant_closes_the_window_early():
    evm = make_chain(participants=3)
    ok(commit(evm, K0))
    ok(commit(evm, K1))
    left = ok(evm.transact(K2, ROUNDS, "leave"))
    assert left.events_named("WindowClosedEarly") == [{"round": 0, "closeBlock": left.block_number, "commitCount": 2}]
    info = round_info(evm)
    assert (info["expectedCount"], info["closedEarly"], info["closeBlock"]) == (2, True, left.block_number)
    final = finalize(evm)
    assert absent(evm, 0) == [] and "ParticipantAbsent" not in final.event_names()  # leaving is not an absence
    assert round_info(evm, 1)["expectedCount"] == 2 and evm.call(ROUNDS, "isExpected", V[2]) is False


def test_leave_that_does_not_complete_the_round_keeps_it_open():
    evm = make_chain(participants=3)
    ok(commit(evm, K0))
    ok(evm.transact(K0, ROUNDS, "leave"))  # committed, then left: its commit still counts
    left = ok(evm.transact(K2, ROUNDS, "leave"))
    assert "WindowClosedEarly" not in left.event_names()
    info = round_info(evm)
    assert (info["expectedCount"], info["expectedCommitted"], info["commitCount"]) == (2, 1, 1)
    assert evm.call(ROUNDS, "windowOpen") is True
    closing = ok(commit(evm, K1))
    assert "WindowClosedEarly" in closing.event_names()
    final = finalize(evm)
    assert [e["participant"] for e in final.events_named("ContributorRewarded")] == [hexaddr(V[0]), hexaddr(V[1])]
    assert absent(evm, 0) == []
    assert evm.call(ROUNDS, "roundReward", 0, V[0]) == 7 * ETHER // 20 + ETHER // 10  # contributor + attester


# ================================================================ SwarmRounds: allow-list admission

def approval(signer, participant_address: bytes, chain_id=CHAIN_ID, contract=SWARM_ROUNDS_ADDRESS) -> bytes:
    digest = keccak(abi_encode(["bytes32", "uint256", "address", "address"],
                               [ADMIT_TAG, chain_id, contract, participant_address]))
    return sign_digest(signer.to_bytes(), digest)


def approvals(signers, participant_address: bytes, **digest) -> list[bytes]:
    """Signatures sorted by increasing signer address, as the contract wants them."""
    ordered = sorted(signers, key=lambda k: int.from_bytes(address_of(k), "big"))
    return [approval(k, participant_address, **digest) for k in ordered]


def by_recovered_signer(signatures: list[bytes], participant_address: bytes) -> list[bytes]:
    """Sorted by the address the contract will recover (for digests we tampered with)."""
    digest = keccak(abi_encode(["bytes32", "uint256", "address", "address"],
                               [ADMIT_TAG, CHAIN_ID, SWARM_ROUNDS_ADDRESS, participant_address]))
    return sorted(signatures, key=lambda sig: int.from_bytes(recover_address(digest, sig), "big"))


ALLOWLIST = with_params(admission_mode=ADMISSION_ALLOWLIST)


def test_allowlist_admits_with_approvals_over_two_thirds_of_stake():
    evm = make_chain(ALLOWLIST)
    good = approvals(VALIDATOR_KEYS[:3], P[0])  # 30 of 40
    reverts(register(evm, PARTICIPANT_KEYS[0], value=1, approvals=good),
            "register: allow-list admission takes no value")
    reverts(register(evm, PARTICIPANT_KEYS[0], value=0), "register: approvals hold at most 2/3 of stake")
    reverts(register(evm, PARTICIPANT_KEYS[0], value=0, approvals=approvals(VALIDATOR_KEYS[:2], P[0])),
            "register: approvals hold at most 2/3 of stake")
    result = ok(register(evm, PARTICIPANT_KEYS[0], value=0, approvals=good))
    assert result.events_named("Registered") == [{"participant": hexaddr(P[0]), "peerId": peer_id(PARTICIPANT_KEYS[0]), "index": 2, "bond": 0}]
    assert evm.balance(SWARM_ROUNDS_ADDRESS) == 0
    ok(register(evm, PARTICIPANT_KEYS[1], value=0, approvals=approvals(VALIDATOR_KEYS, P[1])))


def test_allowlist_exactly_two_thirds_is_not_enough():
    evm = make_chain(ALLOWLIST, stakes=[ETHER] * 3)
    reverts(register(evm, PARTICIPANT_KEYS[0], value=0, approvals=approvals(VALIDATOR_KEYS[:2], P[0])),
            "register: approvals hold at most 2/3 of stake")
    ok(register(evm, PARTICIPANT_KEYS[0], value=0, approvals=approvals(VALIDATOR_KEYS[:3], P[0])))


def test_allowlist_refuses_bad_approvals():
    evm = make_chain(ALLOWLIST)
    good = approvals(VALIDATOR_KEYS[:3], P[0])
    with_outsider = approvals([*VALIDATOR_KEYS[:3], OUTSIDER_KEY], P[0])
    tampered_v = [*good[:2], good[2][:64] + b"\x1d"]
    unrecoverable = [*good[:2], b"\x00" * 64 + b"\x1b"]
    cases = [
        (list(reversed(good)), "register: approval signers not strictly increasing"),
        ([good[0], good[0], good[1], good[2]], "register: approval signers not strictly increasing"),
        (with_outsider, "register: approval signer is not a validator"),
        (tampered_v, "register: approval v is not 27 or 28"),
        (unrecoverable, "register: approval signature is invalid"),
        ([*good[:2], good[2][:64]], "register: approval is not 65 bytes"),
        (by_recovered_signer(approvals(VALIDATOR_KEYS[:3], P[0], chain_id=CHAIN_ID + 1), P[0]),
         "register: approval signer is not a validator"),
        (by_recovered_signer(approvals(VALIDATOR_KEYS[:3], P[1]), P[0]), "register: approval signer is not a validator"),
        (by_recovered_signer(approvals(VALIDATOR_KEYS[:3], P[0], contract=STAKING_ADDRESS), P[0]),
         "register: approval signer is not a validator"),
    ]
    for signatures, reason in cases:
        reverts(register(evm, PARTICIPANT_KEYS[0], value=0, approvals=signatures), reason)
    assert evm.call(ROUNDS, "isRegistered", P[0]) is False
    ok(register(evm, PARTICIPANT_KEYS[0], value=0, approvals=good))


def test_allowlist_genesis_participants_need_no_approval_and_leave_without_refund():
    evm = make_chain(ALLOWLIST)
    assert evm.call(ROUNDS, "isRegistered", V[0]) is True
    ok(evm.transact(K0, ROUNDS, "leave"))
    reverts(register(evm, K0, PEER_IDS[0], value=0), "register: approvals hold at most 2/3 of stake")
    ok(register(evm, K0, PEER_IDS[0], value=0, approvals=approvals(VALIDATOR_KEYS[1:], V[0])))
    assert participant(evm, V[0])["index"] == 0


# ================================================================ SwarmRounds: attestations and finalization

def test_attest_reverts(evm):
    ok(commit(evm, K1))
    reverts(attest(evm, K0), "attestAggregate: commit window still open")
    wait_deadline(evm)
    reverts(attest(evm, PARTICIPANT_KEYS[0]), "attestAggregate: sender is not a validator")
    reverts(attest(evm, K0, 1), "attestAggregate: round not open yet")
    reverts(attest(evm, K0, model_hash=ZERO32), "attestAggregate: empty model hash")
    ok(attest(evm, K0))
    reverts(attest(evm, K0, model_hash=HASH_B), "attestAggregate: already attested this round")
    ok(attest(evm, K1))
    ok(attest(evm, K2))
    reverts(attest(evm, K3), "attestAggregate: round already finalized")
    with pytest.raises(CallReverted, match="getAttestation: no such attestation"):
        evm.call(ROUNDS, "getAttestation", 0, 3)
    with pytest.raises(CallReverted, match="getRound: round not open yet"):
        evm.call(ROUNDS, "getRound", 2)


def test_finalization_pays_contributors_and_attesters_and_penalizes_mismatch(evm):
    ok(commit(evm, K0, update=b"\x01" * 32, samples=100))
    ok(commit(evm, K1, update=b"\x02" * 32, samples=300))  # closes the window early
    wrong = ok(attest(evm, K3, model_hash=HASH_B))
    assert wrong.output is False
    for key in VALIDATOR_KEYS[:2]:
        assert ok(attest(evm, key)).output is False  # 20/40 of stake
    assert evm.call(ROUNDS, "attestedStake", 0, HASH_A) == 2 * STAKE
    final = ok(attest(evm, K2))  # 30/40 > 2/3
    assert final.output is True
    assert final.events_named("RoundFinalized") == [
        {"round": 0, "modelHash": HASH_A, "finalBlock": final.block_number, "commitCount": 2, "attestedStake": 3 * STAKE}
    ]
    now = evm.head_timestamp
    assert final.events_named("RoundOpened") == [
        {"round": 1, "openBlock": final.block_number, "openTime": now, "closeTime": now + WINDOW, "baseHash": HASH_A,
         "participantCount": 2, "expectedCount": 2}
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
    info = round_info(evm, 0)
    assert (info["finalBlock"], info["finalHash"], info["commitCount"], info["totalSamples"]) == (
        final.block_number, HASH_A, 2, 400)
    assert (info["attestationCount"], info["closedEarly"], info["finalized"], info["absentCount"]) == (4, True, True, 0)
    assert evm.call(ROUNDS, "getAttestation", 0, 0) == (hexaddr(V[3]), HASH_B, STAKE, wrong.block_number)
    assert evm.call(ROUNDS, "attestationOf", 0, V[2]) == HASH_A
    assert evm.call(ROUNDS, "currentRound") == 1
    assert evm.call(ROUNDS, "windowOpen") is True
    assert_solvent(evm)


def test_exactly_two_thirds_of_stake_does_not_finalize():
    evm = make_chain(stakes=[ETHER, ETHER, ETHER])
    ok(commit(evm, K0))
    ok(commit(evm, K1))
    ok(attest(evm, K0))
    assert ok(attest(evm, K1)).output is False
    assert evm.call(ROUNDS, "currentRound") == 0
    assert ok(attest(evm, K2)).output is True
    assert evm.call(ROUNDS, "currentRound") == 1


def test_next_round_opens_at_finalization_and_keeps_history(evm):
    ok(commit(evm, K0, update=HASH_B))
    wait_deadline(evm)
    final = finalize(evm)
    open_block, open_time = final.block_number, evm.head_timestamp
    reverts(commit(evm, K1, round_=0), "commitUpdate: wrong round")
    second = ok(commit(evm, K1, round_=1, update=b"\x03" * 32, samples=7))
    assert evm.call(ROUNDS, "getCommit", 1, 0)[:3] == (hexaddr(V[1]), b"\x03" * 32, 7)
    assert evm.call(ROUNDS, "getCommit", 0, 0)[:2] == (hexaddr(V[0]), HASH_B)
    info = round_info(evm, 1)
    assert (info["openBlock"], info["openTime"], info["closeTime"], info["baseHash"], info["commitCount"]) == (
        open_block, open_time, open_time + WINDOW, HASH_A, 1)
    assert list(evm.call(ROUNDS, "getCommitters", 0)) == [hexaddr(V[0])]
    assert list(evm.call(ROUNDS, "getCommitters", 1)) == [hexaddr(V[1])]
    assert list(evm.call(ROUNDS, "getCommitters", 2)) == []
    assert second.block_number == open_block + 2  # inside the new window (after the reverted tx)
    wait_deadline(evm, 1)
    finalize(evm, 1, HASH_B, VALIDATOR_KEYS[1:])
    assert round_info(evm, 1)["finalHash"] == HASH_B and evm.call(ROUNDS, "baseHash", 2) == HASH_B
    assert evm.call(ROUNDS, "currentRound") == 2
    assert_solvent(evm)


def test_withdrawn_validator_cannot_attest(evm):
    ok(evm.transact(VALIDATOR_KEYS[3], STAKING, "requestWithdraw", STAKE))
    ok(commit(evm, K0))
    ok(commit(evm, K1))
    reverts(attest(evm, K3), "attestAggregate: sender is not a validator")
    # with 30 ETH left bonded, two of three validators (20/30) are not enough, three are
    for key in VALIDATOR_KEYS[:2]:
        ok(attest(evm, key))
    assert evm.call(ROUNDS, "currentRound") == 0
    ok(attest(evm, K2))
    assert evm.call(ROUNDS, "currentRound") == 1


# ================================================================ SwarmRounds: gas

GAS_CAP = ATTEST_GAS


@pytest.mark.parametrize("n", [10, 40, 128])
def test_gas_of_a_finalizing_attestation(n):
    """n expected participants: measured when all n are paid, and when n - 1 are recorded absent; the gas a
    node declares for its attestation (txs.attest_gas, sized to the registry and the validators) covers
    both with at least 30% to spare."""
    extra = GAS_KEYS[: n - 2]
    evm = make_chain(with_params(commit_window_s=10_000), extra_funded=tuple(address_of(k) for k in extra))
    for key in extra:
        ok(register(evm, key))
    ok(commit(evm, K0))
    ok(commit(evm, K1))  # the two genesis participants close round 0 early
    finalize(evm, 0, round_hash(0))
    assert round_info(evm, 1)["expectedCount"] == n
    for key in [K0, K1, *extra]:
        ok(commit(evm, key, 1))
    paid = finalize(evm, 1, round_hash(1))
    assert len(paid.events_named("ContributorRewarded")) == n
    ok(commit(evm, K0, 2))
    wait_deadline(evm, 2)
    missed = finalize(evm, 2, round_hash(2))
    assert len(absent(evm, 2)) == n - 1
    print(f"\nfinalizing attestation, {n} participants: {paid.gas_used:,} gas with {n} contributors paid, "
          f"{missed.gas_used:,} gas with {n - 1} absentees recorded")
    assert paid.gas_used < GAS_CAP, f"{paid.gas_used:,} gas to finalize {n} contributors"
    assert missed.gas_used < GAS_CAP, f"{missed.gas_used:,} gas to record {n - 1} absentees"
    declared = attest_gas(evm.call(ROUNDS, "registrySize"), 2, len(VALIDATOR_KEYS))  # 2 attested before it
    assert max(paid.gas_used, missed.gas_used) * 13 // 10 <= declared, (paid.gas_used, missed.gas_used, declared)


BIG_VALIDATOR_KEYS = [keys.PrivateKey(keccak(f"big validator {i}".encode())) for i in range(64)]


LIMIT_PARTICIPANT_KEYS = [keys.PrivateKey(keccak(f"limit participant {i}".encode())) for i in range(128)]


def test_gas_of_a_finalizing_attestation_at_the_limits():
    """The most a finalizing attestation can cost: 128 contributors (none of them a validator) paid for the
    first time, and the most attestations a round can hold (64 validators, Staking.MAX_VALIDATORS: an
    attester cannot unbond until the round is final, so its slot cannot pass to another account), 60 of them
    for a wrong hash by 1-ether validators that the penalty pushes below the minimum stake (each forced out
    of the set)."""
    validators = [address_of(k) for k in BIG_VALIDATOR_KEYS]
    honest, wrong = BIG_VALIDATOR_KEYS[:4], BIG_VALIDATOR_KEYS[4:]
    participants = LIMIT_PARTICIPANT_KEYS
    params = with_params(commit_window_s=10_000)
    funded = {a: 1_000 * ETHER for a in [*validators, *(address_of(k) for k in participants)]}
    stakes = [100 * ETHER] * 4 + [ETHER] * 60  # the honest 400 of 460 ether finalize alone
    alloc = build_genesis_alloc(CHAIN_ID, [(a, st, None) for a, st in zip(validators, stakes, strict=True)],
                                funded, params)
    evm = EvmHarness(CHAIN_ID, alloc, [STAKING, ROUNDS], genesis_time=params.genesis_time)
    for key in participants:
        ok(register(evm, key))
    ok(commit(evm, participants[0], 0))  # round 0 expected nobody: its first commit closes it
    finalize(evm, 0, round_hash(0), honest)
    assert round_info(evm, 1)["expectedCount"] == 128
    for key in participants:
        ok(commit(evm, key, 1))
    for key in wrong:
        ok(attest(evm, key, 1, HASH_B))
    final = finalize(evm, 1, round_hash(1), honest)
    assert len(final.events_named("AttestationMismatch")) == 60
    assert len(final.events_named("ContributorRewarded")) == 128
    assert evm.call(STAKING, "validatorCount") == 4  # every wrong attester was forced out
    print(f"\nfinalizing attestation, 128 contributors and 64 attestations (60 wrong, forced out): "
          f"{final.gas_used:,} gas")
    assert final.gas_used * 5 // 4 <= ATTEST_GAS, f"{final.gas_used:,} gas: less than 25% below ATTEST_GAS"
    assert attest_gas(128, 63, 64) == ATTEST_GAS  # a node with this registry and set declares all of it


def test_registrations_put_in_front_of_a_sized_attestation_make_it_revert_and_full_gas_finalizes():
    """A node sizes its attestation's gas to the registry it sees (ten attestations fit in a block, not
    three). A hostile proposer can put registrations in front of the finalizing one: setting each new
    participant expected in the next round costs more than was declared, the attestation reverts as a whole
    (nothing recorded, the round still open), and the node's second copy at ATTEST_GAS finalizes."""
    extra = GAS_KEYS[:100]
    evm = make_chain(with_params(commit_window_s=10_000), extra_funded=tuple(address_of(k) for k in extra))
    ok(commit(evm, K0))
    ok(commit(evm, K1))  # both genesis participants: round 0 closes early
    for key in VALIDATOR_KEYS[:2]:
        ok(attest(evm, key, 0, round_hash(0)))  # 2 of 4 validators: not final yet
    sized = attest_gas(evm.call(ROUNDS, "registrySize"), round_info(evm, 0)["attestationCount"], len(VALIDATOR_KEYS))
    assert sized * 10 <= 30_000_000 < ATTEST_GAS * 3  # ten sized attestations fit in a block; three full ones do not
    for key in extra:
        ok(register(evm, key))
    cut_short = evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, round_hash(0), gas=sized)
    assert not cut_short.success and cut_short.gas_used == sized  # out of gas: all of it spent
    assert evm.call(ROUNDS, "currentRound") == 0
    assert round_info(evm, 0)["attestationCount"] == 2  # the reverted attestation left nothing behind
    final = ok(evm.transact(VALIDATOR_KEYS[2], ROUNDS, "attestAggregate", 0, round_hash(0), gas=ATTEST_GAS))
    assert final.output is True and evm.call(ROUNDS, "currentRound") == 1
    assert round_info(evm, 1)["expectedCount"] == 102
    assert final.gas_used > sized, (final.gas_used, sized)


RECYCLER_KEY = keys.PrivateKey(keccak(b"recycled stake"))


def test_stake_that_attested_cannot_leave_before_the_round_finalizes():
    """An attestation's stake counts as it was when cast, against the total stake at finalization. If it
    could start unbonding at once, the same coins could attest again from another account against a total
    that dropped: four 10-ether accounts in turn finalized a wrong hash over four honest 10-ether validators
    (found in review). requestWithdraw now refuses while the sender's attestation of the open round stands,
    so the stake stays to be counted, and is penalized if it attested a wrong hash."""
    evm = make_chain(stakes=[STAKE] * 4, extra_funded=(address_of(RECYCLER_KEY),))
    me = address_of(RECYCLER_KEY)
    ok(commit(evm, K0))
    ok(commit(evm, K1))  # both genesis participants: round 0 closes early
    ok(evm.transact(RECYCLER_KEY, STAKING, "deposit", value=STAKE))
    assert attest(evm, RECYCLER_KEY, 0, HASH_B).output is False
    reverts(evm.transact(RECYCLER_KEY, STAKING, "requestWithdraw", STAKE),
            "requestWithdraw: attested in the open round (wait until it finalizes)")
    reverts(evm.transact(RECYCLER_KEY, STAKING, "requestWithdraw", STAKE // 2),
            "requestWithdraw: attested in the open round (wait until it finalizes)")
    assert evm.call(STAKING, "totalStake") == 5 * STAKE  # its 10 ether still count against HASH_B's 10
    ok(evm.transact(VALIDATOR_KEYS[3], STAKING, "requestWithdraw", STAKE))  # not attested yet: free to leave
    final = finalize(evm, 0, round_hash(0), VALIDATOR_KEYS[:3])  # 30 of 40 ether
    assert round_info(evm, 0)["finalHash"] == round_hash(0)
    assert [e["validator"] for e in final.events_named("AttestationMismatch")] == ["0x" + me.hex()]
    left = evm.call(STAKING, "stakeOf", me)
    assert left == STAKE * 95 // 100  # the wrong attestation's penalty (500 bps) was taken: the stake was there
    ok(evm.transact(RECYCLER_KEY, STAKING, "requestWithdraw", left))  # the round is final: free to leave
