"""A minimal JSON-RPC client for the CLI, and how a command finds its node's RPC endpoint."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from swarmnode.cli.errors import CliError

DEFAULT_RPC = "http://127.0.0.1:8545"


def add_rpc_arguments(parser: argparse.ArgumentParser, json_help: str = "print JSON instead of a table") -> None:
    parser.add_argument("--rpc", metavar="URL", help=f"node JSON-RPC URL (default: $SWARMNODE_RPC or {DEFAULT_RPC})")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="find the RPC URL of the node run with this config (its data dir's node.json)")
    parser.add_argument("--json", action="store_true", help=json_help)


def rpc_url(args: argparse.Namespace) -> str:
    if getattr(args, "rpc", None):
        return str(args.rpc)
    if getattr(args, "config", None):
        from swarmnode.node.config import NodeConfigError, load_config

        try:
            cfg = load_config(args.config)
        except NodeConfigError as exc:
            raise CliError(str(exc)) from None
        try:
            return str(json.loads(cfg.info_file.read_text())["rpc"])
        except (OSError, ValueError, KeyError):
            raise CliError(f"no running node found for {args.config} ({cfg.info_file} missing: is it running?)") from None
    return os.environ.get("SWARMNODE_RPC", DEFAULT_RPC)


MAX_BATCH = 100  # requests per JSON-RPC batch: the server's limit (consensus.rpc.MAX_BATCH)


class RpcClient:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._id = 0

    def call(self, method: str, *params: Any) -> Any:
        self._id += 1
        reply = self._post({"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)})
        if not isinstance(reply, dict):
            raise CliError(f"{self.url} did not answer JSON-RPC")
        return _result(method, reply)

    def batch(self, method: str, params: list[list[Any]]) -> list[Any]:
        """`method` once per parameter list, in JSON-RPC batches of at most MAX_BATCH: one HTTP request per
        batch instead of one per call (results in the order of `params`)."""
        results: list[Any] = []
        for start in range(0, len(params), MAX_BATCH):
            chunk = params[start:start + MAX_BATCH]
            first = self._id + 1
            self._id += len(chunk)
            reply = self._post([{"jsonrpc": "2.0", "id": first + i, "method": method, "params": p}
                                for i, p in enumerate(chunk)])
            if isinstance(reply, dict):  # the whole batch was refused (e.g. too large)
                _result(method, reply)
            by_id = {r.get("id"): r for r in reply if isinstance(r, dict)} if isinstance(reply, list) else {}
            for i in range(len(chunk)):
                if first + i not in by_id:
                    raise CliError(f"{self.url} left request {first + i} of a {method} batch unanswered")
                results.append(_result(method, by_id[first + i]))
        return results

    def _post(self, payload: Any) -> Any:
        body = json.dumps(payload).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise CliError(f"{self.url}: HTTP {exc.code}: {exc.read()[:200]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CliError(f"cannot reach the node at {self.url}: {getattr(exc, 'reason', exc)} (is it running?)") from None
        except ValueError:
            raise CliError(f"{self.url} did not answer JSON-RPC") from None


def _result(method: str, reply: dict[str, Any]) -> Any:
    if "error" in reply:
        err = reply["error"]
        raise CliError(f"{method}: {err.get('message', err) if isinstance(err, dict) else err}")
    return reply.get("result")


def client(args: argparse.Namespace) -> RpcClient:
    return RpcClient(rpc_url(args))


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if j and c[:1].isdigit() else c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))
