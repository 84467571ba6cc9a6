"""The data behind `swarmnode report`: chain records in, per-round series out (pure, no I/O).

The inputs are what the node's JSON-RPC answers (swarm_roundHistory rounds, block timestamps, reward logs,
validator sets); `report_cmd` fetches them and `report_render` draws what `build_report` returns. Amounts
stay in wei, as decimal strings in the output (JSON numbers above 2**53 lose digits in most readers).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eth_utils import keccak, to_checksum_address

from swarmnode.cli.chain_cmd import round_summary
from swarmnode.cli.errors import CliError

# the SwarmRounds events that pay a round's rewards (emitted in the block that finalizes it)
REWARD_EVENTS = {
    "0x" + keccak(b"ContributorRewarded(uint256,address,uint256)").hex(): "contributors",
    "0x" + keccak(b"ValidatorRewarded(uint256,address,uint256)").hex(): "validators",
}
MAX_LOG_BLOCKS = 10_000  # blocks per eth_getLogs query (consensus.chain_reads.MAX_LOG_RANGE)
MAX_QUERY_LOGS = 5_000  # logs expected per query: half the server's cap (MAX_LOGS), so one is never refused


@dataclass(frozen=True)
class RoundRange:
    """`--rounds A:B`: rounds A through B inclusive; a missing end is open (the first or latest final round)."""

    first: int | None = None
    last: int | None = None

    def clip(self, latest_final: int | None) -> tuple[int, int]:
        """(first, last) cut at the latest finalized round; CliError if no finalized round is left."""
        want = f"rounds {_bound(self.first)}:{_bound(self.last)}"
        if latest_final is None:
            raise CliError("no finalized round on this chain yet: the first round is still open")
        first, last = self.first or 0, latest_final if self.last is None else min(self.last, latest_final)
        if first > last:
            raise CliError(f"no finalized round in {want}: the latest finalized round is {latest_final}")
        return first, last


def _bound(value: int | None) -> str:
    return "" if value is None else str(value)


def parse_round_range(text: str) -> RoundRange:
    """argparse type for --rounds: 'A:B', 'A:', ':B', ':' or a single round 'A' (rounds are >= 0)."""
    parts = text.split(":")
    if len(parts) > 2 or not text.strip():
        raise argparse.ArgumentTypeError(f"expected A:B, A:, :B or A, got {text!r}")
    try:
        ends = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"round numbers must be integers, got {text!r}") from None
    if any(e is not None and e < 0 for e in ends):
        raise argparse.ArgumentTypeError(f"round numbers are >= 0, got {text!r}")
    first, last = (ends[0], ends[0]) if len(ends) == 1 else (ends[0], ends[1])
    if first is not None and last is not None and first > last:
        raise argparse.ArgumentTypeError(f"empty range {text!r}: {first} is after {last}")
    return RoundRange(first, last)


# ---------------------------------------------------------------- what to fetch


def block_heights(rounds: Iterable[dict[str, Any]]) -> list[int]:
    """The blocks whose timestamps time the rounds: each round's open, close and final block (a round
    opens in the block that finalizes the one before, so most are shared)."""
    heights = {int(r[k]) for r in rounds for k in ("openBlock", "closeBlock", "finalBlock")}
    return sorted(heights)


def log_windows(rounds: list[dict[str, Any]], max_blocks: int = MAX_LOG_BLOCKS,
                max_logs: int = MAX_QUERY_LOGS) -> list[tuple[int, int]]:
    """Block ranges for eth_getLogs that cover the reward logs of finalized `rounds` (in round order):
    consecutive rounds grouped while the range spans at most `max_blocks` blocks and their logs (at most
    one per commit and one per attestation) number at most `max_logs`, so no query is refused."""
    windows: list[tuple[int, int]] = []
    start = end = logs = 0
    for r in rounds:
        block, count = int(r["finalBlock"]), int(r["commitCount"]) + int(r["attestationCount"])
        if windows and block - start < max_blocks and logs + count <= max_logs:
            end, logs = block, logs + count
            windows[-1] = (start, end)
        else:
            start, end, logs = block, block, count
            windows.append((start, end))
    return windows


# ---------------------------------------------------------------- shaping


@dataclass
class RoundRewards:
    """What one round paid, by kind and by account (wei)."""

    contributors: int = 0
    validators: int = 0
    by_account: dict[str, int] = field(default_factory=dict)


def rewards_by_round(logs: Iterable[dict[str, Any]]) -> dict[int, RoundRewards]:
    """ContributorRewarded / ValidatorRewarded logs (eth_getLogs form) summed per round and account;
    other logs are ignored."""
    out: dict[int, RoundRewards] = {}
    for log in logs:
        kind = REWARD_EVENTS.get(str(log["topics"][0]).lower()) if log.get("topics") else None
        if kind is None or len(log["topics"]) < 3:
            continue
        r, amount = int(log["topics"][1], 16), int(log["data"], 16)
        account = to_checksum_address("0x" + str(log["topics"][2])[-40:])
        paid = out.setdefault(r, RoundRewards())
        setattr(paid, kind, getattr(paid, kind) + amount)
        paid.by_account[account] = paid.by_account.get(account, 0) + amount
    return out


def held_out_loss(commits: list[dict[str, Any]]) -> float | None:
    """The base model's loss over the committers' held-out splits, weighted by examples scored (None if
    nobody scored it): the loss beside chain_cmd.held_out_mean's accuracy."""
    scored = [(int(c.get("heldOutLoss", 0)), int(c.get("heldOutCount", 0))) for c in commits]
    examples = sum(n for _, n in scored if n > 0)
    return sum(loss * n for loss, n in scored if n > 0) / examples / 1e6 if examples else None


def _since(start: int | None, timestamps: dict[int, int], block: int) -> int | None:
    return timestamps[block] - start if start is not None and block in timestamps else None


def _diff(later: int | None, earlier: int | None) -> int | None:
    return later - earlier if later is not None and earlier is not None else None


def round_record(r: dict[str, Any], timestamps: dict[int, int], validators: list[dict[str, Any]],
                 rewards: RoundRewards | None) -> dict[str, Any]:
    """One finalized round as the report shows it: `chain rounds --json`'s fields and values, plus the
    held-out loss, participation, timing, the rewards it paid and the stake of the validators that
    finalized it.

    Timing, from block timestamps: roundSeconds runs from the round's opening (the block that finalized
    the round before) to its final block, in three parts: idleSeconds, while no commit came and the
    deadline passed (the contract then restarts the commit clock at the first commit: its openTime),
    commitSeconds from the clock's start to the window's close, finalizeSeconds from there to the final
    block. A round opened in the genesis block starts at its clock instead: the genesis timestamp says
    when the genesis file was made, not when the swarm started."""
    paid = rewards or RoundRewards()
    opened, closed, final = int(r["openBlock"]), int(r["closeBlock"]), int(r["finalBlock"])
    clock = int(r["openTime"]) if "openTime" in r else timestamps.get(opened)
    start = clock if opened == 0 else timestamps.get(opened)
    stake = {v["address"]: int(v["stake"]) for v in validators}
    return {
        **round_summary(r),
        "heldOutLoss": held_out_loss(r["commits"]),
        "expected": int(r["expectedCount"]), "absent": int(r["absentCount"]),
        "skipped": bool(r["skipped"]), "closedEarly": bool(r["closedEarly"]), "totalSamples": int(r["totalSamples"]),
        "openTimestamp": timestamps.get(opened), "clockStart": clock, "closeTimestamp": timestamps.get(closed),
        "finalTimestamp": timestamps.get(final), "roundSeconds": _since(start, timestamps, final),
        "idleSeconds": _diff(clock, start), "commitSeconds": _since(clock, timestamps, closed),
        "finalizeSeconds": _since(timestamps.get(closed), timestamps, final),
        "contributorRewards": str(paid.contributors), "validatorRewards": str(paid.validators),
        "rewardsByAccount": {a: str(w) for a, w in sorted(paid.by_account.items())},
        "stake": {a: str(w) for a, w in sorted(stake.items())}, "totalStake": str(sum(stake.values())),
    }


def account_rows(records: list[dict[str, Any]], validators: list[dict[str, Any]],
                 participants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every validator, participant and paid account: its stake and bond now, and what the rounds of
    the report paid it (wei)."""
    stake_now = {v["address"]: int(v["stake"]) for v in validators}
    members = {p["address"]: p for p in participants}
    earned: dict[str, list[int]] = {}
    for rec in records:
        for account, wei in rec["rewardsByAccount"].items():
            earned.setdefault(account, []).append(int(wei))
    rows = []
    for account in sorted({*stake_now, *members, *earned}, key=str.lower):
        p = members.get(account)
        rows.append({"address": account, "validatorStake": str(stake_now.get(account, 0)),
                     "participant": None if p is None else ("active" if p["active"] else "left"),
                     "participantBond": str(int(p["bond"])) if p is not None else "0",
                     "rewards": str(sum(earned.get(account, []))), "roundsPaid": len(earned.get(account, []))})
    return rows


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's headline figures over its rounds."""
    held = [(r["round"], r["baseHeldOutAccuracy"]) for r in records if r["baseHeldOutAccuracy"] is not None]
    seconds = [r["roundSeconds"] for r in records if r["roundSeconds"] is not None]
    registered = sum(r["registered"] for r in records)
    return {
        "rounds": len(records), "skipped": sum(r["skipped"] for r in records),
        "closedEarly": sum(r["closedEarly"] for r in records),
        "commits": sum(r["participants"] for r in records),
        "participationRate": sum(r["participants"] for r in records) / registered if registered else None,
        "meanRoundSeconds": _mean(seconds), "maxRoundSeconds": max(seconds) if seconds else None,
        "lastHeldOutAccuracy": held[-1][1] if held else None, "lastHeldOutRound": held[-1][0] if held else None,
        "bestHeldOutAccuracy": max(a for _, a in held) if held else None,
        "contributorRewards": str(sum(int(r["contributorRewards"]) for r in records)),
        "validatorRewards": str(sum(int(r["validatorRewards"]) for r in records)),
    }


def build_report(chain: dict[str, Any], rounds: list[dict[str, Any]], timestamps: dict[int, int],
                 validator_sets: dict[int, list[dict[str, Any]]], logs: list[dict[str, Any]],
                 validators_now: list[dict[str, Any]], participants: list[dict[str, Any]],
                 config: dict[str, Any] | None) -> dict[str, Any]:
    """The whole report (what --json prints): `rounds` are finalized swarm_roundHistory entries in order,
    `validator_sets` the set in force at each round's final block, `logs` the reward logs of their
    final blocks."""
    paid = rewards_by_round(logs)
    records = [round_record(r, timestamps, validator_sets.get(int(r["finalBlock"]), []), paid.get(int(r["round"])))
               for r in rounds]
    return {
        "chainId": chain.get("chainId"), "height": chain.get("height"), "headTimestamp": chain.get("headTimestamp"),
        "firstRound": records[0]["round"] if records else None, "lastRound": records[-1]["round"] if records else None,
        "config": config or {}, "summary": summarize(records), "rounds": records,
        "accounts": account_rows(records, validators_now, participants),
    }
