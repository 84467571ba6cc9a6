"""Long-run fuzzing of every decoder of bytes from a peer (the targets of tests/fuzz_targets.py).

For each target, a forked worker feeds it inputs for --seconds: 20% random bytes (half of them behind
the first bytes of a valid encoding), 80% structured mutations of valid encodings and of earlier inputs
that decoded (a small corpus grows as it goes). It counts inputs, decodes, typed errors and crashes:
any exception other than the target's typed errors, a differential mismatch, an input that runs past
--hang-seconds, or the worker dying (e.g. SIGSEGV; the input in flight is kept in shared memory, so it
is saved too, and a new worker carries on). Crashing inputs go to --crash-dir/<target>/ (a .bin and a
.txt with the traceback), at most --keep per distinct crash. Inputs slower than --slow-ms (timed twice,
the faster counts, to discount garbage-collector pauses) are counted and the slowest is saved.

    python scripts/fuzz.py --seconds 90                      # every target, 90 s each
    python scripts/fuzz.py --target codec.update --target p2p.wire --seconds 600 --json out.json
    python scripts/fuzz.py --list
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import multiprocessing
import random
import signal
import struct
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.fuzz_targets import TARGETS, Target, classify, next_input  # noqa: E402

SHARED_BYTES = 4 * 1024 * 1024  # inputs done (u64), the in-flight input's length (u32), then its bytes
_HEAD = struct.Struct("<QI")
CORPUS_LIMIT = 512


class Hang(BaseException):
    """Raised by the per-input alarm (a BaseException, so no decoder's `except Exception` eats it)."""


@dataclass
class Stats:
    target: str
    seconds: float = 0.0
    inputs: int = 0
    decoded: int = 0
    typed_errors: int = 0
    crashes: int = 0
    distinct_crashes: int = 0
    worker_deaths: int = 0
    slow_inputs: int = 0
    slowest_ms: float = 0.0
    corpus: int = 0
    crash_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def _signature(exc: BaseException) -> str:
    """Exception type plus the innermost frame in this repository: one line per distinct crash."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(ROOT) in f.filename]
    where = f"{Path(frames[-1].filename).relative_to(ROOT)}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__} at {where}"


def _save(crash_dir: Path, target: str, kind: str, data: bytes, details: str, saved: dict[str, int],
          keep: int) -> None:
    if saved.get(kind, 0) >= keep:
        return
    saved[kind] = saved.get(kind, 0) + 1
    folder = crash_dir / target
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{hashlib.sha1(kind.encode()).hexdigest()[:8]}-{hashlib.sha1(data).hexdigest()[:12]}"
    (folder / f"{name}.bin").write_bytes(data)
    (folder / f"{name}.txt").write_text(f"{kind}\ninput: {len(data)} bytes\n\n{details}\n")


def _timed(target: Target, data: bytes, hang_seconds: float) -> tuple[str, BaseException | None, float]:
    signal.setitimer(signal.ITIMER_REAL, hang_seconds)
    started = time.perf_counter()
    try:
        outcome, exc = classify(target, data)
    except Hang as hang:
        outcome, exc = "crash", hang
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome, exc, time.perf_counter() - started


def _worker(name: str, seconds: float, seed: int, shared: mmap.mmap, args: argparse.Namespace,
            conn: Any) -> None:
    """Runs in the forked child: fuzz one target until the deadline, send Stats back."""

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"input still running after {args.hang_seconds} s")

    signal.signal(signal.SIGALRM, alarm)
    target = TARGETS[name]
    rng = random.Random(seed)
    seeds = list(target.seeds())
    corpus = list(seeds)
    stats = Stats(name)
    saved: dict[str, int] = {}
    crash_dir = Path(args.crash_dir)
    slowest: tuple[float, bytes] = (0.0, b"")
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        data = next_input(rng, target, corpus)
        if len(data) > SHARED_BYTES - _HEAD.size:
            data = data[: SHARED_BYTES - _HEAD.size]
        _HEAD.pack_into(shared, 0, stats.inputs, len(data))
        shared[_HEAD.size : _HEAD.size + len(data)] = data
        outcome, exc, took = _timed(target, data, args.hang_seconds)
        stats.inputs += 1
        if outcome == "ok":
            stats.decoded += 1
            if len(corpus) < CORPUS_LIMIT:
                corpus.append(data)
            elif rng.random() < 0.1:
                corpus[rng.randrange(len(seeds), CORPUS_LIMIT)] = data
        elif outcome == "typed":
            stats.typed_errors += 1
        else:
            assert exc is not None
            stats.crashes += 1
            kind = _signature(exc)
            stats.crash_kinds[kind] = stats.crash_kinds.get(kind, 0) + 1
            details = "".join(traceback.format_exception(exc))
            _save(crash_dir, name, kind, data, details, saved, args.keep)
        if took * 1000 > args.slow_ms:
            took = min(took, _timed(target, data, args.hang_seconds)[2])  # a GC pause is not the decoder
            if took * 1000 > args.slow_ms:
                stats.slow_inputs += 1
        if took > slowest[0]:
            slowest = (took, data)
    stats.seconds = time.perf_counter() - started
    stats.slowest_ms = round(slowest[0] * 1000, 2)
    stats.corpus = len(corpus)
    stats.distinct_crashes = len(stats.crash_kinds)
    if slowest[1]:
        folder = crash_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "slowest.bin").write_bytes(slowest[1])
    conn.send(asdict(stats))
    conn.close()


def fuzz_target(name: str, args: argparse.Namespace) -> Stats:
    """Fuzz one target for args.seconds, restarting the worker if it dies."""
    ctx = multiprocessing.get_context("fork")
    shared = mmap.mmap(-1, SHARED_BYTES)
    total = Stats(name)
    deadline = time.monotonic() + args.seconds
    seed = args.seed + sum(name.encode())
    saved: dict[str, int] = {}
    while (left := deadline - time.monotonic()) > 0.5:
        receive, send = ctx.Pipe(duplex=False)
        _HEAD.pack_into(shared, 0, 0, 0)
        started = time.monotonic()
        worker = ctx.Process(target=_worker, args=(name, left, seed, shared, args, send), daemon=True)
        worker.start()
        send.close()
        result: dict[str, Any] | None = None
        try:
            result = receive.recv()
        except EOFError:
            pass
        worker.join()
        if result is not None:
            part = Stats(**result)
            total.seconds += part.seconds
            for attr in ("inputs", "decoded", "typed_errors", "crashes", "slow_inputs"):
                setattr(total, attr, getattr(total, attr) + getattr(part, attr))
            total.slowest_ms = max(total.slowest_ms, part.slowest_ms)
            total.corpus = max(total.corpus, part.corpus)
            for kind, n in part.crash_kinds.items():
                total.crash_kinds[kind] = total.crash_kinds.get(kind, 0) + n
            break
        # the worker died: the input in flight is in shared memory, with how many went before it (the
        # other counts of that worker are lost)
        done, length = _HEAD.unpack_from(shared, 0)
        data = bytes(shared[_HEAD.size : _HEAD.size + length])
        total.inputs += done + 1
        total.seconds += time.monotonic() - started
        code = worker.exitcode
        kind = f"worker died: {signal.Signals(-code).name}" if code is not None and code < 0 else f"worker exit {code}"
        total.crashes += 1
        total.worker_deaths += 1
        total.crash_kinds[kind] = total.crash_kinds.get(kind, 0) + 1
        _save(Path(args.crash_dir), name, kind, data, kind, saved, args.keep)
        seed += 1
    total.distinct_crashes = len(total.crash_kinds)
    shared.close()
    return total


def print_table(results: list[Stats]) -> None:
    head = (f"{'target':26} {'seconds':>7} {'inputs':>9} {'inputs/s':>8} {'decoded':>8} {'typed err':>9} "
            f"{'crashes':>7} {'distinct':>8} {'slow':>5} {'slowest ms':>10}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r.target:26} {r.seconds:7.1f} {r.inputs:9d} {r.rate:8.0f} {r.decoded:8d} {r.typed_errors:9d} "
              f"{r.crashes:7d} {r.distinct_crashes:8d} {r.slow_inputs:5d} {r.slowest_ms:10.1f}")
    print("-" * len(head))
    print(f"{'total':26} {sum(r.seconds for r in results):7.1f} {sum(r.inputs for r in results):9d} "
          f"{'':8} {sum(r.decoded for r in results):8d} {sum(r.typed_errors for r in results):9d} "
          f"{sum(r.crashes for r in results):7d}")
    for r in results:
        for kind, n in r.crash_kinds.items():
            print(f"  {r.target}: {n} x {kind}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="repeatable; default all")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    parser.add_argument("--crash-dir", default=str(ROOT / "runs" / "fuzz-crashes"))
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--keep", type=int, default=5, help="inputs saved per distinct crash")
    parser.add_argument("--hang-seconds", type=float, default=10.0, help="an input running longer is a crash")
    parser.add_argument("--slow-ms", type=float, default=100.0, help="an input slower than this is counted")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, target in sorted(TARGETS.items()):
            print(f"{name:26} {target.about}")
        return 0
    names = args.target or sorted(TARGETS)
    torch.set_num_threads(1)  # before the seeds use torch: the workers are forked
    for name in names:
        TARGETS[name].seeds()  # build the seed material once, before forking
    print(f"fuzzing {len(names)} targets for {args.seconds:g} s each (seed {args.seed}); crashes go to {args.crash_dir}",
          flush=True)
    results = []
    for name in names:
        stats = fuzz_target(name, args)
        results.append(stats)
        print(f"  {name}: {stats.inputs} inputs, {stats.crashes} crashes, slowest {stats.slowest_ms:.1f} ms",
              flush=True)
    print()
    print_table(results)
    if args.json:
        payload = json.dumps({"seed": args.seed, "seconds_per_target": args.seconds,
                              "results": [dict(asdict(r), inputs_per_second=round(r.rate, 1)) for r in results]},
                             indent=2)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 1 if any(r.crashes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
