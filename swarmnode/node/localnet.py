"""A swarm of daemon processes on loopback, started through the CLI: for scripts/local_swarm.py and the
system tests. Every process is in its own session and is always killed on exit (`with LocalSwarm(...)`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

T = TypeVar("T")


class SwarmTimeout(Exception):
    """A condition on the swarm did not hold before its deadline (the message says which)."""


def cli() -> list[str]:
    exe = Path(sys.executable).with_name("swarmnode")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "swarmnode.cli.main"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"swarmnode {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class NodeProc:
    index: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    rpc_url: str | None = None
    listen: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.data_dir / "config.toml"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalSwarm:
    """`nodes` daemons for a genesis with dev keys; node i uses dev key i (validators first)."""

    def __init__(self, base: Path, genesis: Path, keys_dir: Path, *, extra_env: dict[str, str] | None = None,
                 run_args: tuple[str, ...] = (), init_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.init_args = init_args
        self.genesis = genesis
        self.keys_dir = keys_dir
        self.nodes: dict[int, NodeProc] = {}
        self.env = {**os.environ, **(extra_env or {})}
        self.run_args = run_args

    # ---- setup

    # where node i listens, serves RPC, and what runs its command: loopback here; netns.NetnsSwarm puts
    # each node on a host of its own
    def listen_addr(self, i: int) -> str:
        """The multiaddr node i listens on (a free loopback port chosen now, so peers can bootstrap to it
        before it runs)."""
        return f"/ip4/127.0.0.1/tcp/{free_port()}"

    def rpc_host(self, i: int) -> str:
        return "127.0.0.1"

    def command_prefix(self, i: int) -> list[str]:
        return []

    def init_node(self, i: int, key: Path | None = None, *, fresh_key: bool = False,
                  init_args: tuple[str, ...] = ()) -> NodeProc:
        """`swarmnode init` for node i (dev key i, or a new key with fresh_key); `init_args` are node i's own
        (e.g. --local-data, its data)."""
        from swarmnode.node.keys import load_key
        from swarmnode.p2p.identity import peer_id_of

        data_dir = self.base / f"node{i}"
        key = key or self.keys_dir / f"node-{i}.key"
        listen = self.listen_addr(i)
        key_args = [] if fresh_key else ["--key", str(key)]  # fresh: `init` creates a new key
        run_cli("init", "--genesis", str(self.genesis), "--data-dir", str(data_dir), *key_args,
                "--rpc-host", self.rpc_host(i), "--rpc-port", "0", "--listen", listen, *self.init_args, *init_args)
        node = NodeProc(i, data_dir, self.base / f"node{i}.log")
        node.listen = [f"{listen}/p2p/{peer_id_of(load_key(data_dir / 'node.key'))}"]
        self.nodes[i] = node
        return node

    def start_all(self, indices: list[int], extra_args: dict[int, tuple[str, ...]] | None = None) -> None:
        """Start several nodes at once, each bootstrapping to all the others (they redial until up)."""
        for i in indices:
            others = [a for n in self.nodes.values() if n.index != i for a in n.listen]
            self.start(i, bootstrap=others, extra_args=(extra_args or {}).get(i, ()), wait=False)
        for i in indices:
            self._wait_info(self.nodes[i])

    def start(self, i: int, *, bootstrap: list[str] | None = None, extra_args: tuple[str, ...] = (),
              wait: bool = True) -> NodeProc:
        node = self.nodes[i]
        if bootstrap is None:
            bootstrap = [a for n in self.nodes.values() if n.index != i and n.alive() for a in n.listen]
        info = node.data_dir / "node.json"
        info.unlink(missing_ok=True)
        args = [*self.command_prefix(i), *cli(), "run", "--config", str(node.config), "--name", f"node{i}",
                *self.run_args, *extra_args]
        for b in bootstrap:
            args += ["--bootstrap", b]
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the child process from here
        try:
            with signals_held():  # a Ctrl-C or SIGTERM lands after the child is recorded, never in between
                node.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                             start_new_session=True, preexec_fn=child_setup)
        finally:
            log.close()
        if wait:
            self.wait_ready(i)
        return node

    def wait_ready(self, i: int, timeout: float = 90.0) -> None:
        """Until node i has written node.json (its RPC URL and listen addresses)."""
        self._wait_info(self.nodes[i], timeout)

    def _wait_info(self, node: NodeProc, timeout: float = 90.0) -> None:
        info = node.data_dir / "node.json"

        def ready() -> dict[str, Any] | None:
            if not node.alive():
                raise RuntimeError(f"node{node.index} exited with {node.proc.returncode if node.proc else '?'}: "
                                   f"{self.tail(node.index)}")
            try:
                return json.loads(info.read_text())
            except (OSError, ValueError):
                return None

        data = wait_for(ready, timeout, f"node{node.index} to write {info}")
        node.rpc_url, node.listen = data["rpc"], list(data["listen"])

    # ---- control

    def stop(self, i: int, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        node = self.nodes[i]
        if node.proc is None or node.proc.poll() is not None:
            return node.proc.returncode if node.proc else None
        node.proc.send_signal(signal.SIGTERM)
        try:
            return node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(i)
            return None

    def stop_many(self, indices: list[int], timeout: float = 20.0) -> list[int | None]:
        """SIGTERM to all of them at once (one signal each), then wait; SIGKILL whoever outlives `timeout`."""
        for i in indices:
            if self.nodes[i].alive():
                self.nodes[i].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        codes: list[int | None] = []
        for i in indices:
            proc = self.nodes[i].proc
            try:
                codes.append(proc.wait(timeout) if proc is not None else None)
            except subprocess.TimeoutExpired:
                self.kill(i)
                codes.append(None)
        return codes

    def kill(self, i: int) -> None:
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.proc.wait(10)

    def close(self) -> None:
        with signals_held():  # a second Ctrl-C or SIGTERM must not abandon the daemons half-way
            self._close()

    def _close(self) -> None:
        for i in list(self.nodes):
            if self.nodes[i].alive():
                self.nodes[i].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        for i in list(self.nodes):
            node = self.nodes[i]
            if node.proc is not None:
                try:
                    node.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.kill(i)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- queries

    def rpc(self, i: int, method: str, *params: Any, timeout: float = 10.0) -> Any:
        node = self.nodes[i]
        if node.rpc_url is None:
            raise RuntimeError(f"node{i} has no RPC endpoint yet")
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        req = urllib.request.Request(node.rpc_url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            reply = json.loads(resp.read())
        if "error" in reply:
            raise RuntimeError(f"node{i} {method}: {reply['error']}")
        return reply["result"]

    def try_rpc(self, i: int, method: str, *params: Any) -> Any:
        try:
            return self.rpc(i, method, *params)
        except (OSError, RuntimeError, ValueError):
            return None

    def final_hashes(self, i: int, first: int = 0) -> dict[int, str]:
        """Finalized rounds from `first` on node i's chain: round -> final model hash (read in pages of
        100 rounds, the RPC's limit per call)."""
        out: dict[int, str] = {}
        while True:
            page = self.try_rpc(i, "swarm_roundHistory", first, 100) or []
            out.update({int(r["round"]): r["finalHash"] for r in page if r["finalized"]})
            if len(page) < 100:
                return out
            first += 100

    def tail(self, i: int, lines: int = 15) -> str:
        try:
            return "\n".join(self.nodes[i].log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def child_setup() -> None:
    """In the child before exec: receive SIGINT/SIGTERM (the parent holds them while it starts us, and a
    signal mask survives exec), and get SIGTERM when the process that started us dies, however it dies
    (even kill -9), so a launcher that is killed never leaves daemons behind. The second part is Linux
    only; elsewhere close() still stops every child on a normal exit, Ctrl-C or SIGTERM."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (they are delivered on exit from the block) in the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.3) -> T:
    """Poll `check` until it returns something truthy; SwarmTimeout names `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SwarmTimeout(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def make_genesis(base: Path, validators: int, task: str | Path, *, commit_window_s: int = 20,
                 chain_id: int = 7331, extra_args: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """`swarmnode genesis new ... --dev-keys` into `base`; returns (genesis file, keys dir). `task` is a
    preset name, or a Path to a task file ([task] table).

    `extra_args` go to `genesis new` as given, e.g. ("--min-participants", "2", "--under-min", "skip")."""
    genesis, keys = base / "genesis.toml", base / "keys"
    task_args = ["--task-file", str(task)] if isinstance(task, Path) else ["--task", task]
    run_cli("genesis", "new", "--validators", str(validators), *task_args, "--dev-keys", "--out", str(genesis),
            "--keys-dir", str(keys), "--commit-window-s", str(commit_window_s), "--chain-id", str(chain_id),
            *extra_args)
    return genesis, keys


@contextmanager
def running_swarm(base: Path, nodes: int, task: str | Path, *, commit_window_s: int = 8,
                  genesis_args: tuple[str, ...] = (), run_args: dict[int, tuple[str, ...]] | None = None
                  ) -> Iterator[LocalSwarm]:
    """A genesis (`make_genesis`) and `nodes` daemons started on it, one thread of torch each, the benchmark
    data from $SWARMNODE_DATA or Debian's package (`run_args`: node i's own `swarmnode run` flags); every
    daemon is stopped on exit."""
    genesis, keys = make_genesis(base, nodes, task, commit_window_s=commit_window_s, extra_args=genesis_args)
    env = {"OMP_NUM_THREADS": "1",
           "SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    s = LocalSwarm(base, genesis, keys, extra_env=env)
    try:
        for i in range(nodes):
            s.init_node(i)
        s.start_all(list(range(nodes)), run_args)
        yield s
    finally:
        s.close()


def dev_keys_for(genesis: Path, base: Path, count: int) -> Path:
    """Regenerate the dev keys of a shipped genesis (made with --dev-keys) into base/keys."""
    keys = base / "keys"
    tmp = base / "regen-genesis.toml"
    run_cli("genesis", "new", "--validators", str(count), "--task", "tiny", "--dev-keys", "--out", str(tmp),
            "--keys-dir", str(keys), "--force")
    tmp.unlink(missing_ok=True)
    return keys


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def test_accuracy_of(genesis: Path, store_dir: Path, model_hash: str) -> float:
    """Test-set accuracy of a final model as a node stored it (re-verified against its hash on read)."""
    import torch

    from consensus.genesis import load_genesis
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.evaluate import evaluate
    from swarmnode.learning.tasks import Task
    from swarmnode.node.store import ModelStore

    torch.set_num_threads(1)
    task = Task.from_dict(load_genesis(genesis).task)
    model = ModelStore(store_dir).get_model(bytes.fromhex(model_hash.removeprefix("0x")))
    return evaluate(task.model_spec(), model.params, load_dataset(task.dataset).test).accuracy
