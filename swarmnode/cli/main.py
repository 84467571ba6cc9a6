"""The `swarmnode` command: a small dispatcher over subcommand modules.

Each subcommand module has `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
User errors (CliError, and the typed errors of the packages underneath) are printed as one line on
stderr with exit status 2; only genuine bugs show a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from swarmnode.cli import (
    chain_cmd,
    data_cmd,
    genesis_cmd,
    init_cmd,
    member_cmd,
    model_cmd,
    report_cmd,
    run_cmd,
    status_cmd,
)
from swarmnode.cli.errors import CliError

SUBCOMMANDS = (genesis_cmd, init_cmd, data_cmd, run_cmd, status_cmd, chain_cmd, member_cmd, model_cmd,
               report_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmnode",
        description="Peer-to-peer swarm-learning node: local training, libp2p gossip, a proof-of-stake chain.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"swarmnode: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 141


if __name__ == "__main__":
    sys.exit(main())
