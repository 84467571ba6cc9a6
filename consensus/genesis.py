"""The genesis file: a TOML description of a network's initial state, parsed into frozen dataclasses.

Layout (every amount is wei: an integer, or a string such as "32 ether", "5 gwei", "12345"; strings
are used when writing because TOML integers stop at 2**63):

    chain_id = 7331
    genesis_time = 1700000000          # timestamp of block 0, seconds
    block_gas_limit = 30000000
    genesis_model_hash = "0x<64 hex>"  # keccak256 of the canonical initial model

    [consensus]                        # timeouts in milliseconds, epoch in blocks
    block_interval_ms = 1000
    propose_timeout_ms = 3000
    prevote_timeout_ms = 1000
    precommit_timeout_ms = 1000
    timeout_delta_ms = 500
    epoch_length = 100
    empty_block_interval_ms = 5000     # idle: one empty block per 5 s (0: every block_interval_ms)

    [rounds]                           # configures the SwarmRounds contract; times are block-timestamp seconds
    commit_window_s = 60               # the longest a round waits for commits
    straggler_grace_pct = 100          # once 2/3 of the expected participants committed, the rest get
                                       # this % of the time taken so far (0: off)
    min_grace_s = 2                    # ... but at least this many seconds
    min_participants = 1               # fewest commits a round aggregates
    under_min = "extend"               # or "skip": what a round below min_participants does at its deadline
    absent_rounds = 3                  # missing this many rounds in a row leaves the expected set (0: never)
    admission = "stake"                # or "allowlist": register with participant_bond, or with validator approvals
    max_samples = 1000000              # the largest numSamples a commit may report: caps a participant's
                                       # reward share and the weight the aggregation rule may give it
    participant_bond = "1 ether"       # refunded on leave (stake admission only)
    reward_per_round = "1 ether"

    [task]                             # opaque to consensus: the learning layer interprets it
    dataset = "mnist"

    [privacy]                          # optional; the learning layer reads it whole (swarmnode/privacy/config.py)
    dp = "participant"                 # consensus reads: with dp on, epsilon and delta (the per-participant
    epsilon = 3.0                      # budget SwarmRounds enforces), secure_aggregation and
    delta = 1e-5                       # secagg_reveal_s (how long reveals of shares are taken)

    [[validators]]
    address = "0x..."
    stake = "32 ether"
    peer_id = "16Uiu2..."              # optional

    [[accounts]]
    address = "0x..."
    balance = "1000 ether"

The network is identified by the hash of the genesis block built from this file (see chain.py).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from consensus.errors import ConsensusError

DEFAULT_GAS_LIMIT = 30_000_000
_UNITS = {"wei": 1, "gwei": 10**9, "ether": 10**18}
_AMOUNT_RE = re.compile(r"^\s*(\d+)(?:\s*(wei|gwei|ether))?\s*$")
_HEX_ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HEX32_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")


class GenesisError(ConsensusError):
    """The genesis file is unreadable or a field is missing or invalid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"genesis field '{field}': {message}")
        self.field = field


# ---------------------------------------------------------------- parsing helpers (each names its field)


def parse_amount(value: Any, name: str) -> int:
    """An amount of wei from an int or a string like "32 ether"."""
    if isinstance(value, bool):
        raise GenesisError(name, f"expected an amount of wei, got {value!r}")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and (m := _AMOUNT_RE.match(value)):
        amount = int(m.group(1)) * _UNITS[m.group(2) or "wei"]
    else:
        raise GenesisError(name, f"expected an amount like 1000 or \"32 ether\", got {value!r}")
    if amount < 0 or amount >= 2**256:
        raise GenesisError(name, f"amount out of range: {amount}")
    return amount


def format_amount(wei: int) -> str:
    if wei and wei % 10**18 == 0:
        return f"{wei // 10**18} ether"
    if wei and wei % 10**9 == 0:
        return f"{wei // 10**9} gwei"
    return str(wei)


def parse_address(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX_ADDRESS_RE.match(value):
        raise GenesisError(name, f"expected a 0x-prefixed 20-byte hex address, got {value!r}")
    return bytes.fromhex(value[2:])


def parse_hash32(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or not _HEX32_RE.match(value):
        raise GenesisError(name, f"expected a 0x-prefixed 32-byte hex string, got {value!r}")
    return bytes.fromhex(value[2:])


def parse_int(value: Any, name: str, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenesisError(name, f"expected an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise GenesisError(name, f"must be in [{minimum}, {maximum}], got {value}")
    return value


@dataclass(frozen=True)
class ValidatorSpec:
    address: bytes  # 20 bytes
    stake: int  # wei
    peer_id: str | None = None


@dataclass(frozen=True)
class AccountSpec:
    address: bytes  # 20 bytes
    balance: int  # wei


@dataclass(frozen=True)
class ConsensusParams:
    block_interval_ms: int = 1000
    propose_timeout_ms: int = 3000
    prevote_timeout_ms: int = 1000
    precommit_timeout_ms: int = 1000
    timeout_delta_ms: int = 500
    epoch_length: int = 100
    # the longest gap between blocks while no transaction is pending; 0: an empty block every
    # block_interval_ms. Blocks still come block_interval_ms apart whenever transactions wait.
    empty_block_interval_ms: int = 0


UNDER_MIN_CHOICES = ("extend", "skip")
ADMISSION_CHOICES = ("stake", "allowlist")
MAX_REWARD_PER_ROUND = 2**128  # SwarmRounds bounds it so payout arithmetic cannot overflow
_ROUNDS_RANGES = {  # inclusive bounds of the integer [rounds] fields
    "commit_window_s": (1, 86_400),
    "straggler_grace_pct": (0, 1_000),
    "min_grace_s": (0, 3_600),
    "min_participants": (1, 128),
    "absent_rounds": (0, 1_000_000),
    "max_samples": (1, 2**64),
}
_ROUNDS_CHOICES = {"under_min": UNDER_MIN_CHOICES, "admission": ADMISSION_CHOICES}


@dataclass(frozen=True)
class RoundsParams:
    """The [rounds] table: how SwarmRounds times rounds and admits participants. Times are block-timestamp
    seconds. Built only valid: a bad value raises GenesisError naming `rounds.<field>`."""

    commit_window_s: int = 60  # the longest a round waits for commits
    straggler_grace_pct: int = 100  # once 2/3 of the expected committed, the rest get this % of the time so far
    min_grace_s: int = 2  # the straggler grace is at least this long
    min_participants: int = 1  # fewest commits a round aggregates
    under_min: str = "extend"  # "extend": wait for min_participants; "skip": finalize on the base model
    absent_rounds: int = 3  # consecutive missed rounds that drop a participant from the expected set; 0: never
    admission: str = "stake"  # "stake": register pays participant_bond; "allowlist": > 2/3 of stake approves
    participant_bond: int = 10**18  # wei, refunded on leave (stake admission)
    max_samples: int = 1_000_000  # the largest numSamples a commit may report (reward share, rule weight)
    reward_per_round: int = 10**18  # wei

    def __post_init__(self) -> None:
        for name, (low, high) in _ROUNDS_RANGES.items():
            parse_int(getattr(self, name), f"rounds.{name}", minimum=low, maximum=high)
        for name, choices in _ROUNDS_CHOICES.items():
            if getattr(self, name) not in choices:
                raise GenesisError(f"rounds.{name}", f"expected one of {', '.join(map(repr, choices))}, "
                                                     f"got {getattr(self, name)!r}")
        parse_int(self.participant_bond, "rounds.participant_bond", maximum=2**256 - 1)
        parse_int(self.reward_per_round, "rounds.reward_per_round", maximum=MAX_REWARD_PER_ROUND)


@dataclass(frozen=True)
class Genesis:
    chain_id: int
    validators: tuple[ValidatorSpec, ...]
    accounts: tuple[AccountSpec, ...] = ()
    consensus: ConsensusParams = ConsensusParams()
    rounds: RoundsParams = RoundsParams()
    task: dict[str, Any] = field(default_factory=dict, hash=False)  # opaque: the learning layer reads it
    privacy: dict[str, Any] = field(default_factory=dict, hash=False)  # [privacy]: see privacy_params
    genesis_model_hash: bytes = b"\x00" * 32
    genesis_time: int = 0
    block_gas_limit: int = DEFAULT_GAS_LIMIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", dict(self.task))  # a private copy of the caller's table
        object.__setattr__(self, "privacy", dict(self.privacy))
        privacy_params(self.privacy)
        if self.rounds.under_min == "skip" and not any(self.genesis_model_hash):
            # a skipped round finalizes on its base model, which for round 0 is this hash
            raise GenesisError("rounds.under_min", 'under_min = "skip" needs a non-zero genesis_model_hash')

    @property
    def total_stake(self) -> int:
        return sum(v.stake for v in self.validators)


def _table(raw: Mapping[str, Any], name: str, required: bool = False) -> Mapping[str, Any]:
    value = raw.get(name)
    if value is None:
        if required:
            raise GenesisError(name, "missing table")
        return {}
    if not isinstance(value, dict):
        raise GenesisError(name, f"expected a table, got {type(value).__name__}")
    return value


def _reject_unknown(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise GenesisError(f"{prefix}{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")


def _parse_validator(raw: Any, i: int) -> ValidatorSpec:
    name = f"validators[{i}]"
    if not isinstance(raw, dict):
        raise GenesisError(name, "expected a table")
    _reject_unknown(raw, {"address", "stake", "peer_id"}, f"{name}.")
    peer_id = raw.get("peer_id")
    if peer_id is not None and (not isinstance(peer_id, str) or not peer_id):
        raise GenesisError(f"{name}.peer_id", f"expected a non-empty string, got {peer_id!r}")
    stake = parse_amount(raw.get("stake"), f"{name}.stake")
    if stake == 0:
        raise GenesisError(f"{name}.stake", "a validator needs a positive stake")
    return ValidatorSpec(parse_address(raw.get("address"), f"{name}.address"), stake, peer_id)


def _parse_account(raw: Any, i: int) -> AccountSpec:
    name = f"accounts[{i}]"
    if not isinstance(raw, dict):
        raise GenesisError(name, "expected a table")
    _reject_unknown(raw, {"address", "balance"}, f"{name}.")
    return AccountSpec(parse_address(raw.get("address"), f"{name}.address"),
                       parse_amount(raw.get("balance"), f"{name}.balance"))


def _parse_list(raw: Mapping[str, Any], name: str, parse_one: Any) -> tuple[Any, ...]:
    items = raw.get(name, [])
    if not isinstance(items, list):
        raise GenesisError(name, "expected an array of tables")
    return tuple(parse_one(item, i) for i, item in enumerate(items))


def _parse_consensus(raw: Mapping[str, Any]) -> ConsensusParams:
    table = _table(raw, "consensus")
    defaults = ConsensusParams()
    known = set(defaults.__dataclass_fields__)
    _reject_unknown(table, known, "consensus.")
    values = {k: parse_int(table.get(k, getattr(defaults, k)), f"consensus.{k}",
                           minimum=0 if k == "empty_block_interval_ms" else 1) for k in known}
    if 0 < values["empty_block_interval_ms"] < values["block_interval_ms"]:
        raise GenesisError("consensus.empty_block_interval_ms",
                           f"must be 0 or at least block_interval_ms ({values['block_interval_ms']}), "
                           f"got {values['empty_block_interval_ms']}")
    return ConsensusParams(**values)


_ROUNDS_AMOUNTS = ("participant_bond", "reward_per_round")


def _parse_rounds(raw: Mapping[str, Any]) -> RoundsParams:
    table = _table(raw, "rounds")
    if "commit_window" in table:
        raise GenesisError("rounds.commit_window",
                           "replaced by commit_window_s (seconds of block time, not blocks); "
                           f"the default is commit_window_s = {RoundsParams().commit_window_s}")
    defaults = RoundsParams()
    known = set(defaults.__dataclass_fields__)
    _reject_unknown(table, known, "rounds.")
    values = {k: table.get(k, getattr(defaults, k)) for k in known}
    for name in _ROUNDS_AMOUNTS:
        values[name] = parse_amount(values[name], f"rounds.{name}")
    return RoundsParams(**values)  # checks every range and choice


def _check_unique(items: tuple[Any, ...], name: str) -> None:
    seen: set[bytes] = set()
    for i, item in enumerate(items):
        if item.address in seen:
            raise GenesisError(f"{name}[{i}].address", f"duplicate address 0x{item.address.hex()}")
        seen.add(item.address)


_TOP_LEVEL = {"chain_id", "genesis_time", "block_gas_limit", "genesis_model_hash", "consensus", "rounds",
              "task", "privacy", "validators", "accounts"}
MAX_EPSILON = 1_000  # privacy.epsilon, the largest budget a genesis may set
MAX_REVEAL_S = 3_600


@dataclass(frozen=True)
class PrivacyParams:
    """What SwarmRounds needs from the [privacy] table (the rest is the learning layer's)."""

    epsilon_budget_micro: int = 0  # 0: no differential-privacy ledger
    delta_e18: int = 0
    secure_aggregation: bool = False
    reveal_window_s: int = 0


def privacy_params(table: Mapping[str, Any]) -> PrivacyParams:
    """The contract's privacy values from a [privacy] table; GenesisError names a bad field."""
    dp = table.get("dp", "off")
    if not isinstance(dp, str):
        raise GenesisError("privacy.dp", f"expected a string, got {dp!r}")
    budget = delta_e18 = 0
    if dp != "off":
        eps, delta = table.get("epsilon"), table.get("delta", 1e-5)
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps <= MAX_EPSILON:
            raise GenesisError("privacy.epsilon", f"expected a number in (0, {MAX_EPSILON}] with dp on, got {eps!r}")
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
            raise GenesisError("privacy.delta", f"expected a number in (0, 1), got {delta!r}")
        budget = round(eps * 1_000_000)
        delta_e18 = max(1, round(delta * 10**18))
    secagg = table.get("secure_aggregation", False)
    if not isinstance(secagg, bool):
        raise GenesisError("privacy.secure_aggregation", f"expected true or false, got {secagg!r}")
    reveal = table.get("secagg_reveal_s", 10)
    if isinstance(reveal, bool) or not isinstance(reveal, int) or not 1 <= reveal <= MAX_REVEAL_S:
        raise GenesisError("privacy.secagg_reveal_s", f"expected an integer in [1, {MAX_REVEAL_S}], got {reveal!r}")
    return PrivacyParams(budget, delta_e18, secagg, reveal if secagg else 0)


def genesis_from_dict(raw: Mapping[str, Any]) -> Genesis:
    """Validate a parsed TOML document; raises GenesisError naming the first bad field."""
    _reject_unknown(raw, _TOP_LEVEL, "")
    if "chain_id" not in raw:
        raise GenesisError("chain_id", "missing")
    validators = _parse_list(raw, "validators", _parse_validator)
    if not validators:
        raise GenesisError("validators", "at least one validator is required")
    _check_unique(validators, "validators")
    accounts = _parse_list(raw, "accounts", _parse_account)
    _check_unique(accounts, "accounts")
    return Genesis(
        chain_id=parse_int(raw["chain_id"], "chain_id", minimum=1, maximum=2**53),
        validators=validators,
        accounts=accounts,
        consensus=_parse_consensus(raw),
        rounds=_parse_rounds(raw),
        task=dict(_table(raw, "task")),
        privacy=dict(_table(raw, "privacy")),
        genesis_model_hash=parse_hash32(raw.get("genesis_model_hash", "0x" + "00" * 32), "genesis_model_hash"),
        genesis_time=parse_int(raw.get("genesis_time", 0), "genesis_time"),
        block_gas_limit=parse_int(raw.get("block_gas_limit", DEFAULT_GAS_LIMIT), "block_gas_limit",
                                  minimum=5000, maximum=2**40),
    )


def loads_genesis(text: str) -> Genesis:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise GenesisError("<file>", f"not valid TOML: {exc}") from exc
    return genesis_from_dict(raw)


def load_genesis(path: Path | str) -> Genesis:
    """Read and validate a genesis file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenesisError("<file>", f"cannot read {path}: {exc}") from exc
    return loads_genesis(text)


def genesis_to_dict(g: Genesis) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "chain_id": g.chain_id,
        "genesis_time": g.genesis_time,
        "block_gas_limit": g.block_gas_limit,
        "genesis_model_hash": "0x" + g.genesis_model_hash.hex(),
        "consensus": {k: getattr(g.consensus, k) for k in g.consensus.__dataclass_fields__},
        "rounds": _rounds_to_dict(g.rounds),
        "task": dict(g.task),
        **({"privacy": dict(g.privacy)} if g.privacy else {}),
        "validators": [_validator_to_dict(v) for v in g.validators],
        "accounts": [{"address": _checksum(a.address), "balance": format_amount(a.balance)}
                     for a in g.accounts],
    }
    return doc


def _rounds_to_dict(r: RoundsParams) -> dict[str, Any]:
    return {k: format_amount(getattr(r, k)) if k in _ROUNDS_AMOUNTS else getattr(r, k)
            for k in r.__dataclass_fields__}


def _validator_to_dict(v: ValidatorSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"address": _checksum(v.address), "stake": format_amount(v.stake)}
    if v.peer_id is not None:
        out["peer_id"] = v.peer_id
    return out


def _checksum(address: bytes) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def dump_genesis(g: Genesis) -> str:
    """The TOML text of a genesis; `loads_genesis(dump_genesis(g)) == g`."""
    doc = genesis_to_dict(g)
    arrays = {name: doc.pop(name) for name in ("validators", "accounts")}
    parts = [tomli_w.dumps(doc)]
    for name, items in arrays.items():  # written as [[name]] tables: easier to read than inline ones
        parts.extend(f"\n[[{name}]]\n" + tomli_w.dumps(item) for item in items)
    return "".join(parts)
