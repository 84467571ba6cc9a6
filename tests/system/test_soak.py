"""A shorter soak in `make test`: 4 daemons (real processes through the CLI) on the tiny task for 80
rounds, past the per-sender pool limit (64 pending transactions, 2 per round: the swarm stopped at round
32 while included transactions counted against it). Every round finalizes, every node agrees with the
chain, private memory does not grow, no log holds an unhandled exception. `make soak` runs 200 rounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarmnode.node.soak import run_soak

pytestmark = [pytest.mark.slow, pytest.mark.long]  # make soak, not make test

ROUNDS = 80
# private memory (RssAnon) after the first quarter (caches filling); leaking a round's updates is ~300.
# Mapped files (RssFile: LevelDB's table files, the size of the chain on disk) are reported, not judged.
MAX_MB_PER_100_ROUNDS = 40.0


def test_eighty_rounds_without_a_stall_or_a_leak(tmp_path: Path) -> None:
    env = {"SWARMNODE_DATA": os.environ.get("SWARMNODE_DATA", "/usr/share/datasets/fashion-mnist")}
    res = run_soak(tmp_path, rounds=ROUNDS, env=env)
    print(f"\nsoak: {res.rounds_finalized} rounds in {res.wall_seconds:.0f} s, median round "
          f"{res.median_round:.2f} s, longest {res.longest_round:.2f} s, memory growth after round 10 "
          f"{res.memory_growth_mb()}, MB per 100 rounds {res.memory_slope()} (RssAnon), "
          f"{res.memory_slope('file')} (RssFile)")
    assert res.rounds_finalized == ROUNDS
    assert res.agree, "a node's chain disagrees with node0's"
    assert not res.bad_lines, res.bad_lines
    slope = res.memory_slope()
    assert len(slope) == 4 and all(g <= MAX_MB_PER_100_ROUNDS for g in slope.values()), slope
    assert res.longest_round < 30, f"a round took {res.longest_round:.1f} s (the commit window is 30 s)"
