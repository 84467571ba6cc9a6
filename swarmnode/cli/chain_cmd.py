"""`swarmnode chain ...`: read the chain of a running node over JSON-RPC (tables, or --json)."""

from __future__ import annotations

import argparse
from typing import Any

from swarmnode.cli.errors import CliError
from swarmnode.cli.rpc_client import add_rpc_arguments, client, print_json, print_table

ETHER = 10**18


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("chain", help="query the chain (head, blocks, txs, validators, rounds)",
                              description=__doc__)
    sub = p.add_subparsers(title="chain queries", metavar="QUERY")

    def add(name: str, help_: str, fn: Any) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_, description=help_)
        add_rpc_arguments(q)
        q.set_defaults(func=fn)
        return q

    add("head", "the latest committed block", cmd_head)
    add("block", "one block by number", cmd_block).add_argument("number", type=int)
    add("tx", "a transaction and its receipt", cmd_tx).add_argument("hash")
    add("validators", "the validator set in force", cmd_validators)
    add("balance", "an account's balance", cmd_balance).add_argument("address")
    q = add("rounds", "the training history: one line per learning round", cmd_rounds)
    q.add_argument("--count", type=int, default=100, help="rounds to show (latest; default 100)")
    add("round", "one learning round with its commits", cmd_round).add_argument("round", type=int)
    add("participants", "the participant registry: who is active, expected, absent", cmd_participants)
    add("privacy", "every participant's differential-privacy spend against the genesis budget", cmd_privacy)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _block_row(b: dict[str, Any]) -> list[Any]:
    return [int(b["number"], 16), b["hash"], int(b["timestamp"], 16), len(b["transactions"]), int(b["gasUsed"], 16)]


def cmd_head(args: argparse.Namespace) -> int:
    block = client(args).call("eth_getBlockByNumber", "latest", False)
    if args.json:
        print_json(block)
    else:
        print_table(["number", "hash", "timestamp", "txs", "gas used"], [_block_row(block)])
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    block = client(args).call("eth_getBlockByNumber", hex(args.number), False)
    if block is None:
        raise CliError(f"no block {args.number} yet")
    if args.json:
        print_json(block)
    else:
        print_table(["number", "hash", "timestamp", "txs", "gas used"], [_block_row(block)])
        for tx in block["transactions"]:
            print(f"  tx {tx}")
    return 0


def cmd_tx(args: argparse.Namespace) -> int:
    rpc = client(args)
    tx = rpc.call("eth_getTransactionByHash", args.hash)
    if tx is None:
        raise CliError(f"no transaction {args.hash}")
    receipt = rpc.call("eth_getTransactionReceipt", args.hash)
    if args.json:
        print_json({"transaction": tx, "receipt": receipt})
        return 0
    status = "pending" if receipt is None else ("success" if receipt.get("status") == "0x1" else "reverted")
    print_table(["hash", "from", "to", "nonce", "block", "status"],
                [[tx["hash"], tx["from"], tx.get("to"), int(tx["nonce"], 16),
                  int(tx["blockNumber"], 16) if tx.get("blockNumber") else "-", status]])
    return 0


def cmd_validators(args: argparse.Namespace) -> int:
    vals = client(args).call("swarm_validators")
    if args.json:
        print_json(vals)
    else:
        print_table(["address", "stake (ether)"], [[v["address"], int(v["stake"]) / ETHER] for v in vals])
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    wei = int(client(args).call("eth_getBalance", args.address, "latest"), 16)
    if args.json:
        print_json({"address": args.address, "wei": str(wei)})
    else:
        print(f"{args.address}  {wei / ETHER:.6f} ether  ({wei} wei)")
    return 0


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) / 1e6 if values else None


def _held_out(c: dict[str, Any]) -> tuple[int, int]:
    """(heldOutAccuracy, heldOutCount) of a commit; (0, 0) from a contract without held-out scores."""
    return int(c.get("heldOutAccuracy", 0)), int(c.get("heldOutCount", 0))


def held_out_mean(commits: list[dict[str, Any]]) -> tuple[float | None, int, int]:
    """The base model's accuracy over the committers' held-out splits, weighted by examples scored:
    (accuracy or None if nobody scored it, committers that scored it, examples)."""
    scored = [(acc, n) for acc, n in map(_held_out, commits) if n > 0]
    examples = sum(n for _, n in scored)
    mean = sum(acc * n for acc, n in scored) / examples / 1e6 if examples else None
    return mean, len(scored), examples


def round_summary(r: dict[str, Any]) -> dict[str, Any]:
    commits = r["commits"]
    held_out, scorers, examples = held_out_mean(commits)
    return {
        "round": r["round"], "participants": int(r["commitCount"]), "registered": int(r["participantCount"]),
        "meanLoss": _mean([int(c["localLoss"]) for c in commits]),
        "meanAccuracy": _mean([int(c["localAccuracy"]) for c in commits]),
        # the round's base model (the previous round's global model) on the committers' own held-out splits
        "baseHeldOutAccuracy": held_out, "heldOutScorers": scorers, "heldOutExamples": examples,
        "finalized": bool(r["finalized"]), "modelHash": r["finalHash"] if r["finalized"] else None,
        "openBlock": int(r["openBlock"]), "closeBlock": int(r["closeBlock"]),
        "finalBlock": int(r["finalBlock"]) if r["finalized"] else None, "attestations": int(r["attestationCount"]),
    }


def cmd_rounds(args: argparse.Namespace) -> int:
    history = client(args).call("swarm_roundHistory", 0, max(1, min(args.count, 100)))
    rows = [round_summary(r) for r in history]
    if args.json:
        print_json(rows)
        return 0

    def f(x: float | None, pct: bool = False) -> str:
        return "-" if x is None else (f"{x * 100:.1f}%" if pct else f"{x:.4f}")

    print_table(["round", "participants", "mean loss", "mean acc", "base held-out acc", "blocks", "global model hash"],
                [[r["round"], f"{r['participants']}/{r['registered']}", f(r["meanLoss"]), f(r["meanAccuracy"], True),
                  f(r["baseHeldOutAccuracy"], True) + (f" ({r['heldOutScorers']})" if r["heldOutScorers"] else ""),
                  f"{r['openBlock']}-{r['finalBlock'] if r['finalBlock'] is not None else '…'}",
                  r["modelHash"] or "(open)"] for r in rows])
    return 0


def cmd_round(args: argparse.Namespace) -> int:
    r = client(args).call("swarm_getRound", args.round)
    if r is None:
        raise CliError(f"round {args.round} is not open yet")
    if args.json:
        print_json(r)
        return 0
    s = round_summary(r)
    print(f"round {s['round']}: {s['participants']}/{s['registered']} committed, blocks {s['openBlock']}..{s['closeBlock']}, "
          f"{'final ' + s['modelHash'] if s['finalized'] else 'not final'} ({s['attestations']} attestations)")
    if s["baseHeldOutAccuracy"] is not None:
        print(f"base model on held-out splits: {s['baseHeldOutAccuracy'] * 100:.1f}% "
              f"({s['heldOutScorers']} committers, {s['heldOutExamples']} examples)")
    print_table(["participant", "update hash", "samples", "loss", "acc", "held-out acc", "held-out n", "block"],
                [[c["participant"], c["updateHash"], c["numSamples"], f"{int(c['localLoss']) / 1e6:.4f}",
                  f"{int(c['localAccuracy']) / 1e4:.1f}%", *_held_out_cells(c), c["blockNumber"]]
                 for c in r["commits"]])
    return 0


def _held_out_cells(c: dict[str, Any]) -> list[Any]:
    acc, n = _held_out(c)
    return [f"{acc / 1e4:.1f}%", n] if n else ["-", 0]


def cmd_participants(args: argparse.Namespace) -> int:
    rpc = client(args)
    rows = rpc.call("swarm_participants")
    for p in rows:
        p["peerIdMatches"] = _peer_id_matches(p["peerId"], p["address"])
    if args.json:
        print_json({"config": rpc.call("swarm_roundsConfig"), "participants": rows})
        return 0
    print_table(["index", "address", "peer id", "state", "missed rounds", "bond (ether)"],
                [[p["index"], p["address"], p["peerId"] + ("" if p["peerIdMatches"] else "  (not this address's key)"),
                  _state(p), p["missed"], int(p["bond"]) / ETHER] for p in rows])
    return 0


def privacy_rows(config: dict[str, Any], participants: list[dict[str, Any]],
                 table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The privacy ledger as `chain privacy --json` prints it: epsilon values in units (the chain keeps
    micro-epsilon), remaining budget and share of it used per participant; delta from the genesis
    [privacy] `table` (the node's swarm_node answer)."""
    budget = int(config.get("epsilonBudget") or 0)
    rows = []
    for p in participants:
        spent = int(p.get("epsilonSpent") or 0)
        rows.append({"index": p["index"], "address": p["address"], "active": bool(p["active"]),
                     "epsilonSpent": spent / 1e6, "releases": int(p.get("dpReleases") or 0),
                     "epsilonRemaining": (budget - spent) / 1e6 if budget else None,
                     "budgetUsedPct": 100.0 * spent / budget if budget else None,
                     "shareKey": bool(int(str(p.get("shareKey") or "0x0"), 16))})
    delta = (table or {}).get("delta", 1e-5) if budget else None
    return {"epsilonBudget": budget / 1e6 if budget else None, "delta": delta,
            "secureAggregation": bool(config.get("secureAggregation")), "participants": rows}


def cmd_privacy(args: argparse.Namespace) -> int:
    rpc = client(args)
    node = rpc.call("swarm_node") or {}
    ledger = privacy_rows(rpc.call("swarm_roundsConfig") or {}, rpc.call("swarm_participants"), node.get("privacy"))
    if args.json:
        print_json(ledger)
        return 0
    if ledger["epsilonBudget"] is None:
        print("differential privacy: off in this genesis (no budget; commits report epsilon 0)")
    else:
        print(f"budget per participant: epsilon {ledger['epsilonBudget']:g}, delta {ledger['delta']:g}")
    print(f"secure aggregation: {'on' if ledger['secureAggregation'] else 'off'}")
    print_table(["index", "address", "epsilon spent", "commits", "remaining", "budget used"],
                [[r["index"], r["address"] + ("" if r["active"] else " (left)"), f"{r['epsilonSpent']:.6f}",
                  r["releases"], "-" if r["epsilonRemaining"] is None else f"{r['epsilonRemaining']:.6f}",
                  "-" if r["budgetUsedPct"] is None else f"{r['budgetUsedPct']:.1f}%"]
                 for r in ledger["participants"]])
    return 0


def _peer_id_matches(peer_id: str, address: str) -> bool:
    """The contract stores the peer id a participant claims; only one derived from the participant's own
    key is theirs (anyone can claim anyone's peer id: nodes never rely on it, people should not either)."""
    from libp2p.peer.id import ID

    from swarmnode.p2p.errors import IdentityError
    from swarmnode.p2p.identity import address_of_peer

    try:
        return "0x" + address_of_peer(ID.from_base58(peer_id)).hex() == address.lower()
    except (IdentityError, ValueError, TypeError, KeyError):
        return False


def _state(p: dict[str, Any]) -> str:
    if not p["active"]:
        return "left"
    return "active" if p["expected"] else "active, not expected (absent)"
