"""Builds the genesis state (py-evm `genesis_state` dict) holding the swarm contracts, already initialized.

`build_genesis_alloc` returns `{address: {"balance", "nonce", "code", "storage"}}` for
`Chain.from_genesis`. It contains the pre-funded accounts and the two contracts at their fixed
addresses, with their storage exactly as their constructors would have left it.

How the storage is obtained: each constructor (the committed init bytecode plus ABI-encoded arguments)
is executed once in a scratch, in-memory Prague state whose execution context is block 0 at the genesis
timestamp (round 0 of SwarmRounds opens then) and our chain id. A `PragueState` subclass records every
slot written by SSTORE; after the deployment the final value of each written slot is read back from the
state, zeros are dropped, and the runtime code returned by the constructor is taken as the account's code. The result depends only on the arguments and the
committed artifacts, so every node derives the same genesis. Nothing in a constructor refers to the
contract's own (scratch) address, which is what makes moving code + storage to the fixed address sound.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth._utils.address import generate_contract_address
from eth.db.atomic import AtomicDB
from eth.vm.chain_context import ChainContext
from eth.vm.forks.prague import PragueVM
from eth.vm.forks.prague.state import PragueState
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_keys import keys
from eth_utils import keccak

from consensus.contracts import (
    STAKING_ADDRESS,
    SWARM_ROUNDS_ADDRESS,
    code_bytes,
    load_artifact,
)
from consensus.errors import ConsensusError

ETHER = 10**18
BPS = 10_000
MAX_VALIDATORS = 64  # Staking.vy MAX_VALIDATORS
MAX_PARTICIPANTS = 128  # SwarmRounds.vy MAX_PARTICIPANTS
MAX_PEER_ID = 64  # SwarmRounds.vy MAX_PEER_ID

GenesisValidator = tuple[bytes, int, "str | None"]  # (20-byte address, stake in wei, libp2p peer id)

_DEPLOYER_KEY = keys.PrivateKey(keccak(b"swarmnode genesis deployer"))
_SCRATCH_GAS_LIMIT = 1_000_000_000
_ERROR_SELECTOR = bytes.fromhex("08c379a0")

_STAKING_INIT_TYPES = [
    "address", "uint256", "uint256", "uint256", "uint256", "uint256", "address[]", "uint256[]",
]
_ROUNDS_INIT_TYPES = [
    "address",  # staking
    "bytes32",  # genesisModelHash
    "uint256", "uint256", "uint256", "uint256",  # commitWindowSecs, stragglerGracePct, minGraceSecs, minParticipants
    "bool",  # skipUnderMin
    "uint256", "uint256", "uint256", "uint256",  # absentRounds, admissionMode, maxSamples, participantBond
    "uint256", "uint256", "uint256",  # rewardPerRound, contributorShareBps, mismatchPenaltyBps
    "address[]", "string[]",  # initialParticipants, initialPeerIds
    "uint256", "uint256", "bool", "uint256",  # epsilonBudget, privacyDelta, secureAggregation, revealWindowSecs
]
ADMISSION_STAKE = 0  # SwarmRounds.admissionMode: register pays participant_bond
ADMISSION_ALLOWLIST = 1  # register carries approvals by > 2/3 of stake
MAX_GRACE_PCT = 1_000  # SwarmRounds.vy MAX_GRACE_PCT
MAX_DURATION = 2**40  # SwarmRounds.vy MAX_DURATION (seconds)
MAX_REWARD_PER_ROUND = 2**128  # SwarmRounds.vy MAX_REWARD
MAX_SAMPLES = 2**64  # SwarmRounds.vy MAX_REPORTED


class GenesisError(ConsensusError):
    """Genesis parameters are invalid, or a contract constructor rejected them."""


@dataclass(frozen=True)
class ContractParams:
    """Parameters written into the contracts at genesis. Amounts are in wei, fractions in basis points."""

    epoch_length: int = 100  # blocks per validator-set epoch (Staking.epochLength)
    unbonding_blocks: int = 100  # delay between requestWithdraw and withdraw
    slash_fraction_bps: int = 1_000  # stake burned per proven double vote
    min_stake: int = 1 * ETHER  # bonded stake is 0 or >= this
    genesis_model_hash: bytes = b"\x00" * 32  # round 0's base model (SwarmRounds.genesisModelHash)
    genesis_time: int = 0  # block 0's timestamp: round 0 opens then
    commit_window_s: int = 60  # the longest a round waits for commits, in block-timestamp seconds
    straggler_grace_pct: int = 100  # once 2/3 of the expected committed: the rest get this % of the time so far
    min_grace_s: int = 2  # the straggler grace is at least this long
    min_participants: int = 1  # fewest commits a round aggregates
    skip_under_min: bool = False  # at the deadline below min_participants: skip the round (else wait)
    absent_rounds: int = 3  # consecutive missed rounds that leave the expected set; 0: never
    admission_mode: int = ADMISSION_STAKE  # or ADMISSION_ALLOWLIST
    max_samples: int = 1_000_000  # the largest numSamples a commit may report (reward share, rule weight)
    participant_bond: int = 1 * ETHER  # paid by register in stake mode, refunded by leave
    reward_per_round: int = 1 * ETHER  # paid from the pool at each finalization
    contributor_share_bps: int = 7_000  # part of reward_per_round for contributors (rest: attesters)
    mismatch_penalty_bps: int = 500  # stake burned for attesting a non-final hash
    reward_pool: int = 1_000 * ETHER  # wei held by Staking for rewards, on top of the stake
    epsilon_budget: int = 0  # micro-epsilon per participant; 0: no privacy ledger
    privacy_delta: int = 0  # delta * 1e18, recorded with the budget
    secure_aggregation: bool = False
    reveal_window_s: int = 0  # how long after a round's window closes its shares may be revealed

    def __post_init__(self) -> None:
        for name in ("epoch_length", "commit_window_s", "min_stake", "min_participants"):
            if getattr(self, name) <= 0:
                raise GenesisError(f"contract param {name} must be > 0, got {getattr(self, name)}")
        for name in ("unbonding_blocks", "reward_per_round", "reward_pool", "genesis_time", "min_grace_s",
                     "absent_rounds", "participant_bond", "straggler_grace_pct"):
            if getattr(self, name) < 0:
                raise GenesisError(f"contract param {name} must be >= 0, got {getattr(self, name)}")
        for name in ("slash_fraction_bps", "contributor_share_bps", "mismatch_penalty_bps"):
            if not 0 <= getattr(self, name) <= BPS:
                raise GenesisError(f"contract param {name} must be in [0, {BPS}], got {getattr(self, name)}")
        self._check_rounds()

    def _check_rounds(self) -> None:
        """The bounds SwarmRounds' constructor enforces, reported before running it."""
        if not isinstance(self.genesis_model_hash, bytes) or len(self.genesis_model_hash) != 32:
            raise GenesisError(f"contract param genesis_model_hash must be 32 bytes, got {self.genesis_model_hash!r}")
        limits = {"commit_window_s": MAX_DURATION, "min_grace_s": MAX_DURATION, "straggler_grace_pct": MAX_GRACE_PCT,
                  "min_participants": MAX_PARTICIPANTS, "reward_per_round": MAX_REWARD_PER_ROUND}
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise GenesisError(f"contract param {name} must be <= {limit}, got {getattr(self, name)}")
        if not 1 <= self.max_samples <= MAX_SAMPLES:
            raise GenesisError(f"contract param max_samples must be in [1, {MAX_SAMPLES}], got {self.max_samples}")
        if self.admission_mode not in (ADMISSION_STAKE, ADMISSION_ALLOWLIST):
            raise GenesisError(f"contract param admission_mode must be 0 or 1, got {self.admission_mode}")
        if self.skip_under_min and not any(self.genesis_model_hash):
            raise GenesisError("contract param skip_under_min needs a non-zero genesis_model_hash")


# ---------------------------------------------------------------- input validation

def _check_address(address: bytes, what: str) -> None:
    if not isinstance(address, bytes) or len(address) != 20:
        raise GenesisError(f"{what} address must be 20 bytes, got {address!r}")
    if address in (STAKING_ADDRESS, SWARM_ROUNDS_ADDRESS):
        raise GenesisError(f"{what} address 0x{address.hex()} collides with a contract address")


def _check_peer_id(peer_id: str, address: bytes) -> None:
    if not peer_id or len(peer_id) > MAX_PEER_ID or not peer_id.isascii():
        raise GenesisError(
            f"peer id of validator 0x{address.hex()} must be 1..{MAX_PEER_ID} ASCII chars, got {peer_id!r}"
        )


def validate_validators(validators: Sequence[GenesisValidator], params: ContractParams) -> None:
    """Raise GenesisError unless the validators can be written into the contracts as given."""
    if not validators:
        raise GenesisError("genesis needs at least one validator")
    if len(validators) > MAX_VALIDATORS:
        raise GenesisError(f"at most {MAX_VALIDATORS} genesis validators, got {len(validators)}")
    seen: set[bytes] = set()
    peer_ids: set[str] = set()
    for address, stake, peer_id in validators:
        _check_address(address, "validator")
        if address in seen:
            raise GenesisError(f"duplicate validator 0x{address.hex()}")
        seen.add(address)
        if stake < params.min_stake:
            raise GenesisError(f"validator 0x{address.hex()} stake {stake} is below min stake {params.min_stake}")
        if peer_id is not None:
            _check_peer_id(peer_id, address)
            if peer_id in peer_ids:
                raise GenesisError(f"duplicate peer id {peer_id!r}")
            peer_ids.add(peer_id)
    if len(peer_ids) > MAX_PARTICIPANTS:
        raise GenesisError(f"at most {MAX_PARTICIPANTS} genesis participants, got {len(peer_ids)}")


def validate_accounts(accounts: Mapping[bytes, int]) -> None:
    for address, balance in accounts.items():
        _check_address(address, "account")
        if balance < 0:
            raise GenesisError(f"account 0x{address.hex()} balance must be >= 0, got {balance}")


# ---------------------------------------------------------------- constructor arguments

def staking_constructor_args(validators: Sequence[GenesisValidator], params: ContractParams) -> bytes:
    return abi_encode(
        _STAKING_INIT_TYPES,
        [
            SWARM_ROUNDS_ADDRESS,
            params.epoch_length,
            params.unbonding_blocks,
            params.slash_fraction_bps,
            params.min_stake,
            params.reward_pool,
            [address for address, _, _ in validators],
            [stake for _, stake, _ in validators],
        ],
    )


def swarm_rounds_constructor_args(validators: Sequence[GenesisValidator], params: ContractParams) -> bytes:
    registered = [(address, peer_id) for address, _, peer_id in validators if peer_id is not None]
    return abi_encode(
        _ROUNDS_INIT_TYPES,
        [
            STAKING_ADDRESS,
            params.genesis_model_hash,
            params.commit_window_s,
            params.straggler_grace_pct,
            params.min_grace_s,
            params.min_participants,
            params.skip_under_min,
            params.absent_rounds,
            params.admission_mode,
            params.max_samples,
            params.participant_bond,
            params.reward_per_round,
            params.contributor_share_bps,
            params.mismatch_penalty_bps,
            [address for address, _ in registered],
            [peer_id for _, peer_id in registered],
            params.epsilon_budget,
            params.privacy_delta,
            params.secure_aggregation,
            params.reveal_window_s,
        ],
    )


# ---------------------------------------------------------------- scratch deployment

class _RecordingState(PragueState):
    """A Prague state that remembers which (address, slot) pairs were written by SSTORE."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.written_slots: set[tuple[bytes, int]] = set()

    def set_storage(self, address: bytes, slot: int, value: int) -> None:
        super().set_storage(address, slot, value)
        self.written_slots.add((address, slot))


_RecordingVM = PragueVM.configure(__name__="GenesisRecordingVM", _state_class=_RecordingState)


def _scratch_state(chain_id: int, timestamp: int) -> _RecordingState:
    header = PragueVM.create_genesis_header(
        gas_limit=_SCRATCH_GAS_LIMIT,
        timestamp=timestamp,
        difficulty=0,
        nonce=b"\x00" * 8,
        mix_hash=b"\x00" * 32,
        base_fee_per_gas=1,
    )
    state = _RecordingVM.build_state(AtomicDB(), header, ChainContext(chain_id))
    state.set_balance(_DEPLOYER_KEY.public_key.to_canonical_address(), 10**30)
    state.persist()
    return state  # type: ignore[return-value]


def _revert_reason(output: bytes) -> str:
    if output[:4] == _ERROR_SELECTOR:
        return abi_decode(["string"], output[4:])[0]
    return f"0x{output.hex()}"


def _deploy(state: _RecordingState, chain_id: int, initcode: bytes, name: str) -> dict[str, Any]:
    """Run `initcode` in `state`; return the created account as a genesis entry (code + storage)."""
    deployer = _DEPLOYER_KEY.public_key.to_canonical_address()
    nonce = state.get_nonce(deployer)
    builder = _RecordingVM.get_transaction_builder()
    unsigned = builder.create_unsigned_transaction(
        nonce=nonce, gas_price=1, gas=_SCRATCH_GAS_LIMIT - 1, to=b"", value=0, data=initcode
    )
    state.written_slots.clear()
    computation = state.apply_transaction(unsigned.as_signed_transaction(_DEPLOYER_KEY, chain_id=chain_id))
    if computation.is_error:
        raise GenesisError(f"{name} constructor failed: {_revert_reason(computation.output)}")
    created = generate_contract_address(deployer, nonce)
    slots = sorted(slot for address, slot in state.written_slots if address == created)
    storage = {slot: state.get_storage(created, slot) for slot in slots}
    return {
        "balance": 0,
        "nonce": 1,  # EIP-161: a created contract starts at nonce 1
        "code": state.get_code(created),
        "storage": {slot: value for slot, value in storage.items() if value != 0},
    }


def contract_genesis_accounts(
    chain_id: int, validators: Sequence[GenesisValidator], params: ContractParams
) -> dict[bytes, dict[str, Any]]:
    """Staking and SwarmRounds as initialized genesis accounts at their fixed addresses (balance 0)."""
    state = _scratch_state(chain_id, params.genesis_time)
    staking_init = code_bytes(load_artifact("Staking")) + staking_constructor_args(validators, params)
    rounds_init = code_bytes(load_artifact("SwarmRounds")) + swarm_rounds_constructor_args(validators, params)
    return {
        STAKING_ADDRESS: _deploy(state, chain_id, staking_init, "Staking"),
        SWARM_ROUNDS_ADDRESS: _deploy(state, chain_id, rounds_init, "SwarmRounds"),
    }


def build_genesis_alloc(
    chain_id: int,
    validators: Iterable[GenesisValidator],
    accounts: Mapping[bytes, int],
    params: ContractParams,
) -> dict[bytes, dict[str, Any]]:
    """The py-evm genesis state: funded accounts plus both contracts, initialized.

    Staking holds total stake + params.reward_pool in wei, so withdrawals and reward claims are backed.
    """
    validators = list(validators)
    validate_validators(validators, params)
    validate_accounts(accounts)
    alloc: dict[bytes, dict[str, Any]] = {
        address: {"balance": balance, "nonce": 0, "code": b"", "storage": {}}
        for address, balance in sorted(accounts.items())
    }
    contracts = contract_genesis_accounts(chain_id, validators, params)
    contracts[STAKING_ADDRESS]["balance"] = sum(stake for _, stake, _ in validators) + params.reward_pool
    alloc.update(contracts)
    return alloc
