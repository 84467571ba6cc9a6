"""`swarmnode status`: what a running node is doing: peers, round, sync lag, chain head, its models."""

from __future__ import annotations

import argparse
import time
from typing import Any

from swarmnode.cli.rpc_client import add_rpc_arguments, client, print_json


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show a running node's status (peers, round, sync lag)",
                              description=__doc__)
    add_rpc_arguments(p)
    p.set_defaults(func=cmd_status)


def summary(chain: dict[str, Any], node: dict[str, Any], now: float) -> dict[str, Any]:
    """The few facts a person looks at first, as plain data (the `--json` output's `summary`)."""
    best = node.get("bestKnownHeight")
    height = chain["height"]
    mesh = node.get("p2p", {}).get("pubsub", {}).get("mesh", {})
    close = node.get("closeTime")
    return {
        "peers": node["peers"], "mesh": {t.rsplit("/", 1)[-1]: len(p) for t, p in sorted(mesh.items())},
        "height": height, "bestKnownHeight": best, "syncLag": max(0, best - height) if best is not None else None,
        "round": node["round"], "windowOpen": node["windowOpen"],
        "windowClosesIn": max(0, int(close - now)) if node["windowOpen"] and close is not None else None,
        "role": "validator" if node["validator"] else "follower",
        "participantIndex": node["participantIndex"], "pool": chain["pool"].get("txs", 0),
        "metrics": node.get("metrics"),
    }


def sync_text(s: dict[str, Any]) -> str:
    if s["syncLag"] is None:
        return "unknown (the node does not report its peers' heights)"
    if s["peers"] == 0:
        return f"no peers: cannot tell (our height {s['height']})"
    if s["syncLag"] == 0:
        return f"in step with its peers (height {s['height']})"
    plural = "s" if s["syncLag"] != 1 else ""
    return f"{s['syncLag']} block{plural} behind (height {s['height']}, peers at {s['bestKnownHeight']})"


def round_text(s: dict[str, Any], node: dict[str, Any]) -> str:
    if s["round"] is None:
        return "not known yet (the node is starting)"
    window = "window closed: aggregating and attesting"
    if s["windowOpen"]:
        window = "window open" + (f", closes in ~{s['windowClosesIn']} s" if s["windowClosesIn"] is not None else "")
    base = node.get("baseModel")
    held = "held" if node.get("haveBase") else "fetching"
    return f"{s['round']}  {window}  base model {base[:14] + '..' if base else '-'} ({held})"


def cmd_status(args: argparse.Namespace) -> int:
    rpc = client(args)
    chain = rpc.call("swarm_status")
    node = rpc.call("swarm_node")
    s = summary(chain, node, time.time())
    if args.json:
        print_json({"summary": s, "chain": chain, "node": node})
        return 0
    mesh = ", ".join(f"{t} {n}" for t, n in s["mesh"].items()) or "none yet"
    index = s["participantIndex"] if s["participantIndex"] is not None else "-"
    lines = [
        ("peers", f"{s['peers']} connected  (gossip mesh: {mesh})"),
        ("round", round_text(s, node)),
        ("sync", sync_text(s)),
        ("chain", f"id {chain['chainId']}  height {chain['height']}  head {chain['headHash']}"),
        ("node", f"{node['address']}  {s['role']}  participant index {index}"),
        ("peer id", node["peerId"]),
        ("pool", f"{s['pool']} transaction{'s' if s['pool'] != 1 else ''} waiting"),
        ("metrics", s["metrics"] or "off"),
    ]
    for label, text in lines:
        print(f"{label:<9} {text}")
    history = node["history"][-5:]
    if history:
        print("recent rounds")
    for h in history:
        acc = f"{h['valAccuracy'] * 100:.1f}%" if h["valAccuracy"] is not None else "-"
        agree = "" if not h["localHash"] or not h["finalHash"] else (
            "  agrees" if h["localHash"] == h["finalHash"] else "  DIFFERS from the final hash")
        print(f"  round {h['round']:>4}  val acc {acc:>6}  final {(h['finalHash'] or '-')[:14]}{agree}")
    return 0
