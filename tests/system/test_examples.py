"""The two local-data examples, end to end with real daemons started through the CLI, each holding only
its own data: "hospitals" (one CSV per daemon) and "image folders" (one ImageFolder tree per daemon).
Every daemon refuses other data than its own schema allows, so reaching final rounds means each trained
through the local-data path; the final model is the same on every node, the committers' held-out scores
are on chain, and the swarm's model is compared with each node alone on a test set none of them holds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import example_hospitals  # noqa: E402
import example_image_folders  # noqa: E402
from examples_common import compare  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.long  # 30 rounds and four single-hospital baselines: about 3-6 minutes, in `make soak`
def test_hospitals_swarm_beats_every_hospital_alone(tmp_path: Path) -> None:
    example_hospitals.prepare(tmp_path, nodes=4, seed=7)
    files = sorted(tmp_path.glob("hospital-*.csv"), key=lambda p: int(p.stem.split("-")[1]))
    result = compare(tmp_path, files, tmp_path / "test.csv", rounds=30, holdout_fraction=0.2)
    print(result)
    assert result["run"]["agree"], "the nodes hold different final models"
    assert len(result["run"]["held_out_accuracy"]) >= 3, "held-out scores missing from the last round's commits"
    assert result["swarm"] > max(result["alone"]), result


@pytest.mark.long  # 6 rounds of 3 daemons plus three single-node baselines: about 1 minute, in `make soak`
def test_image_folders_train_through_the_folder_loader(tmp_path: Path) -> None:
    example_image_folders.prepare(tmp_path, nodes=3, per_node=400, test_images=1000, dominance=0.8, seed=5)
    trees = sorted(tmp_path.glob("node-*"), key=lambda p: int(p.name.split("-")[1]))
    result = compare(tmp_path, trees, tmp_path / "test", rounds=6, holdout_fraction=0.2)
    print(result)
    assert result["run"]["agree"], "the nodes hold different final models"
    assert result["run"]["held_out_accuracy"], "held-out scores missing from the last round's commits"
    assert result["swarm"] > max(result["alone"]), result
    # peak RSS is measured and printed, not asserted: 0.9 GB per daemon against a 600 MB target that
    # torch alone rules out here (506 MB on import; README "Local data", Memory)
    print("peak RSS per daemon (MB):", result["run"]["peak_rss_mb"])
