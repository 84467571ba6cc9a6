"""`swarmnode register | leave | admit`: join or leave a swarm after genesis, and admit others.

Admission follows the genesis `[rounds] admission`:
- "stake": `register` sends the participant bond (`[rounds] participant_bond`) with the call; `leave`
  refunds it.
- "allowlist": validators holding more than 2/3 of the stake each run `swarmnode admit ADDRESS` and hand
  the newcomer their approval; the newcomer passes them to `register --approval HEX` (any order).
The transaction is signed here with the node's own key (the config's key_file), dry-run against the
chain first (a refusal is shown with the contract's reason and nothing is sent), then sent through a
node's JSON-RPC and followed until it is included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swarmnode import progress
from swarmnode.cli.errors import CliError
from swarmnode.cli.rpc_client import RpcClient, print_json, rpc_url

ETHER = 10**18


def register(subparsers: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, required=True, metavar="FILE",
                       help="the node's config.toml (its key signs; its genesis names the chain)")
        p.add_argument("--rpc", metavar="URL", help="a node's JSON-RPC URL (default: this node's, when running)")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for inclusion (default 120)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = subparsers.add_parser("register", help="join the swarm as a learning participant (after genesis)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(p)
    p.add_argument("--approval", action="append", default=[], metavar="HEX",
                   help="a validator's approval from `swarmnode admit` (allow-list admission; repeatable)")
    p.set_defaults(func=cmd_register)

    p = subparsers.add_parser("leave", help="stop participating (the bond, if any, is refunded)",
                              description="Leave the swarm's participant set. The node stops being waited for "
                                          "at once; its registry index is kept if it registers again.")
    common(p)
    p.set_defaults(func=cmd_leave)

    p = subparsers.add_parser("admit", help="as a validator, approve an address joining (allow-list admission)",
                              description="Sign an approval for ADDRESS to register (genesis admission "
                                          "\"allowlist\"). Prints the approval to hand to the newcomer.")
    p.add_argument("address", help="the newcomer's 0x address")
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="the validator node's config.toml")
    p.add_argument("--json", action="store_true", help="print the approval as JSON")
    p.set_defaults(func=cmd_admit)


# ---------------------------------------------------------------- helpers


def _node(config: Path) -> tuple[Any, Any, bytes]:
    from consensus.errors import ConsensusError
    from consensus.genesis import load_genesis
    from swarmnode.node.config import NodeConfigError, load_config
    from swarmnode.node.keys import KeyFileError, load_key

    try:
        cfg = load_config(config)
        genesis = load_genesis(cfg.genesis)
        secret = load_key(cfg.key_file)
    except (NodeConfigError, KeyFileError, ConsensusError) as exc:
        raise CliError(str(exc)) from None
    return cfg, genesis, secret


def _client(args: argparse.Namespace, cfg: Any) -> RpcClient:
    # --rpc, else this node's own endpoint while it runs, else $SWARMNODE_RPC or the default
    return RpcClient(args.rpc or rpc_url(argparse.Namespace(rpc=None, config=args.config if cfg.info_file.exists()
                                                            else None)))


def _address(text: str) -> bytes:
    value = text[2:] if text.lower().startswith("0x") else text
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise CliError(f"{text!r} is not a 0x-prefixed 20-byte address")
    return raw


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _revert_reason(message: str) -> str:
    return message.split("reverted: ", 1)[-1] if "reverted" in message else message


def _transact(args: argparse.Namespace, what: str, data: bytes, value: int) -> dict[str, Any]:
    """Dry-run, sign, send and follow one call to SwarmRounds from the node's account."""
    from consensus.contracts import SWARM_ROUNDS_ADDRESS
    from swarmnode.node import txs
    from swarmnode.node.keys import address_of

    cfg, genesis, secret = _node(args.config)
    me = address_of(secret)
    rpc = _client(args, cfg)
    chain_id = int(rpc.call("eth_chainId"), 16)
    if chain_id != genesis.chain_id:
        raise CliError(f"{rpc.url} serves chain {chain_id}, but {args.config}'s genesis is chain {genesis.chain_id}")
    call = {"from": _hex(me), "to": _hex(SWARM_ROUNDS_ADDRESS), "data": _hex(data), "value": hex(value)}

    def build(nonce: int) -> bytes:
        try:  # dry run first (again before a re-send: the call may no longer make sense)
            rpc.call("eth_call", call, "latest")
        except CliError as exc:
            raise CliError(f"{what} would be refused: {_revert_reason(str(exc))}") from None
        block = rpc.call("eth_getBlockByNumber", "latest", False)
        return txs.sign_call(secret, chain_id, nonce, data, int(block.get("baseFeePerGas", "0x0"), 16), value=value)

    with progress.status(f"{what}: waiting for inclusion", progress.wanted(args.json),
                         stream=None if args.json else sys.stderr) as shown:
        tx_hash, receipt = send_followed(rpc, me, build, args.timeout, lambda text: shown.say(f"{what}: {text}"),
                                         what)
    ok = receipt.get("status") == "0x1"
    result = {"action": what, "address": _hex(me), "transaction": tx_hash,
              "block": int(receipt["blockNumber"], 16), "status": "success" if ok else "reverted"}
    if not ok:
        raise CliError(f"{what}: {tx_hash} reverted in block {result['block']}")
    mine = [p for p in rpc.call("swarm_participants") or [] if _address(p["address"]) == me]
    if mine:
        result["participant"] = mine[0]
    return result


MAX_RESENDS = 8


# pool answers meaning "this nonce is no longer ours to use": the count is read again and the tx rebuilt
_NONCE_MOVED = ("nonce-too-low", "nonce-gap", "replacement-underpriced")


def send_followed(rpc: RpcClient, me: bytes, build: Callable[[int], bytes], timeout: float,
                  note: Callable[[str], None], what: str = "transaction") -> tuple[str, dict[str, Any]]:
    """Send `build(nonce)` and follow it until it is included. When another transaction from the same
    account takes its nonce first (the running daemon's own commit, a wallet), it can never be included:
    it is built and sent again with the next free nonce (at most MAX_RESENDS times)."""
    deadline = time.monotonic() + timeout
    for attempt in range(MAX_RESENDS + 1):
        nonce = int(rpc.call("eth_getTransactionCount", _hex(me), "pending"), 16)
        try:
            tx_hash = rpc.call("eth_sendRawTransaction", _hex(build(nonce)))
        except CliError as exc:
            # the node's view of the account moved on between our two calls (a block committed, a
            # daemon's own transaction took the nonce in the pool first), or it is still catching up: ask again
            if not any(m in str(exc) for m in _NONCE_MOVED) or time.monotonic() > deadline:
                raise
            note(f"nonce {nonce} no longer free ({exc}); trying again")
            time.sleep(1.0)
            continue
        note(f"sent {tx_hash} from {_hex(me)} (nonce {nonce}); waiting for inclusion...")
        while (receipt := rpc.call("eth_getTransactionReceipt", tx_hash)) is None:
            if time.monotonic() > deadline:
                raise CliError(f"{what}: {tx_hash} not included after {timeout:.0f} s (still pending; "
                               f"check later with `swarmnode chain tx {tx_hash}`)")
            time.sleep(0.5)
            if int(rpc.call("eth_getTransactionCount", _hex(me), "latest"), 16) > nonce:
                receipt = rpc.call("eth_getTransactionReceipt", tx_hash)  # included meanwhile?
                if receipt is None:
                    break  # another transaction from this account used the nonce
        if receipt is not None:
            return tx_hash, receipt
        if attempt < MAX_RESENDS:
            note(f"nonce {nonce} was taken by another transaction from this account; sending again")
    raise CliError(f"{what}: the nonce was taken by another transaction from {_hex(me)} {MAX_RESENDS + 1} times; "
                   "is something else sending from this account in a loop?")


def _print(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print_json(result)
        return
    print(f"{result['action']}: included in block {result['block']} ({result['transaction']})")
    p = result.get("participant")
    if p is not None:
        state = "active" if p["active"] else "left"
        print(f"participant {result['address']}  index {p['index']}  {state}  peer id {p['peerId']}  "
              f"bond {int(p['bond']) / ETHER:g} ether")


# ---------------------------------------------------------------- commands


def cmd_register(args: argparse.Namespace) -> int:
    from swarmnode.node import txs
    from swarmnode.node.keys import address_of
    from swarmnode.p2p.identity import peer_id_of

    cfg, genesis, secret = _node(args.config)
    me = address_of(secret)
    approvals: list[bytes] = []
    for text in args.approval:
        try:
            approvals.append(bytes.fromhex(text.removeprefix("0x")))
        except ValueError:
            raise CliError(f"--approval {text[:20]}...: not hex") from None
    value = 0
    if genesis.rounds.admission == "stake":
        if approvals:
            raise CliError("this swarm admits by stake (genesis admission = \"stake\"): --approval is not used")
        value = genesis.rounds.participant_bond
    else:
        try:
            approvals = txs.sort_approvals(approvals, genesis.chain_id, me)
        except ValueError as exc:
            raise CliError(f"an approval is malformed: {exc}") from None
        if not approvals:
            raise CliError("this swarm admits by allow-list: get approvals from validators holding more than 2/3 "
                           f"of the stake (`swarmnode admit 0x{me.hex()} --config THEIR_CONFIG`) and pass "
                           "each with --approval")
    data = txs.register_data(str(peer_id_of(secret)), approvals)
    _check_data_slot(args, cfg, genesis, me)
    _print(args, _transact(args, "register", data, value))
    return 0


def _check_data_slot(args: argparse.Namespace, cfg: Any, genesis: Any, me: bytes) -> None:
    """Refuse a registration that could never train: the genesis task splits its data into num_clients
    slices by registry index, and a participant at an index past them has no data."""
    from swarmnode.learning.errors import LearningError
    from swarmnode.learning.tasks import Task

    try:
        slots = Task.from_dict(genesis.task).num_clients
    except (LearningError, TypeError, ValueError) as exc:
        raise CliError(f"the genesis task is unusable: {exc}") from None
    try:
        listed = _client(args, cfg).call("swarm_participants") or []
    except CliError:
        return  # the node is unreachable: _transact says so
    mine = [int(p["index"]) for p in listed if _address(p["address"]) == me]
    index = mine[0] if mine else len(listed)
    if index >= slots:
        raise CliError(f"you would be participant {index}, but this swarm's task splits its data into "
                       f"{slots} slices (genesis [task] num_clients = {slots}): a participant at index "
                       f"{index} has no data to train on. Registry indices are never reused.")


def cmd_leave(args: argparse.Namespace) -> int:
    from swarmnode.node import txs

    _print(args, _transact(args, "leave", txs.leave_data(), 0))
    return 0


def cmd_admit(args: argparse.Namespace) -> int:
    from swarmnode.node import txs
    from swarmnode.node.keys import address_of

    _cfg, genesis, secret = _node(args.config)
    participant = _address(args.address)
    approval = txs.sign_admission(secret, genesis.chain_id, participant)
    if args.json:
        print_json({"validator": _hex(address_of(secret)), "participant": _hex(participant), "chainId": genesis.chain_id,
                    "approval": _hex(approval)})
    else:
        print(_hex(approval))
    return 0
