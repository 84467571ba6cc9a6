"""`swarmnode report`: pictures of the training history, built from a running node's chain.

Per finalized round: accuracy and loss (the held-out score of the round's base model, weighted by examples,
and the committers' local metrics), participation (committers against registered and expected
participants; skipped rounds), round time (block timestamps of the round's open, close and final blocks),
and stake and rewards (the rewards each round paid, and the stake of the validators that finalized it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from swarmnode.cli.errors import CliError
from swarmnode.cli.report_data import (
    REWARD_EVENTS,
    RoundRange,
    block_heights,
    build_report,
    log_windows,
    parse_round_range,
)
from swarmnode.cli.rpc_client import RpcClient, add_rpc_arguments, print_json, rpc_url

# rounds per swarm_roundHistory call (the server's cap is 100): the node reads each round with 1 + commits
# view calls; 50 rounds of 3 commits took it 10-17 s on 2 cores shared with 15 other daemons
ROUND_PAGE = 25
RPC_TIMEOUT = 120.0
FORMATS = (".png", ".html", ".json")

EPILOG = """examples:
  swarmnode report --out report.png                 every finalized round, as a figure
  swarmnode report --out report.html --rounds 100:  the figure and tables in one file, from round 100 on
  swarmnode report --json --rounds 0:9 > data.json  the data series of rounds 0 to 9"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("report", help="draw the training history from chain data (PNG, HTML or JSON)",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rpc_arguments(p, json_help="print the data series as JSON on stdout (with or without --out)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the report here; the suffix chooses: .png (figure), .html (figure and tables in "
                        "one self-contained file) or .json (the data series)")
    p.add_argument("--rounds", type=parse_round_range, default=RoundRange(), metavar="A:B",
                   help="rounds A to B inclusive (default: every finalized round); A: or :B leave one end open, "
                        "A alone is one round")
    p.set_defaults(func=cmd_report)


def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CliError(f"--out {path}: unknown format {suffix or '(no suffix)'}; use {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise CliError(f"--out {path}: directory {path.parent} does not exist")
    return suffix


def cmd_report(args: argparse.Namespace) -> int:
    if args.out is None and not args.json:
        raise CliError("nothing to do: give --out FILE (.png, .html or .json) or --json")
    kind = output_format(args.out) if args.out is not None else None
    report = fetch_report(RpcClient(rpc_url(args), timeout=RPC_TIMEOUT), args.rounds)
    if args.json:
        print_json(report)
    if args.out is not None and kind is not None:
        write_report(report, args.out, kind)
        print(f"wrote {args.out}: {headline(report)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def headline(report: dict[str, Any]) -> str:
    """One line about what the report holds."""
    s = report["summary"]
    parts = [f"rounds {report['firstRound']}-{report['lastRound']} of chain {report['chainId']}"]
    if s["skipped"]:
        parts.append(f"{s['skipped']} skipped")
    if s["lastHeldOutAccuracy"] is not None:
        parts.append(f"held-out accuracy {s['lastHeldOutAccuracy'] * 100:.1f}% at round {s['lastHeldOutRound']}")
    if s["meanRoundSeconds"] is not None:
        parts.append(f"mean round {s['meanRoundSeconds']:.1f} s")
    return ", ".join(parts)


def write_report(report: dict[str, Any], path: Path, kind: str) -> None:
    from swarmnode.cli import report_render

    try:
        if kind == ".png":
            report_render.write_png(report, path)
        elif kind == ".html":
            report_render.write_html(report, path)
        else:
            path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- reading the chain


def fetch_report(rpc: RpcClient, wanted: RoundRange, page: int = ROUND_PAGE) -> dict[str, Any]:
    """Everything the report shows, in a number of requests that grows by one per `page` rounds and per
    100 blocks or validator sets (JSON-RPC batches), not by one per round."""
    chain = rpc.call("swarm_status")
    latest = rpc.call("swarm_roundHistory", None, 1)
    if not latest:
        raise CliError(f"the chain at {rpc.url} has no SwarmRounds contract: no learning rounds to report")
    current = int(latest[-1]["round"])  # always open: finalizing round r opens round r + 1
    first, last = wanted.clip(current - 1 if current > 0 else None)
    rounds = fetch_rounds(rpc, first, last, page)
    finals = sorted({int(r["finalBlock"]) for r in rounds})
    heights = block_heights(rounds)
    blocks = rpc.batch("eth_getBlockByNumber", [[hex(h), False] for h in heights])
    sets = rpc.batch("swarm_validators", [[hex(h)] for h in finals])
    return build_report(chain, rounds, {h: int(b["timestamp"], 16) for h, b in zip(heights, blocks, strict=True) if b},
                        dict(zip(finals, sets, strict=True)), fetch_reward_logs(rpc, rounds),
                        rpc.call("swarm_validators"), rpc.call("swarm_participants"), rpc.call("swarm_roundsConfig"))


def fetch_rounds(rpc: RpcClient, first: int, last: int, page: int) -> list[dict[str, Any]]:
    """Finalized rounds first..last with their commits, `page` rounds per request."""
    out: list[dict[str, Any]] = []
    for start in range(first, last + 1, page):
        got = rpc.call("swarm_roundHistory", start, min(page, last - start + 1))
        out += [r for r in got if first <= int(r["round"]) <= last and r["finalized"]]
    if [int(r["round"]) for r in out] != list(range(first, last + 1)):
        raise CliError(f"the node returned rounds {[r['round'] for r in out][:10]}… for {first}-{last}: "
                       "is it syncing?")
    return out


def fetch_reward_logs(rpc: RpcClient, rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reward logs of the rounds' final blocks, in as few eth_getLogs queries as the server's caps allow."""
    from consensus.genesis_block import ROUNDS_ADDRESS

    address = "0x" + ROUNDS_ADDRESS.hex()
    logs: list[dict[str, Any]] = []
    for start, end in log_windows(rounds):
        logs += rpc.call("eth_getLogs", {"fromBlock": hex(start), "toBlock": hex(end), "address": address,
                                         "topics": [list(REWARD_EVENTS)]})
    return logs
