#!/usr/bin/env python3
"""Secure aggregation cost, in one process: bytes each node posts and CPU seconds of each step, per round.

Every participant of a round is simulated here with swarmnode/privacy/secagg.py (no network, no chain): n
nodes deal their round keys to all n, build K(r), mask an update of --coords fixed-point coordinates, reveal,
and one node unmasks the sum, which is checked against the plain integer sum. Plain aggregation (summing the
n int64 vectors) is the baseline. Then the dropout table: d of the n drop, half before committing (in K(r),
no masked input) and half after (committed, never reveal); at the default threshold t = floor(n/2) + 1 the
sum must come out for d <= n - t and be reported unrecoverable, without an exception, beyond. Last, hostile
revealers: h reveals of random shares posted first in chain order, which reconstruction outvotes while
h <= (n - t) // 2 (Reed-Solomon decoding); one more makes the sum unrecoverable, and the row shows what
that costs the unmasking node.

    python scripts/bench_secagg.py --out bench-results/secagg.json                 # n = 10 and n = 100
    python scripts/bench_secagg.py --n 100 --coords 1200000 --mask-nodes 3          # a bigger model

CPU seconds are time.process_time() deltas around one call on one thread (ChaCha20 and numpy here run on
one core). The update size defaults to the seed model's (207,018 coordinates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmnode.privacy import secagg as sa  # noqa: E402

CHAIN, ROUND = 31337, 1
SEED_MODEL_COORDS = 207_018


def cpu(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - start


def layout(coords: int) -> dict[str, tuple[int, ...]]:
    """A few tensors adding up to `coords` (the codec and the masks see names in sorted order)."""
    bias = min(1000, coords // 4)
    return {"fc1.weight": (coords - 2 * bias,), "fc1.bias": (bias,), "fc2.bias": (bias,)}


def default_drops(n: int, t: int) -> list[int]:
    edge = n - t
    if n <= 20:
        return list(range(0, edge + 2))
    return sorted({0, 1, n // 10, n // 4, edge - 1, edge, edge + 1})


class Round:
    """One simulated round: every node's keys and secrets, K(r) and the masked inputs."""

    def __init__(self, n: int, coords: int, mask_nodes: int, rng: np.random.Generator) -> None:
        self.n, self.indices = n, list(range(n))
        self.node_secrets = {i: os.urandom(32) for i in self.indices}
        self.share = {i: sa.share_keypair(self.node_secrets[i], CHAIN) for i in self.indices}
        recipients = [(i, self.share[i][1]) for i in self.indices]
        self.t = sa.threshold_for(n)
        self.keys_cpu, posts, self.secrets = [], [], {}
        for i in self.indices:
            (post, secret), dt = cpu(sa.make_round_keys, self.node_secrets[i], i, CHAIN, ROUND, recipients, self.t)
            self.keys_cpu.append(dt)
            posts.append(post)
            self.secrets[i] = secret
        self.posts = posts
        (self.keyset, rejected), self.keyset_cpu = cpu(sa.build_keyset, CHAIN, ROUND, posts,
                                                       {i: self.share[i][1] for i in self.indices})
        assert not rejected, rejected
        self.layout = layout(coords)
        lim = 2**23 - 1  # the codec's quantized magnitudes
        self.x = {i: {k: rng.integers(-lim, lim + 1, size=s, dtype=np.int64) for k, s in self.layout.items()}
                  for i in self.indices}
        self.mask_cpu: list[float] = []
        self.y: dict[int, dict[str, np.ndarray]] = {}
        timed = set(np.linspace(0, n - 1, min(mask_nodes, n)).round().astype(int).tolist())
        for i in self.indices:
            if i in timed:
                self.y[i], dt = cpu(sa.mask, self.x[i], self.secrets[i], self.keyset)
                self.mask_cpu.append(dt)
            else:
                self.y[i] = sa.mask(self.x[i], self.secrets[i], self.keyset)

    def plain_sum(self, members: list[int]) -> tuple[dict[str, np.ndarray], float]:
        def add() -> dict[str, np.ndarray]:
            return {k: np.sum([self.x[u][k] for u in members], axis=0) for k in self.layout}
        return cpu(add)

    def scenario(self, before: list[int], after: list[int], hostile: int = 0) -> dict[str, Any]:
        committed = [u for u in self.indices if u not in before]
        alive = [u for u in committed if u not in after]
        reveal_cpu, reveals = [], []
        for v in alive:
            data, dt = cpu(sa.reveal, v, self.share[v][0], self.keyset, committed)
            reveal_cpu.append(dt)
            reveals.append((v, data))
        forged = []
        for v in alive[:hostile]:  # hostile revealers post random shares first; their honest reveal is never made
            entries = tuple((u, sa.SELF_SEED if u in committed else sa.MASK_KEY,
                             int.from_bytes(os.urandom(32), "big")) for u in self.keyset.indices)
            forged.append((v, sa.encode_reveal(sa.Reveal(CHAIN, ROUND, v, entries))))
        honest = [(v, data) for v, data in reveals if v not in dict(forged)]
        masked = {u: self.y[u] for u in committed}
        result, unmask_cpu = cpu(sa.unmask_sum, masked, self.keyset, committed, forged + honest, self.layout)
        exact = None
        if result.ok:
            want, _ = self.plain_sum(committed)
            exact = all(np.array_equal(result.sum[k], want[k]) for k in want)
        return {"dropped_before_commit": len(before), "dropped_after_commit": len(after), "hostile_revealers": hostile,
                "committed": len(committed), "revealers": len(alive), "sum_recovered": result.ok, "exact": exact,
                "unrecoverable": list(result.unrecoverable), "reason": result.reason,
                "reveal_cpu_s_mean": statistics.mean(reveal_cpu) if reveal_cpu else 0.0,
                "reveal_bytes": len(reveals[0][1]) if reveals else 0, "unmask_cpu_s": unmask_cpu,
                "methods": sorted({s.detail.split(" (")[0] for s in result.secrets.values()})}


def bench(n: int, coords: int, mask_nodes: int, drops: list[int] | None, hostile: list[int] | None
          ) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    wall = time.perf_counter()
    rnd = Round(n, coords, mask_nodes, rng)
    base = rnd.scenario([], [])
    assert base["exact"], base
    _, plain_cpu = rnd.plain_sum(rnd.indices)
    bundle = len(rnd.posts[0].bundle)
    post_bytes = 32 + 32 + bundle  # s_pk, commit, bundle
    out: dict[str, Any] = {
        "n": n, "threshold": rnd.t, "coords": coords,
        "bytes_per_node": {"share_key_once": 32, "round_keys": post_bytes, "bundle": bundle,
                           "reveal": base["reveal_bytes"], "keys_plus_reveal": post_bytes + base["reveal_bytes"],
                           "masked_update": 4 * coords, "plain_update": 4 * coords},
        "cpu_s_per_node": {"make_round_keys": statistics.mean(rnd.keys_cpu), "build_keyset": rnd.keyset_cpu,
                           "mask": statistics.mean(rnd.mask_cpu), "mask_max": max(rnd.mask_cpu),
                           "masks_timed": len(rnd.mask_cpu), "reveal": base["reveal_cpu_s_mean"],
                           "unmask_sum_no_drops": base["unmask_cpu_s"], "plain_sum": plain_cpu},
        "dropouts": [], "hostile": [],
    }
    for d in drops if drops is not None else default_drops(n, rnd.t):
        before = rnd.indices[n - d : n - d + d // 2]
        after = rnd.indices[n - d + d // 2 :]
        out["dropouts"].append(rnd.scenario(before, after))
    for h in hostile if hostile is not None else sorted({1, (n - rnd.t) // 2, (n - rnd.t) // 2 + 1}):
        if 0 < h < n:
            out["hostile"].append(rnd.scenario([], [], hostile=h))
    out["wall_s"] = time.perf_counter() - wall
    return out


def print_report(r: dict[str, Any]) -> None:
    b, c = r["bytes_per_node"], r["cpu_s_per_node"]
    print(f"\nn = {r['n']}, threshold t = {r['threshold']}, {r['coords']:,} coordinates")
    print(f"  {'step':<34}{'bytes posted':>14}{'CPU s':>12}")
    rows = [("share key (once, not per round)", b["share_key_once"], None),
            ("make_round_keys (s_pk+commit+bundle)", b["round_keys"], c["make_round_keys"]),
            ("build_keyset (K(r), every node)", None, c["build_keyset"]),
            (f"mask (mean of {c['masks_timed']}, max {c['mask_max']:.3f})", b["masked_update"], c["mask"]),
            ("reveal", b["reveal"], c["reveal"]),
            ("unmask_sum (no dropouts)", None, c["unmask_sum_no_drops"]),
            ("plain: update / sum of n vectors", b["plain_update"], c["plain_sum"])]
    for name, size, sec in rows:
        print(f"  {name:<34}{'' if size is None else f'{size:,}':>14}{'' if sec is None else f'{sec:.4f}':>12}")
    overhead = b["keys_plus_reveal"] / b["plain_update"]
    print(f"  secagg bytes beyond the update: {b['keys_plus_reveal']:,} ({overhead:.1%} of the plain update)")
    print(f"  {'dropped (before+after commit)':<32}{'revealers':>10}{'sum':>6}{'exact':>7}{'unmask CPU s':>14}  how")
    for s in r["dropouts"] + r["hostile"]:
        what = f"{s['dropped_before_commit']}+{s['dropped_after_commit']}"
        if s["hostile_revealers"]:
            what = f"0+0, {s['hostile_revealers']} hostile revealers"
        how = s["reason"] or ", ".join(s["methods"])
        print(f"  {what:<32}{s['revealers']:>10}{'yes' if s['sum_recovered'] else 'NO':>6}"
              f"{str(s['exact']) if s['exact'] is not None else '-':>7}{s['unmask_cpu_s']:>14.3f}  {how[:70]}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="10,100", help="participant counts, comma-separated (max 128)")
    p.add_argument("--coords", type=int, default=SEED_MODEL_COORDS)
    p.add_argument("--mask-nodes", type=int, default=128, help="how many nodes' masking to time (all are masked)")
    p.add_argument("--drops", default=None, help="drop counts, comma-separated (default: around n - t)")
    p.add_argument("--hostile", default=None,
                   help="hostile revealer counts, comma-separated (default: 1, (n - t) // 2 and one more)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    drops = [int(d) for d in args.drops.split(",")] if args.drops else None
    hostile = [int(h) for h in args.hostile.split(",") if h] if args.hostile is not None else None
    results = []
    for n in (int(v) for v in args.n.split(",")):
        r = bench(n, args.coords, args.mask_nodes, drops, hostile)
        print_report(r)
        results.append(r)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
