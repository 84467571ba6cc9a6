"""`swarmnode model export`: write a round's final global model (verified by its on-chain hash) as safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swarmnode.cli.errors import CliError
from swarmnode.cli.rpc_client import add_rpc_arguments, client


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("model", help="export global models", description=__doc__)
    sub = p.add_subparsers(title="model commands", metavar="ACTION")
    e = sub.add_parser("export", help="export round R's final global model", description=__doc__)
    e.add_argument("--round", type=int, required=True, metavar="R", help="learning round (its final model)")
    e.add_argument("--out", type=Path, required=True, metavar="FILE", help="output .safetensors file")
    e.add_argument("--data-dir", type=Path, metavar="DIR", help="the node's data dir (default: from --config)")
    add_rpc_arguments(e)
    e.set_defaults(func=cmd_export)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def cmd_export(args: argparse.Namespace) -> int:
    from swarmnode.node.store import ModelStore, StoreError, model_to_safetensors

    r = client(args).call("swarm_getRound", args.round)
    if r is None or not r["finalized"]:
        raise CliError(f"round {args.round} has no final model yet")
    h = bytes.fromhex(r["finalHash"][2:])
    data_dir = args.data_dir
    if data_dir is None:
        if args.config is None:
            raise CliError("give --data-dir or --config to find the node's model store")
        from swarmnode.node.config import NodeConfigError, load_config

        try:
            data_dir = load_config(args.config).data_dir
        except NodeConfigError as exc:
            raise CliError(str(exc)) from None
    try:
        model = ModelStore(Path(data_dir) / "store").get_model(h)  # verified against the on-chain hash
    except StoreError as exc:
        raise CliError(f"model 0x{h.hex()} of round {args.round}: {exc}") from None
    args.out.write_bytes(model_to_safetensors(model))
    print(f"round {args.round} model 0x{h.hex()} -> {args.out}")
    return 0
