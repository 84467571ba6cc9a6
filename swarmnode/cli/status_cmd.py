"""`swarmnode status`: what a running node is doing (chain head, round, peers, its models)."""

from __future__ import annotations

import argparse
from typing import Any

from swarmnode.cli.rpc_client import add_rpc_arguments, client, print_json


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("status", help="show a running node's status", description=__doc__)
    add_rpc_arguments(p)
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    rpc = client(args)
    chain = rpc.call("swarm_status")
    node = rpc.call("swarm_node")
    if args.json:
        print_json({"chain": chain, "node": node})
        return 0
    print(f"chain     id {chain['chainId']}  height {chain['height']}  head {chain['headHash']}")
    print(f"node      {node['address']}  peer {node['peerId']}")
    print(f"role      {'validator' if node['validator'] else 'follower'}  participant index "
          f"{node['participantIndex'] if node['participantIndex'] is not None else '-'}")
    print(f"peers     {node['peers']}")
    print(f"round     {node['round']}  window {'open' if node['windowOpen'] else 'closed'}  "
          f"base model {node['baseModel']} ({'held' if node['haveBase'] else 'fetching'})")
    print(f"pool      {chain['pool']}")
    for h in node["history"][-5:]:
        acc = f"{h['valAccuracy'] * 100:.1f}%" if h["valAccuracy"] is not None else "-"
        print(f"  round {h['round']}: local {h['localHash'] or '-'}  final {h['finalHash'] or '-'}  val acc {acc}")
    return 0
