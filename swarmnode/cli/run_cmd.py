"""`swarmnode run`: the daemon, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from swarmnode.cli.errors import CliError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run the node daemon (SIGINT/SIGTERM stop it cleanly)",
                              description="Run the node: chain, BFT consensus (validators), libp2p, the round "
                                          "protocol and JSON-RPC on 127.0.0.1.")
    p.add_argument("--config", type=Path, required=True, metavar="FILE", help="config.toml from `swarmnode init`")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MADDR",
                   help="bootstrap peer multiaddr with /p2p/<id> (repeatable; added to the config's)")
    p.add_argument("--name", help="label for log lines (default: address prefix)")
    p.add_argument("--eval-test", action="store_true", help="also evaluate every global model on the test set")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler
    import signal

    from swarmnode.node.compute import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts (and before the imports below, which may start some)

    import trio

    from consensus.errors import ConsensusError
    from swarmnode.learning.errors import LearningError
    from swarmnode.node.config import NodeConfigError, load_config
    from swarmnode.node.keys import KeyFileError
    from swarmnode.node.node import Node, NodeError, setup_logging

    try:
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to stderr
    except (ValueError, OSError):  # stderr is not a real file (e.g. captured): no stack dumps then
        pass
    try:
        cfg = load_config(args.config).with_bootstrap(tuple(args.bootstrap))
        setup_logging(cfg.log_level, args.name)
        node = Node.from_config(cfg, evaluate_test=args.eval_test)
        trio.run(node.run)
    except (NodeConfigError, KeyFileError, NodeError, LearningError, ConsensusError) as exc:
        raise CliError(str(exc)) from None
    return 0
