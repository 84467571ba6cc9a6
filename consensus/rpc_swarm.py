"""Read-only views of the swarm contracts for the swarm_* RPC methods (ABI from the committed artifacts)."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from consensus.chain import ExecutionChain
from consensus.chain_reads import CallFailed
from consensus.genesis_block import ROUNDS_ADDRESS, STAKING_ADDRESS


def _abi_type(param: dict[str, Any]) -> str:
    kind = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + kind[len("tuple"):]
    return kind


def _jsonable(value: Any, param: dict[str, Any]) -> Any:
    """ABI-decoded value -> JSON: structs become objects, bytes hex, big ints decimal strings."""
    kind = param["type"]
    if kind.startswith("tuple"):
        if kind.endswith("]"):
            inner = {**param, "type": kind[: kind.rindex("[")]}
            return [_jsonable(v, inner) for v in value]
        return {c["name"]: _jsonable(v, c) for c, v in zip(param["components"], value, strict=True)}
    if isinstance(value, (list, tuple)):
        inner = {**param, "type": kind[: kind.rindex("[")]}
        return [_jsonable(v, inner) for v in value]
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**53:
        return str(value)
    if kind == "address":
        return to_checksum_address(value)
    return value


class SwarmViews:
    """Calls to the contracts' view functions at the committed head. Chain-worker thread only."""

    def __init__(self, chain: ExecutionChain, cache_size: int = 512) -> None:
        self.chain = chain
        # A view's result is a function of the committed state, so results are kept until the head moves:
        # an eth_call costs ~6 ms in py-evm and a round is 1 + commitCount calls, which a client polling
        # swarm_getRound several times a second would otherwise pay every time, holding the chain lock.
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._cache_head = b""
        self._cache_size = cache_size
        self._deployed: dict[str, bool] | None = None
        self._immutable: dict[tuple[Any, ...], Any] = {}

    @cached_property
    def _abis(self) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            from consensus.contracts import load_artifact
        except ImportError:
            return {}
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name in ("Staking", "SwarmRounds"):
            abi = load_artifact(name)["abi"]
            out[name] = {f["name"]: f for f in abi if f.get("type") == "function"}
        return out

    def deployed(self) -> dict[str, bool]:
        if self._deployed is not None:  # contracts cannot be removed: once both exist, they always will
            return self._deployed
        state = self.chain.state_view()
        out = {"staking": bool(state.get_code(STAKING_ADDRESS)), "swarmRounds": bool(state.get_code(ROUNDS_ADDRESS))}
        if all(out.values()):
            self._deployed = out
        return out

    def call_view(self, contract: str, fn: str, *args: Any) -> Any:
        """Call `contract.fn(*args)` at the head; returns the JSON form of its single output (shared with
        later calls at the same head: callers must not modify it)."""
        head = self.chain.head
        if head.hash != self._cache_head:
            self._cache.clear()
            self._cache_head = head.hash
        key = (contract, fn, *args)
        if key in self._cache:
            return self._cache[key]
        result = self._call_view(head, contract, fn, *args)
        if len(self._cache) < self._cache_size:
            self._cache[key] = result
        return result

    def _call_view(self, head: Any, contract: str, fn: str, *args: Any) -> Any:
        spec = self._abis[contract][fn]
        in_types = [_abi_type(p) for p in spec["inputs"]]
        selector = keccak(f"{fn}({','.join(in_types)})".encode())[:4]
        to = STAKING_ADDRESS if contract == "Staking" else ROUNDS_ADDRESS
        output = self.chain.reader.view(to, selector + abi_encode(in_types, list(args)), head)
        decoded = abi_decode([_abi_type(p) for p in spec["outputs"]], output)
        values = [_jsonable(v, p) for v, p in zip(decoded, spec["outputs"], strict=True)]
        return values[0] if len(values) == 1 else values

    def _ready(self) -> bool:
        return bool(self._abis) and self.deployed()["swarmRounds"]

    def round(self, r: int) -> dict[str, Any] | None:
        """Round r with its commits, or None if the round is not open yet (or no contract)."""
        info = self.round_info(r)
        if info is None:
            return None
        return {"round": r, **info, "commits": self.commits(r, 0, int(info["commitCount"])), **self.secagg_of(r)}

    def secagg_of(self, r: int) -> dict[str, Any]:
        """With secure aggregation: round r's key posters and revealers, in chain order ({} without it)."""
        if not (self.rounds_config() or {}).get("secureAggregation"):
            return {}
        return {"maskKeys": [k["participant"] for k in self.call_view("SwarmRounds", "getMaskKeys", r)],
                "revealers": [x["participant"] for x in self.call_view("SwarmRounds", "getReveals", r)]}

    def round_info(self, r: int) -> dict[str, Any] | None:
        """Round r without its commits (None if not open yet, or no contract): one view call."""
        if not self._ready():
            return None
        try:
            return dict(self.call_view("SwarmRounds", "getRound", r))
        except CallFailed:
            return None

    def commits(self, r: int, start: int, stop: int) -> list[Any]:
        """Commits start..stop-1 of round r (one view call each, the first time)."""
        return [self._commit(r, i) for i in range(start, stop)]

    def _commit(self, r: int, i: int) -> Any:
        """Commits are append-only: once read, one never changes, whatever the head."""
        key = ("commit", r, i)
        if key not in self._immutable:
            if len(self._immutable) >= self._cache_size * 8:
                self._immutable.clear()
            self._immutable[key] = self.call_view("SwarmRounds", "getCommit", r, i)
        return self._immutable[key]

    ROUNDS_CONFIG = ("commitWindowSecs", "stragglerGracePct", "minGraceSecs", "minParticipants", "skipUnderMin",
                     "absentRounds", "admissionMode", "maxSamples", "participantBond", "rewardPerRound", "contributorShareBps",
                     "mismatchPenaltyBps", "epsilonBudget", "secureAggregation")

    def rounds_config(self) -> dict[str, Any] | None:
        """SwarmRounds' parameters (fixed at genesis), or None without the contract."""
        if not self._ready():
            return None
        key = ("rounds_config",)
        if key not in self._immutable:
            self._immutable[key] = {name: self.call_view("SwarmRounds", name) for name in self.ROUNDS_CONFIG}
        return dict(self._immutable[key])

    def participants(self) -> list[dict[str, Any]]:
        """The whole registry in index order (indices never change), each with its membership state."""
        addresses, current = self.participant_list()
        return self.participant_infos(addresses, current)

    def participant_list(self) -> tuple[list[str], int]:
        """(the registry's addresses in index order, the current round); ([], 0) without the contract."""
        if not self._ready():
            return [], 0
        return list(self.call_view("SwarmRounds", "getParticipants")), int(self.call_view("SwarmRounds", "currentRound"))

    def participant_infos(self, addresses: list[str], current: int) -> list[dict[str, Any]]:
        out = []
        for address in addresses:
            info = self.call_view("SwarmRounds", "getParticipant", address)
            expected = bool(info["active"]) and int(info["expectedRound"]) == current + 1
            privacy = {"epsilonSpent": self.call_view("SwarmRounds", "epsilonSpent", address),
                       "dpReleases": self.call_view("SwarmRounds", "dpReleases", address),
                       "shareKey": self.call_view("SwarmRounds", "shareKeyOf", address)}
            out.append({"address": address, **info, "expected": expected, **privacy})
        return out

    def history(self, start: int | None, count: int) -> list[dict[str, Any]]:
        """Up to `count` rounds from `start` (default: the latest `count` rounds), oldest first."""
        rounds = (self.round(r) for r in self.history_rounds(start, count))
        return [r for r in rounds if r is not None]

    def history_rounds(self, start: int | None, count: int) -> list[int]:
        """The round numbers `history` covers."""
        if not self._ready():
            return []
        current = int(self.call_view("SwarmRounds", "currentRound"))
        first = max(0, current - count + 1) if start is None else start
        return list(range(first, min(current, first + count - 1) + 1))
