"""`swarmnode init`: create (or import) the node key and write the node's config TOML."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from swarmnode.cli.errors import CliError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("init", help="create a node: key (mode 0600) and config TOML",
                              description="Create a node's data dir: a new key (or an imported one), a copy of "
                                          "the genesis file, and config.toml for `swarmnode run --config`.")
    p.add_argument("--genesis", type=Path, required=True, metavar="FILE", help="the swarm's genesis TOML")
    p.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help="the node's data directory")
    p.add_argument("--key", type=Path, metavar="FILE", help="import this key file (hex secret) instead of creating one")
    p.add_argument("--listen", action="append", metavar="MADDR",
                   help="libp2p listen multiaddr (repeatable; default /ip4/127.0.0.1/tcp/0)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MADDR", help="bootstrap peer (repeatable)")
    p.add_argument("--rpc-port", type=int, default=8545, help="JSON-RPC port on 127.0.0.1 (0: any free port)")
    p.add_argument("--rpc-host", default="127.0.0.1", help="JSON-RPC bind address (default 127.0.0.1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    p.add_argument("--dataset-dir", type=Path, metavar="DIR", help="look for the task's dataset here first")
    p.add_argument("--local-data", type=Path, metavar="PATH",
                   help="this node's own data, for a task on local data (a .csv/.parquet file or an image folder)")
    p.add_argument("--holdout-fraction", type=float, default=0.2, metavar="F",
                   help="fraction of the local data held out for the node's own evaluation (0 to 0.9; default 0.2)")
    p.add_argument("--keep-update-rounds", type=int, default=16, metavar="N",
                   help="delete update blobs of rounds N behind the last final one (0: keep all; default 16)")
    p.add_argument("--keep-model-rounds", type=int, default=64, metavar="N",
                   help="delete final models more than N rounds old (0: keep all; default 64; the newest, "
                        "which late joiners fetch, is always kept)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config (never a key)")
    p.set_defaults(func=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    from consensus.errors import ConsensusError
    from consensus.genesis import load_genesis
    from swarmnode.node.config import NodeConfig, dump_config
    from swarmnode.node.keys import KeyFileError, address_of, create_key, load_key, parse_secret, write_key

    data_dir: Path = args.data_dir.resolve()
    try:
        genesis = load_genesis(args.genesis)
    except (ConsensusError, OSError) as exc:
        raise CliError(f"genesis {args.genesis}: {exc}") from None
    config_path = data_dir / "config.toml"
    if config_path.exists() and not args.force:
        raise CliError(f"{config_path} exists (use --force to rewrite the config; the key is kept)")
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / "node.key"
    try:
        if key_path.exists():
            secret = load_key(key_path)
            if args.key is not None and parse_secret(args.key.read_text(), str(args.key)) != secret:
                raise CliError(f"{key_path} already holds a different key; refusing to replace it")
            how = "kept"
        elif args.key is not None:
            try:
                text = args.key.read_text()
            except OSError as exc:
                raise CliError(f"cannot read key {args.key}: {exc}") from None
            secret = parse_secret(text, str(args.key))
            write_key(key_path, secret)
            how = "imported"
        else:
            secret = create_key(key_path)
            how = "created"
    except KeyFileError as exc:
        raise CliError(str(exc)) from None
    for flag in ("keep_update_rounds", "keep_model_rounds"):
        if getattr(args, flag) < 0:
            raise CliError(f"--{flag.replace('_', '-')} must be 0 (keep all) or more, got {getattr(args, flag)}")
    if not 0 <= args.holdout_fraction <= 0.9:
        raise CliError(f"--holdout-fraction must be in [0, 0.9], got {args.holdout_fraction}")
    genesis_copy = data_dir / "genesis.toml"
    if genesis_copy.resolve() != args.genesis.resolve():
        shutil.copyfile(args.genesis, genesis_copy)
    cfg = NodeConfig(data_dir=data_dir, genesis=genesis_copy, key_file=key_path,
                     listen=tuple(args.listen or ["/ip4/127.0.0.1/tcp/0"]), bootstrap=tuple(args.bootstrap),
                     rpc_host=args.rpc_host, rpc_port=args.rpc_port, torch_threads=max(1, args.threads),
                     dataset_dir=args.dataset_dir.resolve() if args.dataset_dir else None,
                     local_data=args.local_data.resolve() if args.local_data else None,
                     holdout_fraction=args.holdout_fraction,
                     keep_update_rounds=args.keep_update_rounds, keep_model_rounds=args.keep_model_rounds)
    config_path.write_text(dump_config(cfg))
    address = address_of(secret)
    role = "validator" if any(v.address == address for v in genesis.validators) else "follower"
    print(f"key      {key_path} ({how}, mode 0600)")
    print(f"address  0x{address.hex()} ({role} in chain {genesis.chain_id})")
    print(f"config   {config_path}")
    if cfg.local_data is not None:
        print(f"data     {cfg.local_data} (check it: swarmnode data check --config {config_path})")
    print(f"run it:  swarmnode run --config {config_path}")
    return 0
