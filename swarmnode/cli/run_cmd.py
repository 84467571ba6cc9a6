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
    p.add_argument("--byzantine", metavar="ATTACK[:KEY=VALUE,...]",
                   help="TESTING ONLY: attack the swarm as a Byzantine participant, e.g. sign-flip, "
                        "scaling:factor=-10, gaussian:sigma=0.5, label-flip, inflated-samples, nan, wrong-shape, "
                        "absurd-norm, replay-old, withhold, equivocate (see swarmnode/adversary/attacks.py)")
    audit = p.add_argument_group("debugging and audit")
    audit.add_argument("--capture-traffic", type=Path, metavar="DIR",
                       help="write every byte this node exchanges with its peers to DIR, one file per connection "
                            "(mode 0600): the plaintext of every message (before Noise encrypts it, after it "
                            "decrypts it) and the raw TCP bytes; read it with `python -m swarmnode.p2p.traffic DIR`. "
                            "Off by default; it costs a file write per message")
    p.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics; 'off' serves none (overrides the "
                        "config's [metrics] addr; default 127.0.0.1:0, loopback on any free port, written to the "
                        "data dir's node.json and shown by `swarmnode status`)")
    rpc = p.add_argument_group("JSON-RPC (each overrides the config's [rpc] value)")
    rpc.add_argument("--rpc-vhosts", metavar="NAMES",
                     help="comma-separated Host names the RPC answers besides localhost/127.0.0.1/[::1] and its "
                          "bind address; '*' answers any (as geth --http.vhosts)")
    rpc.add_argument("--rpc-cors", metavar="ORIGINS",
                     help="comma-separated browser origins (scheme://host[:port]) allowed besides localhost "
                          "pages; '*' allows any (as geth --http.corsdomain)")
    rpc.add_argument("--rpc-gas-cap", type=int, metavar="GAS",
                     help="gas of one eth_call/eth_estimateGas; more is clamped to it (default 5000000)")
    rpc.add_argument("--rpc-call-timeout", type=float, metavar="SECONDS",
                     help="wall-clock limit of one eth_call/eth_estimateGas (default 5)")
    p.set_defaults(func=cmd_run)


def rpc_options(cfg: Any, args: argparse.Namespace) -> Any:
    """consensus.rpc.RpcOptions from the config's [rpc] table and the command line."""
    from consensus.chain_reads import CallLimits
    from consensus.rpc import RpcOptions

    def names(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return default if text is None else tuple(n.strip() for n in text.split(",") if n.strip())

    gas_cap = args.rpc_gas_cap if getattr(args, "rpc_gas_cap", None) is not None else cfg.rpc_gas_cap
    timeout = args.rpc_call_timeout if getattr(args, "rpc_call_timeout", None) is not None else cfg.rpc_call_timeout
    if not 21_000 <= gas_cap <= 2**40:
        raise CliError(f"--rpc-gas-cap {gas_cap}: expected 21000 to 2**40")
    if not 0.01 <= timeout <= 3600:
        raise CliError(f"--rpc-call-timeout {timeout}: expected 0.01 to 3600 seconds")
    calls = CallLimits(gas_cap=gas_cap, timeout=timeout, workers=cfg.rpc_call_workers)
    return RpcOptions(vhosts=names(getattr(args, "rpc_vhosts", None), cfg.rpc_vhosts),
                      cors_origins=names(getattr(args, "rpc_cors", None), cfg.rpc_cors_origins),
                      max_connections=cfg.rpc_max_connections, calls=calls)


def cmd_run(args: argparse.Namespace) -> int:
    import faulthandler
    import signal

    from swarmnode.node.compute import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts (and before the imports below, which may start some)

    from swarmnode.node.config import NodeConfigError, load_config

    try:  # the config and the command line first: a mistake there is reported in a second, before torch loads
        cfg = (load_config(args.config).with_bootstrap(tuple(args.bootstrap)).with_capture(args.capture_traffic)
               .with_metrics(args.metrics_addr))
    except NodeConfigError as exc:
        raise CliError(str(exc)) from None

    import trio

    from consensus.errors import ConsensusError
    from swarmnode.learning.errors import LearningError
    from swarmnode.node.keys import KeyFileError
    from swarmnode.node.node import Node, NodeError, setup_logging
    from swarmnode.node.profiling import ProfilingUnavailable, cpu_profile

    try:
        faulthandler.enable(all_threads=True)  # a fatal signal (SIGSEGV, SIGABRT) leaves every stack in the log
        faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to stderr
    except (ValueError, OSError):  # stderr is not a real file (e.g. captured): no stack dumps then
        pass
    try:
        setup_logging(cfg.log_level, args.name)
        options = rpc_options(cfg, args)
        node = Node.from_config(cfg, evaluate_test=args.eval_test, byzantine=args.byzantine)
        node.rpc.configure(options)  # Node builds its RpcServer with the defaults
        with cpu_profile(args.name or "node"):  # SWARMNODE_PROFILE=DIR (developers: swarmnode/node/profiling.py)
            trio.run(node.run)
    except (NodeConfigError, KeyFileError, NodeError, LearningError, ConsensusError, ProfilingUnavailable) as exc:
        raise CliError(str(exc)) from None
    return 0
