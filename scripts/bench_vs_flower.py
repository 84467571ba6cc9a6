#!/usr/bin/env python3
"""Benchmark: one federated workload through Flower and through swarmnode, side by side in one run.

Three setups train the same workload: genesis/seed-10.toml's task (Fashion-MNIST, small CNN, the dominant
partition, its local steps, batch size, learning rate and seeds) with plain FedAvg, sample-weighted, on
both sides (the seed genesis uses swarmnode's `robust` rule; this benchmark writes a genesis that differs
from it only in `rule = "fedavg"` and the participant count, so the algorithms match):

  flower-deployment   a Flower SuperLink plus one SuperNode per participant, separate processes, insecure
                      HTTP on 127.0.0.1 (Flower's default isolation: each message runs in a new
                      `flwr-clientapp` process);
  flower-simulation   a Flower SuperLink in simulation mode (Ray, one CPU per virtual client);
  swarmnode           one `swarmnode run` daemon per participant (scripts/bench_swarm.py's run_swarm).

The Flower side is the Flower App in scripts/flower_app: it imports swarmnode's own learning code through
PYTHONPATH (the partition, the per-(round, client) training seed, local training, held-out scoring), so
both sides compute the same local updates. Flower runs from a venv of its own (.venv-flower, made by this
script: flwr plus the main venv's exact torch, torchvision and helper versions, from this machine's pip
sources). Each setup runs in a network namespace of its own when this process may make one (root), so the
loopback bytes counted are that setup's alone; otherwise they are the whole machine's (said in the output).

For each setup it reports the wall clock per round (mean over the rounds after the first), CPU seconds
(all of the setup's processes: per round over the same rounds, and in total with start-up and shutdown),
memory (the largest sum of resident memory over the setup's processes at one time, and the sum of every
process's own peak, VmHWM), bytes on the wire (loopback bytes sent) and the global model's accuracy on the
Fashion-MNIST test set after each round (every model is scored after the run, by the same code).

    python scripts/bench_vs_flower.py --rounds 5 --out bench-results/flower.json      (make bench-flower)
    python scripts/bench_vs_flower.py --setups flower-simulation swarmnode --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.metadata
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_swarm import _interrupt  # noqa: E402

from swarmnode.node.soak import status_mb  # noqa: E402

SETUPS = ("flower-deployment", "flower-simulation", "swarmnode")
FLWR_VERSION = "1.42.0"
VENV = ROOT / ".venv-flower"
APP_DIR = ROOT / "scripts" / "flower_app"
SEED_GENESIS = ROOT / "genesis" / "seed-10.toml"
# the main venv's packages the Flower side imports (through swarmnode's code): the same versions on both sides
SHARED_PACKAGES = ("torch", "torchvision", "numpy", "safetensors", "eth-utils", "rlp")
SAMPLE_INTERVAL = 0.3  # seconds between two readings of the setup's processes
TARGET_VS_DEPLOYMENT = 10.0  # swarmnode at least this many times faster per round than Flower deployment mode
TARGET_VS_SIMULATION = 1.5  # swarmnode at most this many times slower per round than Flower simulation mode
EQUAL_ACCURACY_POINTS = 1.0  # "equal accuracy": every round's test accuracy within this many points of swarmnode's
PR_SET_CHILD_SUBREAPER = 36
MAX_CLIENTAPPS_PER_PARTICIPANT = 3  # ClientApp launches per participant and round beyond which Flower thrashes


class BenchError(Exception):
    """A setup could not run (the message says which and why)."""


# ---------------------------------------------------------------- the workload (pure)


def fedavg_task(seed_task: Mapping[str, Any], participants: int) -> dict[str, Any]:
    """The seed genesis's task with plain sample-weighted FedAvg (Flower's FedAvg) and `participants`
    clients; everything else (model, data, partition, local training, seeds) is left as it is."""
    return {**dict(seed_task), "num_clients": participants, "rule": "fedavg", "rule_params": {}}


def workload_dict(task: Mapping[str, Any], participants: int, rounds: int, max_samples: int,
                  genesis_model_hash: bytes, dataset_dir: str | None) -> dict[str, Any]:
    """What the Flower side reads (scripts/flower_app/swarmbench_flower/workload.py), built from the very
    genesis the swarm's daemons run: its task table, its max_samples bound and its genesis model hash."""
    return {"task": dict(task), "participants": participants, "rounds": rounds, "max_samples": max_samples,
            "genesis_model_hash": "0x" + genesis_model_hash.hex(), "torch_threads": 1, "dataset_dir": dataset_dir}


def flower_requirements(flwr_version: str, versions: Mapping[str, str]) -> list[str]:
    """pip requirements of the Flower venv: flwr with its simulation extra, and the main venv's exact
    versions of what swarmnode's learning code needs (the same torch on both sides: same kernels)."""
    return [f"flwr[simulation]=={flwr_version}", *(f"{name}=={versions[name]}" for name in SHARED_PACKAGES)]


# ---------------------------------------------------------------- measuring a process tree (Linux /proc)

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    start: int  # start time in clock ticks since boot: (pid, start) names a process even if the pid is reused
    cpu: float  # user + system seconds of the process itself
    children_cpu: float  # user + system seconds of its children that it has waited for (and theirs)


def proc_stat(pid: int) -> ProcStat | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime 14-17, starttime 22
    return ProcStat(pid, int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _CLK_TCK,
                    (int(fields[13]) + int(fields[14])) / _CLK_TCK)


def process_tree(root: int) -> list[ProcStat]:
    """`root` and every process below it, read from /proc now."""
    stats = [s for s in (proc_stat(int(p)) for p in os.listdir("/proc") if p.isdigit()) if s is not None]
    children: dict[int, list[ProcStat]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s)
    tree = [s for s in stats if s.pid == root]
    i = 0
    while i < len(tree):
        tree.extend(children.get(tree[i].pid, []))
        i += 1
    return tree


def lo_tx_bytes(net_dev: Path) -> int | None:
    """Bytes sent through `lo` per a /proc/.../net/dev file (on loopback every byte sent is also received:
    counting both directions would count it twice)."""
    try:
        for line in net_dev.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[8])
    except (OSError, IndexError, ValueError):
        return None
    return None


@dataclass
class Sample:
    t: float  # time.monotonic()
    cpu: float  # CPU seconds of the whole tree so far (live processes plus everything they have reaped)
    rss_mb: float  # sum of VmRSS over the tree's live processes
    lo_tx: int | None
    processes: int


@dataclass
class TreeMeter:
    """Samples the process tree under `root` every SAMPLE_INTERVAL s from a thread.

    CPU: a process's own time plus that of the children it has waited for covers, once summed over the live
    processes of the tree, everything the tree has ever run, as long as every process is reaped inside the
    tree (the driver is a child subreaper and reaps what is left at its end). The exact total comes from
    wait4() on the root; the samples place it in time. Peak memory per process (VmHWM) is the last value
    read while it was alive: a process that lives less than one interval may be missed."""

    root: int
    net_dev: Path
    own_namespace: bool = False  # the root moves into a namespace of its own: read `lo` only once it has
    samples: list[Sample] = field(default_factory=list)
    hwm_mb: dict[tuple[int, int], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        tree = process_tree(self.root)
        rss = 0.0
        for s in tree:
            rss += status_mb(s.pid, "VmRSS") or 0.0
            hwm = status_mb(s.pid, "VmHWM")  # None for a zombie: its memory is gone, its last reading stays
            if hwm is not None:
                self.hwm_mb[(s.pid, s.start)] = max(self.hwm_mb.get((s.pid, s.start), 0.0), hwm)
        if tree:
            lo = lo_tx_bytes(self.net_dev) if not self.own_namespace or self._moved() else None
            self.samples.append(Sample(time.monotonic(), sum(s.cpu + s.children_cpu for s in tree), rss, lo,
                                       len(tree)))

    def _moved(self) -> bool:
        """Whether the root has entered another network namespace than ours (`ip netns exec` does so
        just after it starts: a reading before that would be the whole machine's loopback)."""
        try:
            return os.readlink(f"/proc/{self.root}/ns/net") != os.readlink("/proc/self/ns/net")
        except OSError:
            return False

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="tree-meter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def interpolate(samples: Sequence[Sample], t: float, key: Callable[[Sample], float | None]) -> float | None:
    """A sampled quantity at time `t`, linearly between the samples around it (clamped at the ends)."""
    points = [(s.t, v) for s in samples if (v := key(s)) is not None]
    if not points:
        return None
    if t <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


# ---------------------------------------------------------------- a private loopback per setup


@contextlib.contextmanager
def private_loopback(enabled: bool) -> Iterator[str | None]:
    """A fresh network namespace with only `lo` up (its name), or None when disabled or impossible here."""
    from swarmnode.node.netns import ip, netns_unavailable

    if not enabled or netns_unavailable() is not None:
        yield None
        return
    name = f"swbench-{secrets.token_hex(3)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        for pid in ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", name, check=False)


# ---------------------------------------------------------------- the parent: run and measure one setup


@dataclass
class SetupRun:
    """One setup's measured run: what its driver reported and what the meter saw."""

    name: str
    driver: dict[str, Any]
    samples: list[Sample]
    hwm_mb: dict[tuple[int, int], float]
    cpu_total: float  # wait4() on the driver: every process of the setup, start-up and shutdown included
    elapsed: float
    wire_scope: str


def run_setup(name: str, spec: dict[str, Any], base: Path, use_netns: bool) -> SetupRun:
    """Run one setup's driver (this script with --drive) in its own namespace and measure its whole tree."""
    spec_path = base / f"{name}.spec.json"
    result_path = base / f"{name}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}, indent=2))
    with private_loopback(use_netns) as ns:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        cmd = [*prefix, sys.executable, str(Path(__file__).resolve()), "--drive", name, "--spec", str(spec_path)]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, start_new_session=True)  # its output comes through to ours
        # `ip netns exec` execs the driver: the same pid, so its /proc/<pid>/net/dev is the namespace's
        meter = TreeMeter(proc.pid, Path(f"/proc/{proc.pid}/net/dev") if ns else Path("/proc/net/dev"), bool(ns))
        meter.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            raise
        finally:
            meter.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - t0
    if proc.returncode != 0 or not result_path.exists():
        raise BenchError(f"{name}: the driver exited with {proc.returncode} (its output is above; logs under "
                         f"{spec['work']})")
    scope = "private namespace: this setup's loopback only" if ns else "machine-wide loopback (an upper bound)"
    return SetupRun(name, json.loads(result_path.read_text()), meter.samples, meter.hwm_mb,
                    usage.ru_utime + usage.ru_stime, elapsed, scope)


def setup_figures(run: SetupRun, accuracies: Sequence[float]) -> dict[str, Any]:
    """Per-round and total figures of one setup from its driver's round times and the meter's samples.

    Round r's time runs from the end of round r - 1 (for the first round: the start the driver reports)
    to the end of round r. Per-round CPU and wire bytes are taken over the rounds after the first, the same
    rounds the wall clock per round is averaged over (the first also holds connection set-up)."""
    t_start = float(run.driver["t_start"])
    ends = [float(t) for t in run.driver["round_ends"]]
    bounds = [t_start, *ends]
    seconds = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    w0, w1 = (ends[0], ends[-1]) if len(ends) > 1 else (t_start, ends[-1])
    steady = max(1, len(ends) - 1)
    cpu0, cpu1 = (interpolate(run.samples, t, lambda s: s.cpu) for t in (w0, w1))
    lo0, lo1 = (interpolate(run.samples, t, lambda s: s.lo_tx) for t in (w0, w1))
    all_lo = [s.lo_tx for s in run.samples if s.lo_tx is not None]
    aggregated = run.driver.get("aggregated") or [None] * len(seconds)
    return {
        "rounds": [{"round": i + 1, "seconds": s, "test_accuracy": a, "updates_aggregated": n}
                   for i, (s, a, n) in enumerate(zip(seconds, accuracies, aggregated, strict=True))],
        "round_seconds": statistics.fmean(seconds[1:] or seconds),
        "first_round_seconds": seconds[0],
        "cpu_seconds_per_round": (cpu1 - cpu0) / steady if cpu0 is not None and cpu1 is not None else None,
        # wait4() misses a process that outlived the driver (killed with the namespace, then reaped
        # outside the tree); the last sample still holds what such a process had used by then
        "cpu_seconds_total": max(run.cpu_total, max((s.cpu for s in run.samples), default=0.0)),
        "peak_rss_mb": max((s.rss_mb for s in run.samples), default=0.0),
        "sum_vmhwm_mb": sum(run.hwm_mb.values()),
        "processes_seen": len(run.hwm_mb),
        "wire_bytes_per_round": (lo1 - lo0) / steady if lo0 is not None and lo1 is not None else None,
        "wire_bytes_total": (all_lo[-1] - all_lo[0]) if all_lo else None,
        "wire_scope": run.wire_scope,
        "startup_seconds": t_start - run.samples[0].t if run.samples else None,
        "elapsed_seconds": run.elapsed,
        "final_test_accuracy": accuracies[-1] if accuracies else None,
    }


# ---------------------------------------------------------------- summary, targets, table (pure)


def summarize(figures: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document: every setup's figures, and the issue's targets checked where both sides ran."""
    out: dict[str, Any] = {**meta, "setups": {k: dict(v) for k, v in figures.items()}, "targets": {}}
    swarm = figures.get("swarmnode")
    if swarm is None:
        return out
    targets = out["targets"]
    for name, why in meta.get("failed", {}).items():
        targets[f"{name}_failed"] = why
    for name, fig in figures.items():
        if name == "swarmnode":
            continue
        diffs = [abs(a["test_accuracy"] - b["test_accuracy"]) * 100
                 for a, b in zip(fig["rounds"], swarm["rounds"], strict=False)]
        targets[f"accuracy_points_max_diff_vs_{name}"] = max(diffs) if diffs else None
    acc_ok = all(v is not None and v <= EQUAL_ACCURACY_POINTS
                 for k, v in targets.items() if k.startswith("accuracy_points"))
    targets["equal_accuracy"] = {"threshold_points": EQUAL_ACCURACY_POINTS, "met": acc_ok}
    if "flower-deployment" in figures:
        speedup = figures["flower-deployment"]["round_seconds"] / swarm["round_seconds"]
        targets["speedup_vs_flower_deployment"] = {"value": speedup, "target": f">= {TARGET_VS_DEPLOYMENT:g}x",
                                                   "met": speedup >= TARGET_VS_DEPLOYMENT and acc_ok}
    if "flower-simulation" in figures:
        slowdown = swarm["round_seconds"] / figures["flower-simulation"]["round_seconds"]
        targets["slowdown_vs_flower_simulation"] = {"value": slowdown, "target": f"<= {TARGET_VS_SIMULATION:g}x",
                                                    "met": slowdown <= TARGET_VS_SIMULATION and acc_ok}
    return out


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_table(summary: Mapping[str, Any]) -> str:
    """The side-by-side table, per-round accuracy, and the targets, as printed."""
    setups = summary["setups"]
    lines = [f"{'setup':<18} {'s/round':>8} {'CPU-s/round':>11} {'CPU-s total':>11} {'peak RSS GB':>11} "
             f"{'sum VmHWM GB':>12} {'wire MB/round':>13} {'final acc':>9}"]
    for name, f in setups.items():
        wire = None if f["wire_bytes_per_round"] is None else f["wire_bytes_per_round"] / 1e6
        acc = None if f["final_test_accuracy"] is None else f["final_test_accuracy"] * 100
        lines.append(f"{name:<18} {f['round_seconds']:>8.2f} {_num(f['cpu_seconds_per_round'], '.1f'):>11} "
                     f"{f['cpu_seconds_total']:>11.1f} {f['peak_rss_mb'] / 1024:>11.2f} "
                     f"{f['sum_vmhwm_mb'] / 1024:>12.2f} {_num(wire, '.2f'):>13} {_num(acc, '.2f'):>8}%")
    for name, why in summary.get("failed", {}).items():
        lines.append(f"{name:<18} FAILED: {why.splitlines()[0]}")
    rounds = max((len(f["rounds"]) for f in setups.values()), default=0)
    lines += ["", "test accuracy (%), updates aggregated and seconds, per round:",
              f"{'round':>5}  " + "  ".join(f"{name:>26}" for name in setups)]
    for r in range(rounds):
        cells = []
        for f in setups.values():
            row = f["rounds"][r] if r < len(f["rounds"]) else None
            n = "?" if row is None or row.get("updates_aggregated") is None else row["updates_aggregated"]
            cells.append(f"{row['test_accuracy'] * 100:>10.2f} {n:>5} {row['seconds']:>7.1f} s" if row
                         else f"{'-':>26}")
        lines.append(f"{r + 1:>5}  " + "  ".join(cells))
    targets = summary.get("targets", {})
    if targets:
        lines.append("")
        for key in ("speedup_vs_flower_deployment", "slowdown_vs_flower_simulation"):
            if key in targets:
                t = targets[key]
                lines.append(f"{key}: {t['value']:.2f}x (target {t['target']}): {'MET' if t['met'] else 'NOT MET'}")
        eq = targets["equal_accuracy"]
        diffs = ", ".join(f"{k.removeprefix('accuracy_points_max_diff_vs_')} {_num(v, '.2f')}"
                          for k, v in targets.items() if k.startswith("accuracy_points"))
        lines.append(f"equal accuracy (every round within {eq['threshold_points']:g} points of swarmnode; "
                     f"largest gap: {diffs}): {'yes' if eq['met'] else 'NO'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the Flower venv


def main_venv_versions() -> dict[str, str]:
    try:
        return {name: importlib.metadata.version(name) for name in SHARED_PACKAGES}
    except importlib.metadata.PackageNotFoundError as exc:
        raise BenchError(f"the main venv lacks {exc}: run `make setup` first") from None


def ensure_flower_venv(venv: Path, flwr_version: str) -> None:
    """Create `venv` with flwr and the shared packages unless it already holds exactly those (a stamp
    file records the requirements it was made with). torch comes from this machine's pip sources, as for
    the main venv (pip's configured find-links and indexes)."""
    reqs = flower_requirements(flwr_version, main_venv_versions())
    stamp = venv / ".bench-requirements"
    if stamp.exists() and stamp.read_text().split("\n") == reqs and (venv / "bin" / "flwr").exists():
        return
    print(f"installing Flower {flwr_version} into {venv} (one time; torch makes it a few minutes) ...", flush=True)
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    proc = subprocess.run([*pip, *reqs], text=True, capture_output=True)
    if proc.returncode != 0:
        raise BenchError(f"pip install {' '.join(reqs)} into {venv} failed:\n{proc.stderr[-3000:]}")
    stamp.write_text("\n".join(reqs))


# ---------------------------------------------------------------- drivers (run in the setup's namespace)


def _reap_and_kill_descendants(grace: float = 10.0) -> None:
    """SIGTERM whatever of the setup still runs below this driver, SIGKILL it after `grace` s, and reap
    every child (orphans come to us as the subreaper): their CPU then counts in our wait4() total."""
    me = os.getpid()
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        rest = [s.pid for s in process_tree(me) if s.pid != me]
        for pid in rest:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(s.pid != me for s in process_tree(me)):
            _reap_children()
            time.sleep(0.1)
    _reap_children()


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def flower_env(spec: Mapping[str, Any], home: Path) -> dict[str, str]:
    venv_bin = str(Path(spec["venv"]) / "bin")
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": spec["venv"],
           "PYTHONPATH": str(ROOT), "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1"}
    if spec.get("dataset_dir"):
        env["SWARMNODE_DATA"] = spec["dataset_dir"]
    # consensus/__init__.py picks safe-pysha3 for keccak in this process when installed; the Flower venv
    # lacks it, and swarmnode's code there chooses for itself (keccak only derives seeds and hashes there)
    env.pop("ETH_HASH_BACKEND", None)
    return env


def flower_connection(port: int) -> dict[str, Any]:
    """The Flower CLI's config.toml (under FLWR_HOME): one SuperLink connection, `bench`."""
    return {"superlink": {"default": "bench", "bench": {"address": f"127.0.0.1:{port}", "insecure": True}}}


def flower_run_args(app_dir: Path, workload: str, out_dir: Path, simulation: bool, participants: int) -> list[str]:
    """`flwr run` arguments after the executable: the app, the connection, its run config and, for a
    simulation, the federation (one virtual SuperNode per participant, one CPU each: two train at once
    on two cores, one torch thread each)."""
    args = ["run", str(app_dir), "bench", "--run-config", f'workload="{workload}" out-dir="{out_dir}"']
    if simulation:
        args += ["--federation-config",
                 f"num-supernodes={participants} client-resources-num-cpus=1 client-resources-num-gpus=0.0"]
    return args


def _wait_http(url: str, timeout: float, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise BenchError(f"{what} exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise BenchError(f"{what} did not answer {url} within {timeout:.0f} s")


def _read_progress(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def drive_flower(spec: dict[str, Any], simulation: bool) -> dict[str, Any]:
    """A SuperLink (in simulation mode, or with one SuperNode per participant), `flwr run`, and the
    ServerApp's progress file until the last round; every process is stopped at the end."""
    import tomli_w

    from swarmnode.node.localnet import free_port

    work = Path(spec["work"])
    home, out = work / "flwr-home", work / "out"
    home.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    n = int(spec["participants"])
    port = free_port()
    (home / "config.toml").write_text(tomli_w.dumps(flower_connection(port)))
    env = flower_env(spec, home)
    bin_ = Path(spec["venv"]) / "bin"
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(work / log, "ab") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work)
        procs.append(p)
        return p

    try:
        link = start([str(bin_ / "flower-superlink"), "--insecure", "--isolation", "subprocess", "--host",
                      "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation",
                      *(["--simulation"] if simulation else [])], "superlink.log")
        _wait_http(f"http://127.0.0.1:{port}/health", spec["startup_timeout"], lambda: link.poll() is None,
                   "flower-superlink")
        if not simulation:
            for i in range(n):
                start([str(bin_ / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                       "--node-config", f"partition-id={i} num-partitions={n}", "--port", str(free_port())],
                      f"supernode{i}.log")
        launched = subprocess.run([str(bin_ / "flwr"), *flower_run_args(APP_DIR, spec["workload"], out, simulation, n)],
                                  env=env, cwd=work, capture_output=True, text=True, timeout=spec["startup_timeout"])
        run_id = re.search(r"Successfully started run (\d+)", launched.stdout)
        if launched.returncode != 0 or run_id is None:
            raise BenchError(f"flwr run failed ({launched.returncode}): {launched.stdout[-2000:]}{launched.stderr[-2000:]}")
        try:
            progress = _wait_rounds(out, int(spec["rounds"]), spec, procs)
        except BenchError:  # the ServerApp's own log, from the SuperLink, says why
            shown = subprocess.run([str(bin_ / "flwr"), "log", run_id[1], "bench", "--show"], env=env, cwd=work,
                                   capture_output=True, text=True, timeout=120)
            (work / "serverapp.log").write_text(shown.stdout + shown.stderr)
            print("\n".join(shown.stdout.splitlines()[-40:]), file=sys.stderr)
            raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
        _reap_and_kill_descendants()
    by_round = {int(p["round"]): p for p in progress}
    rounds = range(1, int(spec["rounds"]) + 1)
    return {"t_start": float(by_round[0]["t"]), "round_ends": [float(by_round[r]["t"]) for r in rounds],
            "aggregated": [by_round[r].get("aggregated") for r in rounds],
            "models": [str(out / f"round-{r}.safetensors") for r in rounds]}


def _wait_rounds(out: Path, rounds: int, spec: Mapping[str, Any], procs: Sequence[subprocess.Popen[bytes]]
                 ) -> list[dict[str, Any]]:
    """Until the ServerApp has written `done`; BenchError when a round takes longer than round_timeout
    (the start, with round 0, gets startup_timeout) or the SuperLink exits."""
    seen, last_change, app_seen = 0, time.monotonic(), False
    launched: set[tuple[int, int]] = set()
    while not (out / "done").exists():
        app_running = bool(_running(b"flwr-serverapp", b"flwr-simulation"))
        launched |= _running(b"flwr-clientapp")
        if len(launched) > MAX_CLIENTAPPS_PER_PARTICIPANT * int(spec["participants"]) * max(1, seen):
            # a ClientApp process must reach its SuperNode within 30 s of its task being claimed, or the
            # task's token expires and the task is launched again: on a busy machine every launch misses
            # it and they pile up (70 launches, none through, in 6 minutes of round 1 here)
            raise BenchError(f"Flower is thrashing: {len(launched)} ClientApp launches for {max(0, seen - 1)} "
                             f"rounds of {spec['participants']} participants (their task tokens expire before "
                             "they start)")
        if app_seen and not app_running and not (out / "done").exists():
            raise BenchError(f"the ServerApp exited before the last round (rounds done: {max(0, seen - 1)})")
        app_seen = app_seen or app_running
        progress = _read_progress(out / "progress.jsonl")
        if len(progress) != seen:
            seen, last_change = len(progress), time.monotonic()
            if progress:
                r = progress[-1]["round"]
                print(f"  round {r} of {rounds} done" if r else "  the ServerApp started round 1", flush=True)
        limit = spec["round_timeout"] if seen else spec["startup_timeout"]
        if time.monotonic() - last_change > limit:
            raise BenchError(f"no Flower round finished within {limit:.0f} s (rounds done: {max(0, seen - 1)}); "
                             f"logs in {out.parent}")
        if procs[0].poll() is not None:
            raise BenchError(f"flower-superlink exited with {procs[0].returncode}; logs in {out.parent}")
        time.sleep(0.5)
    return _read_progress(out / "progress.jsonl")


def _running(*names: bytes) -> set[tuple[int, int]]:
    """Live processes below this driver whose program is one of `names` (e.g. b"flwr-clientapp"), as
    (pid, start time) pairs."""
    found = set()
    for s in process_tree(os.getpid()):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{s.pid}/cmdline").read_bytes().split(b"\0")
            if any(a.rsplit(b"/", 1)[-1] in names for a in argv[:2]):
                found.add((s.pid, s.start))
    return found


def drive_swarm(spec: dict[str, Any]) -> dict[str, Any]:
    """The swarm through scripts/bench_swarm.py's run_swarm: one daemon per participant, no scoring inside."""
    from bench_swarm import run_swarm

    # the daemons run this checkout's code, as the Flower side does (PYTHONPATH beats an installed copy)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    real = run_swarm(Path(spec["genesis"]), int(spec["participants"]), int(spec["rounds"]), Path(spec["work"]),
                     float(spec["round_timeout"]), score=False)
    _reap_and_kill_descendants()
    return {"t_start": real["t_start"], "round_ends": [r["t_final"] for r in real["rounds"]],
            "hashes": [r["hash"] for r in real["rounds"]], "store": real["store"],
            "aggregated": [r["commits"] for r in real["rounds"]]}


def drive(name: str, spec_path: Path) -> int:
    """The --drive entry point: run one setup and write what it measured to the spec's `result` path."""
    _become_subreaper()
    signal.signal(signal.SIGTERM, _interrupt)
    spec = json.loads(spec_path.read_text())
    Path(spec["work"]).mkdir(parents=True, exist_ok=True)
    try:
        if name == "swarmnode":
            result = drive_swarm(spec)
        else:
            result = drive_flower(spec, simulation=name == "flower-simulation")
    except (BenchError, KeyboardInterrupt) as exc:
        print(f"error: {str(exc) or 'interrupted'}", file=sys.stderr)
        _reap_and_kill_descendants()
        return 1
    except Exception:
        _reap_and_kill_descendants()
        raise
    Path(spec["result"]).write_text(json.dumps(result, indent=2))
    return 0


# ---------------------------------------------------------------- scoring (after each setup, unmeasured)


def score_setup(name: str, driver: Mapping[str, Any], genesis: Path) -> list[float]:
    """Test accuracy of every round's global model, by swarmnode's evaluate on the Fashion-MNIST test set."""
    import torch
    from safetensors.torch import load_file

    from consensus.genesis import load_genesis
    from swarmnode.learning.data import load_dataset
    from swarmnode.learning.evaluate import evaluate
    from swarmnode.learning.tasks import Task
    from swarmnode.node.localnet import test_accuracy_of

    torch.set_num_threads(1)
    if name == "swarmnode":
        return [test_accuracy_of(genesis, Path(driver["store"]), h) for h in driver["hashes"]]
    task = Task.from_dict(load_genesis(genesis).task)
    test = load_dataset(task.dataset).test
    return [evaluate(task.model_spec(), load_file(p), test).accuracy for p in driver["models"]]


def final_params(name: str, driver: Mapping[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    from swarmnode.node.store import ModelStore

    if name == "swarmnode":
        return ModelStore(Path(driver["store"])).get_model(bytes.fromhex(driver["hashes"][-1][2:])).params
    return load_file(driver["models"][-1])


def max_param_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """The largest absolute difference between two models' parameters (how far apart the setups ended)."""
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in a)


# ---------------------------------------------------------------- main


def load_averages() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def prepare(args: argparse.Namespace, base: Path) -> tuple[Path, dict[str, Any]]:
    """The fedavg genesis (written with `swarmnode genesis new`, as the seed genesis was) and the workload."""
    import tomli_w

    from consensus.genesis import load_genesis
    from swarmnode.node.localnet import make_genesis

    seed = load_genesis(args.genesis)
    task_file = base / "task.toml"
    task_file.write_text(tomli_w.dumps({"task": fedavg_task(seed.task, args.participants)}))
    genesis, _ = make_genesis(base, args.participants, task_file, commit_window_s=seed.rounds.commit_window_s,
                              chain_id=seed.chain_id)
    g = load_genesis(genesis)
    workload = workload_dict(g.task, args.participants, args.rounds, g.rounds.max_samples, g.genesis_model_hash,
                             os.environ.get("SWARMNODE_DATA"))
    (base / "workload.json").write_text(json.dumps(workload, indent=2))
    return genesis, workload


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--participants", type=int, default=10, help="participants in every setup (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per setup (default 5; the first is not "
                    "averaged into the per-round figures)")
    ap.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS), help="which setups to run, in "
                    "this order (default: all three)")
    ap.add_argument("--genesis", type=Path, default=SEED_GENESIS,
                    help="the genesis whose task is the workload (its rule is replaced by fedavg)")
    ap.add_argument("--flwr-version", default=FLWR_VERSION, help=f"Flower release to install (default {FLWR_VERSION})")
    ap.add_argument("--venv", type=Path, default=VENV, help="the Flower venv (default .venv-flower)")
    ap.add_argument("--round-timeout", type=float, default=900.0, help="longest wait for one round (s)")
    ap.add_argument("--startup-timeout", type=float, default=600.0, help="longest wait for a setup to start (s)")
    ap.add_argument("--no-netns", action="store_true", help="run every setup in this network namespace (the "
                    "wire bytes are then the whole machine's loopback traffic)")
    ap.add_argument("--base-dir", type=Path, help="work directory (default: a new temporary one, removed "
                    "after a successful run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "flower.json", help="JSON results")
    ap.add_argument("--drive", choices=SETUPS, help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.participants < 2 or args.rounds < 1:
        ap.error("--participants must be >= 2 and --rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drive:
        return drive(args.drive, args.spec)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # every setup may cache bytecode, as installs normally do
    base = args.base_dir or Path(tempfile.mkdtemp(prefix="bench-flower-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        if any(s.startswith("flower") for s in args.setups):
            ensure_flower_venv(args.venv, args.flwr_version)
        genesis, workload = prepare(args, base)
        load_before = load_averages()
        print(f"workload: {args.participants} participants, {args.rounds} rounds, task {workload['task']['model']} "
              f"on {workload['task']['dataset']}, {workload['task']['local_steps']} local steps, rule fedavg; "
              f"load average before: {load_before}", flush=True)
        spec_common = {"participants": args.participants, "rounds": args.rounds, "workload": str(base / "workload.json"),
                       "genesis": str(genesis), "venv": str(args.venv.resolve()),
                       "round_timeout": args.round_timeout, "startup_timeout": args.startup_timeout,
                       "dataset_dir": os.environ.get("SWARMNODE_DATA")}
        figures, runs, failed = {}, {}, {}
        for name in args.setups:
            need = args.participants * 1.4  # a daemon, or a ClientApp process, holds torch and the dataset
            if name != "flower-simulation" and mem_available_gb() < need:
                print(f"warning: {mem_available_gb():.1f} GB of memory available, {name} may need ~{need:.0f} GB",
                      flush=True)
            print(f"{name}: starting (load average {load_averages()})", flush=True)
            try:
                run = run_setup(name, {**spec_common, "work": str(base / name)}, base, not args.no_netns)
            except BenchError as exc:  # the others still run: a table with a failed setup says so
                print(f"error: {exc}", file=sys.stderr)
                failed[name] = str(exc)
                continue
            runs[name] = run
            figures[name] = setup_figures(run, score_setup(name, run.driver, genesis))
            f = figures[name]
            print(f"{name}: {f['round_seconds']:.2f} s per round, final test accuracy "
                  f"{f['final_test_accuracy'] * 100:.2f}%", flush=True)
        load_after = load_averages()
    except KeyboardInterrupt:
        print("interrupted: every process of the benchmark stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    meta = {"participants": args.participants, "rounds": args.rounds, "flwr_version": args.flwr_version,
            "failed": failed,
            "shared_versions": main_venv_versions(), "workload": workload, "cpus": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": load_after,
            "notes": ["per-round figures: mean over rounds 2..R (round 1 also holds connection set-up)",
                      "peak_rss_mb: largest sum of VmRSS over the setup's processes at one time; sum_vmhwm_mb: "
                      "every process's own peak summed, each process once (deployment mode's per-message "
                      "ClientApp processes each add theirs)",
                      "wire bytes: loopback bytes sent (each byte once)"]}
    if "swarmnode" in runs:
        ref = final_params("swarmnode", runs["swarmnode"].driver)
        for name, run in runs.items():
            if name != "swarmnode":
                figures[name]["final_model_max_abs_param_diff_vs_swarmnode"] = max_param_diff(
                    final_params(name, run.driver), ref)
    summary = summarize(figures, meta)
    print("\n" + format_table(summary))
    print(f"\nload average before {load_before}, after {load_after} ({os.cpu_count()} cores, shared machine)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    if failed:
        return 1
    if args.base_dir is None:
        from swarmnode.node.localnet import remove_tree

        remove_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
