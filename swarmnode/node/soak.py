"""Long runs of a local swarm (real daemons through the CLI): rounds, round times, memory, log health.

`run_soak` starts N daemons on a genesis with dev keys, waits until `rounds` rounds are final, and
measures what a swarm that runs for weeks must keep flat: wall-clock time per round, every daemon's
resident memory over the run, and its log (no unhandled exception, no sender-limit). Used by
`scripts/soak.py` (`make soak`, 200 rounds) and by the shorter soak test in `make test`.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swarmnode.node.localnet import LocalSwarm, SwarmTimeout, make_genesis, wait_for

BAD_LOG_LINES = re.compile(r"Traceback|sender-limit|MODEL_MISMATCH|event=gave_up|Error in sys.excepthook")


def status_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A memory figure of a process in MB from Linux /proc (VmRSS: resident now; VmHWM: peak resident),
    None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_mb(pid: int) -> dict[str, float] | None:
    """VmRSS, RssAnon and RssFile of a process in MB (one read of /proc/<pid>/status), None when it is gone.

    RssAnon is the process's private memory: what a leak grows. RssFile is file pages mapped in, mostly the
    shared libraries plus LevelDB's table files, which LevelDB mmaps (up to 1000 of them) and reads in
    whole at every compaction: it tracks the chain database's size on disk (~10 MB per 100 rounds of a
    4-node tiny swarm) and is clean page cache the kernel reclaims, not a leak."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out if len(out) == 3 else None


def bad_log_lines(text: str, limit: int = 20) -> list[str]:
    return [line for line in text.splitlines() if BAD_LOG_LINES.search(line)][:limit]


@dataclass
class SoakResult:
    nodes: int
    rounds_run: int
    rounds_finalized: int
    wall_seconds: float
    round_seconds: list[float]  # wall clock between consecutive finalizations, as node 0 saw them
    rss_mb: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # node -> [(round, MB)]: VmRSS
    anon_mb: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # RssAnon: judged for leaks
    file_mb: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # RssFile (LevelDB's mmaps)
    # the chain read cache's accounted bytes (values plus a per-entry estimate; bounded, see consensus/db.py),
    # read over RPC at the same rounds: how much of RssAnon's trend is that cache filling up
    cache_mb: dict[int, list[tuple[int, float]]] = field(default_factory=dict)
    agree: bool = True  # every node's chain has the same final hash for every round
    bad_lines: dict[int, list[str]] = field(default_factory=dict)

    @property
    def longest_round(self) -> float:
        return max(self.round_seconds) if self.round_seconds else 0.0

    @property
    def median_round(self) -> float:
        return statistics.median(self.round_seconds) if self.round_seconds else 0.0

    def memory_growth_mb(self, warmup: int = 10, series: str = "anon") -> dict[int, float]:
        """Per node: private memory (RssAnon; series "rss" or "file" for the others) at the end minus at
        the first sample after `warmup` rounds."""
        out = {}
        for i, samples in self._series(series).items():
            later = [mb for r, mb in samples if r >= warmup]
            if len(later) >= 2:
                out[i] = later[-1] - later[0]
        return out

    def memory_slope(self, series: str = "anon") -> dict[int, float]:
        """Per node: private memory (RssAnon) in MB per 100 rounds, least-squares over the samples after the
        first quarter of the run (caches and the allocator's arenas fill during the first rounds; a leak
        keeps growing after). VmRSS would also count LevelDB's mapped tables, which grow with the chain.
        Series "cache" is the chain read cache's own trend; "anon-less-cache" is RssAnon minus that cache
        at each sample (what grows besides the cache)."""
        out = {}
        start = max(10, self.rounds_run // 4)
        for i, samples in self._series(series).items():
            pts = [(r, mb) for r, mb in samples if r >= start]
            if len(pts) < 3:
                continue
            mean_r = statistics.fmean(r for r, _ in pts)
            mean_mb = statistics.fmean(mb for _, mb in pts)
            var = sum((r - mean_r) ** 2 for r, _ in pts)
            out[i] = 100 * sum((r - mean_r) * (mb - mean_mb) for r, mb in pts) / var
        return out

    def _series(self, name: str) -> dict[int, list[tuple[int, float]]]:
        if name == "anon-less-cache":
            out = {}
            for i, samples in self.anon_mb.items():
                cache = dict(self.cache_mb.get(i, []))
                out[i] = [(r, mb - cache[r]) for r, mb in samples if r in cache]
            return out
        return {"rss": self.rss_mb, "anon": self.anon_mb, "file": self.file_mb, "cache": self.cache_mb}[name]

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(longest_round=self.longest_round, median_round=self.median_round,
                 memory_growth_mb=self.memory_growth_mb(), memory_mb_per_100_rounds=self.memory_slope(),
                 rss_mb_per_100_rounds=self.memory_slope("rss"),
                 file_mb_per_100_rounds=self.memory_slope("file"),
                 cache_mb_per_100_rounds=self.memory_slope("cache"),
                 anon_less_cache_mb_per_100_rounds=self.memory_slope("anon-less-cache"),
                 memory_start_end_mb={i: (s[0][1], s[-1][1]) for i, s in self.rss_mb.items() if s})
        return d


def run_soak(base: Path, *, rounds: int, nodes: int = 4, task: str = "tiny", commit_window_s: int = 30,
             round_timeout: float = 120.0, sample_every: int = 5, env: dict[str, str] | None = None,
             progress: Any = None) -> SoakResult:
    """Run `nodes` validators for `rounds` rounds; raises SwarmTimeout if a round does not finalize."""
    genesis, keys = make_genesis(base, nodes, task, commit_window_s=commit_window_s)
    extra_env = {"OMP_NUM_THREADS": "1", **(env or {})}
    t0 = time.monotonic()
    with LocalSwarm(base, genesis, keys, extra_env=extra_env) as swarm:
        for i in range(nodes):
            swarm.init_node(i)
        swarm.start_all(list(range(nodes)))
        def per_node() -> dict[int, list[tuple[int, float]]]:
            return {i: [] for i in range(nodes)}

        result = SoakResult(nodes, rounds, 0, 0.0, [], rss_mb=per_node(), anon_mb=per_node(), file_mb=per_node(),
                            cache_mb=per_node())
        last_final = time.monotonic()
        for r in range(rounds):
            def final(want: int = r) -> bool:
                info = swarm.try_rpc(0, "swarm_getRound", want)
                for i in range(nodes):
                    if not swarm.nodes[i].alive():
                        raise RuntimeError(f"node{i} died:\n{swarm.tail(i)}")
                return bool(info and info["finalized"])

            wait_for(final, round_timeout, f"round {r} to finalize (see {base}/node0.log)\n{swarm.tail(0)}",
                     interval=0.1)
            now = time.monotonic()
            if r > 0:
                result.round_seconds.append(now - last_final)
            last_final = now
            result.rounds_finalized = r + 1
            if r % sample_every == 0 or r == rounds - 1:
                for i in range(nodes):
                    proc = swarm.nodes[i].proc
                    mem = memory_mb(proc.pid) if proc is not None else None
                    if mem is not None:
                        result.rss_mb[i].append((r, mem["VmRSS"]))
                        result.anon_mb[i].append((r, mem["RssAnon"]))
                        result.file_mb[i].append((r, mem["RssFile"]))
                        cache = (swarm.try_rpc(i, "swarm_node") or {}).get("chainCache")
                        if cache is not None:
                            result.cache_mb[i].append((r, cache["bytes"] / (1 << 20)))
                if progress is not None:
                    progress(r, result)
        result.wall_seconds = time.monotonic() - t0
        reference = swarm.final_hashes(0)
        for i in range(1, nodes):
            theirs = wait_for(lambda i=i: (h := swarm.final_hashes(i)) and len(h) >= rounds and h, 60,
                              f"node{i} to have {rounds} final rounds")
            if any(theirs[q] != reference[q] for q in range(rounds)):
                result.agree = False
        swarm.close()
        for i in range(nodes):
            lines = bad_log_lines(swarm.nodes[i].log_path.read_text(errors="replace"))
            if lines:
                result.bad_lines[i] = lines
    return result


__all__ = ["SoakResult", "SwarmTimeout", "bad_log_lines", "memory_mb", "run_soak", "status_mb"]
