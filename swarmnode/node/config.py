"""The node configuration: written by `swarmnode init`, read once by `swarmnode run`, frozen, passed explicitly."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w

DEFAULT_METRICS_ADDR = "127.0.0.1:0"  # Prometheus /metrics: on, loopback only, any free port (in node.json)


class NodeConfigError(Exception):
    """The config file is missing, unreadable, or has a bad value (the message names the field)."""


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    genesis: Path
    key_file: Path
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 0  # 0: any free port (written to <data_dir>/node.json)
    rpc_vhosts: tuple[str, ...] = ()  # Host names the RPC answers besides localhost and rpc_host ("*": any)
    rpc_cors_origins: tuple[str, ...] = ()  # browser Origins allowed besides localhost pages ("*": any)
    rpc_gas_cap: int = 5_000_000  # gas of one eth_call / eth_estimateGas (more is clamped to this)
    rpc_call_timeout: float = 5.0  # wall-clock seconds of one eth_call / eth_estimateGas
    rpc_call_workers: int = 2  # processes running eth_call / eth_estimateGas (calls at once)
    rpc_max_connections: int = 64  # RPC connections at once; more wait, then get 503
    torch_threads: int = 1
    dataset_dir: Path | None = None  # where the task's dataset is looked for first
    validate_fraction: float = 1.0  # of the node's validation split used for the progress line
    local_data: Path | None = None  # the node's own data, when the task trains on local data ([learning] data)
    holdout_fraction: float = 0.2  # of the node's local rows held out for its own evaluation
    device: str = "auto"  # local training on "cpu", "cuda", or "auto" (CUDA when present); aggregation is on the CPU
    log_level: str = "INFO"
    compute_niceness: int = 10  # training threads run this much nicer, scoring at 19 (Linux; 0: off)
    keep_update_rounds: int = 16  # delete the update blobs of rounds this far behind the last final; 0 keeps all
    keep_model_rounds: int = 64  # delete final models this far behind the newest (0 keeps all; see RoundWork.prune)
    # audit/debugging: write every byte exchanged with peers here (swarmnode/p2p/capture.py). Set by
    # `swarmnode run --capture-traffic DIR` only, never read from or written to config.toml: a capture holds
    # the plaintext of every message and should not stay on by accident
    capture_traffic: Path | None = None
    # Prometheus /metrics (swarmnode/node/metrics.py): HOST:PORT, port 0 = any free port, "off" = none
    metrics_addr: str = DEFAULT_METRICS_ADDR

    @property
    def chain_dir(self) -> Path:
        return self.data_dir / "chain"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def signing_record(self) -> Path:
        return self.data_dir / "signing.rec"

    @property
    def info_file(self) -> Path:
        """Runtime facts for tools: the RPC port, listen multiaddrs, pid (written once running)."""
        return self.data_dir / "node.json"

    def with_bootstrap(self, extra: tuple[str, ...]) -> NodeConfig:
        return replace(self, bootstrap=tuple(dict.fromkeys(self.bootstrap + extra)))

    def with_metrics(self, addr: str | None) -> NodeConfig:
        return self if addr is None else replace(self, metrics_addr=_metrics_addr(addr, "--metrics-addr"))

    def with_capture(self, directory: Path | None) -> NodeConfig:
        return replace(self, capture_traffic=directory.expanduser().resolve() if directory is not None else None)


def _str_list(raw: Any, name: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise NodeConfigError(f"config field '{name}': expected a list of strings, got {raw!r}")
    return tuple(raw)


def _int(raw: Any, name: str, lo: int, hi: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not lo <= raw <= hi:
        raise NodeConfigError(f"config field '{name}': expected an integer in [{lo}, {hi}], got {raw!r}")
    return raw


def _seconds(raw: Any, name: str, lo: float = 0.01, hi: float = 3600.0) -> float:
    if not isinstance(raw, (int, float)) or isinstance(raw, bool) or not lo <= raw <= hi:
        raise NodeConfigError(f"config field '{name}': expected seconds in [{lo}, {hi}], got {raw!r}")
    return float(raw)


def _metrics_addr(raw: Any, name: str) -> str:
    from swarmnode.node.metrics import MetricsError, parse_metrics_addr

    if not isinstance(raw, str):
        raise NodeConfigError(f"{name}: expected \"HOST:PORT\" or \"off\", got {raw!r}")
    try:
        parse_metrics_addr(raw)
    except MetricsError as exc:
        raise NodeConfigError(f"{name}: {exc}") from None
    return raw.strip()


def config_from_dict(raw: dict[str, Any], base: Path) -> NodeConfig:
    """Parse the TOML tables [node], [p2p], [rpc], [learning], [metrics]; relative paths are relative to `base`."""
    known = {"node", "p2p", "rpc", "learning", "metrics"}
    if set(raw) - known:
        raise NodeConfigError(f"unknown config tables {sorted(set(raw) - known)}; known: {sorted(known)}")
    node, p2p, rpc, learning, metrics = (raw.get(k, {}) for k in ("node", "p2p", "rpc", "learning", "metrics"))
    if not isinstance(metrics, dict):
        raise NodeConfigError(f"config [metrics]: expected a table, got {metrics!r}")

    def path(table: dict[str, Any], key: str, where: str, required: bool = True) -> Path | None:
        value = table.get(key)
        if value is None:
            if required:
                raise NodeConfigError(f"config field '{where}.{key}' is missing")
            return None
        if not isinstance(value, str) or not value:
            raise NodeConfigError(f"config field '{where}.{key}': expected a path, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    data_dir = path(node, "data_dir", "node")
    genesis = path(node, "genesis", "node")
    key_file = path(node, "key_file", "node")
    assert data_dir is not None and genesis is not None and key_file is not None  # required=True above
    threads = _int(learning.get("torch_threads", 1), "learning.torch_threads", 1, 256)
    fraction = learning.get("validate_fraction", 1.0)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise NodeConfigError(f"config field 'learning.validate_fraction': expected (0, 1], got {fraction!r}")
    holdout = learning.get("holdout_fraction", 0.2)
    if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0 <= holdout <= 0.9:
        raise NodeConfigError(f"config field 'learning.holdout_fraction': expected [0, 0.9], got {holdout!r}")
    device = learning.get("device", "auto")
    if device not in ("auto", "cpu", "cuda"):
        raise NodeConfigError(f"config field 'learning.device': expected \"auto\", \"cpu\" or \"cuda\", got {device!r}")
    return NodeConfig(
        data_dir=data_dir, genesis=genesis, key_file=key_file, device=device,
        listen=_str_list(p2p.get("listen", ["/ip4/127.0.0.1/tcp/0"]), "p2p.listen"),
        bootstrap=_str_list(p2p.get("bootstrap", []), "p2p.bootstrap"),
        rpc_host=str(rpc.get("host", "127.0.0.1")),
        rpc_port=_int(rpc.get("port", 0), "rpc.port", 0, 65535),
        rpc_vhosts=_str_list(rpc.get("vhosts", []), "rpc.vhosts"),
        rpc_cors_origins=_str_list(rpc.get("cors_origins", []), "rpc.cors_origins"),
        rpc_gas_cap=_int(rpc.get("gas_cap", 5_000_000), "rpc.gas_cap", 21_000, 2**40),
        rpc_call_timeout=_seconds(rpc.get("call_timeout", 5.0), "rpc.call_timeout"),
        rpc_call_workers=_int(rpc.get("call_workers", 2), "rpc.call_workers", 1, 64),
        rpc_max_connections=_int(rpc.get("max_connections", 64), "rpc.max_connections", 1, 10_000),
        torch_threads=threads,
        dataset_dir=path(learning, "dataset_dir", "learning", required=False),
        validate_fraction=float(fraction),
        local_data=path(learning, "data", "learning", required=False),
        holdout_fraction=float(holdout),
        compute_niceness=_int(learning.get("compute_niceness", 10), "learning.compute_niceness", 0, 19),
        log_level=str(node.get("log_level", "INFO")).upper(),
        keep_update_rounds=_int(node.get("keep_update_rounds", 16), "node.keep_update_rounds", 0, 2**31),
        keep_model_rounds=_int(node.get("keep_model_rounds", 64), "node.keep_model_rounds", 0, 2**31),
        metrics_addr=_metrics_addr(metrics.get("addr", DEFAULT_METRICS_ADDR), "config field 'metrics.addr'"),
    )


def load_config(path: Path | str) -> NodeConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise NodeConfigError(f"config file {p} does not exist (create one with `swarmnode init`)") from None
    except tomllib.TOMLDecodeError as exc:
        raise NodeConfigError(f"config file {p} is not valid TOML: {exc}") from None
    return config_from_dict(raw, p.resolve().parent)


def config_to_dict(cfg: NodeConfig) -> dict[str, Any]:
    learning: dict[str, Any] = {"torch_threads": cfg.torch_threads, "validate_fraction": cfg.validate_fraction,
                                "compute_niceness": cfg.compute_niceness, "holdout_fraction": cfg.holdout_fraction,
                                "device": cfg.device}
    if cfg.dataset_dir is not None:
        learning["dataset_dir"] = str(cfg.dataset_dir)
    if cfg.local_data is not None:
        learning["data"] = str(cfg.local_data)
    return {
        "node": {"data_dir": str(cfg.data_dir), "genesis": str(cfg.genesis), "key_file": str(cfg.key_file),
                 "log_level": cfg.log_level, "keep_update_rounds": cfg.keep_update_rounds,
                 "keep_model_rounds": cfg.keep_model_rounds},
        "p2p": {"listen": list(cfg.listen), "bootstrap": list(cfg.bootstrap)},
        "rpc": {"host": cfg.rpc_host, "port": cfg.rpc_port, "vhosts": list(cfg.rpc_vhosts),
                "cors_origins": list(cfg.rpc_cors_origins), "gas_cap": cfg.rpc_gas_cap,
                "call_timeout": cfg.rpc_call_timeout, "call_workers": cfg.rpc_call_workers,
                "max_connections": cfg.rpc_max_connections},
        "learning": learning,
        "metrics": {"addr": cfg.metrics_addr},
    }


def dump_config(cfg: NodeConfig) -> str:
    return "# swarmnode node config (written by `swarmnode init`)\n" + tomli_w.dumps(config_to_dict(cfg))
