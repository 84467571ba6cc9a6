"""From a Genesis to py-evm's genesis parameters and state, and the genesis block hash that names a network.

When the contracts package is present, `consensus.genesis_state.build_genesis_alloc` places the Staking
and SwarmRounds contracts (with their storage initialised from the genesis) into the state. Until then,
the genesis state holds only funded accounts.
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import Any

from eth.abc import BlockAPI, BlockPersistResult
from eth.chains.base import MiningChain
from eth.db.atomic import AtomicDB
from eth.vm.forks import PragueVM
from eth_utils import keccak

from consensus import ordered_trie
from consensus.errors import ConsensusError
from consensus.genesis import Genesis, GenesisError, genesis_to_dict, privacy_params

GENESIS_BASE_FEE = 10**9  # 1 gwei
ZERO32 = b"\x00" * 32
STAKING_ADDRESS = bytes(18) + b"\x10\x00"
ROUNDS_ADDRESS = bytes(18) + b"\x10\x01"


class _SwarmMiningChain(MiningChain):
    def persist_block(self, block: BlockAPI, perform_validation: bool = True) -> BlockPersistResult:
        """As py-evm's, minus reading every new canonical block back from the DB to return it (~10% of
        an import); nothing here uses those blocks, so the result lists none."""
        if perform_validation:
            self.validate_block(block)
        self.chaindb.persist_block(block)
        return BlockPersistResult(imported_block=block, new_canonical_blocks=(), old_canonical_blocks=())


@functools.lru_cache(maxsize=16)
def chain_class(chain_id: int) -> type[MiningChain]:
    """The py-evm chain class for our network: Prague from block 0, our chain id."""
    ordered_trie.install()  # identical tries, built faster (see ordered_trie)
    return _SwarmMiningChain.configure(  # type: ignore[return-value]
        __name__="SwarmChain", vm_configuration=((0, PragueVM),), chain_id=chain_id
    )


def genesis_digest(g: Genesis) -> bytes:
    """keccak256 of the canonical JSON of the whole genesis, put in block 0's extra_data so that the
    genesis block hash commits to every field, including the task and the consensus parameters."""
    doc = json.dumps(genesis_to_dict(g), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return keccak(doc.encode())


def genesis_params(g: Genesis) -> dict[str, Any]:
    return {
        "difficulty": 0,
        "gas_limit": g.block_gas_limit,
        "timestamp": g.genesis_time,
        "nonce": b"\x00" * 8,
        "mix_hash": ZERO32,
        "base_fee_per_gas": GENESIS_BASE_FEE,
        "extra_data": genesis_digest(g),
        "coinbase": b"\x00" * 20,
    }


def _plain_alloc(g: Genesis) -> dict[bytes, dict[str, Any]]:
    alloc: dict[bytes, dict[str, Any]] = {}
    for account in g.accounts:
        alloc[account.address] = {"balance": account.balance, "nonce": 0, "code": b"", "storage": {}}
    return alloc


def _contract_alloc(g: Genesis) -> dict[bytes, dict[str, Any]] | None:
    """The full genesis state with contracts, or None while the contracts package does not exist yet."""
    try:
        module = importlib.import_module("consensus.genesis_state")
    except ImportError:
        return None
    build = getattr(module, "build_genesis_alloc", None)
    params_cls = getattr(module, "ContractParams", None)
    if build is None or params_cls is None:
        return None
    params = _contract_params(params_cls, g)
    validators = [(v.address, v.stake, v.peer_id) for v in g.validators]
    accounts = {a.address: a.balance for a in g.accounts}
    try:
        return build(g.chain_id, validators, accounts, params)
    except ConsensusError as exc:  # the contracts refuse the genesis values: report it as a genesis error
        raise GenesisError("validators", f"the contracts reject this genesis: {exc}") from exc


def _contract_params(params_cls: Any, g: Genesis) -> Any:
    """Fill the contract parameters we know from the genesis; the rest keep the class defaults."""
    r = g.rounds
    privacy = privacy_params(g.privacy)
    known = {
        "epoch_length": g.consensus.epoch_length,
        "genesis_model_hash": g.genesis_model_hash,
        "genesis_time": g.genesis_time,  # round 0 opens at block 0's timestamp
        "commit_window_s": r.commit_window_s,
        "straggler_grace_pct": r.straggler_grace_pct,
        "min_grace_s": r.min_grace_s,
        "min_participants": r.min_participants,
        "skip_under_min": r.under_min == "skip",
        "absent_rounds": r.absent_rounds,
        "admission_mode": 1 if r.admission == "allowlist" else 0,  # SwarmRounds.admissionMode
        "max_samples": r.max_samples,
        "participant_bond": r.participant_bond,
        "reward_per_round": r.reward_per_round,
        "epsilon_budget": privacy.epsilon_budget_micro,
        "privacy_delta": privacy.delta_e18,
        "secure_aggregation": privacy.secure_aggregation,
        "reveal_window_s": privacy.reveal_window_s,
    }
    fields = getattr(params_cls, "__dataclass_fields__", {})
    return params_cls(**{k: v for k, v in known.items() if k in fields})


def genesis_state(g: Genesis) -> dict[bytes, dict[str, Any]]:
    alloc = _contract_alloc(g)
    return alloc if alloc is not None else _plain_alloc(g)


@functools.lru_cache(maxsize=8)
def genesis_hash(g: Genesis) -> bytes:
    """The hash of the genesis block this file produces: the network's identity."""
    chain = chain_class(g.chain_id).from_genesis(AtomicDB(), genesis_params(g), genesis_state(g))
    return bytes(chain.get_canonical_head().hash)
