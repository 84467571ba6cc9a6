"""scripts/bench_vs_flower.py without Flower: the workload both sides read, the Flower side's client round
against swarmnode's own, the process-tree meter, and the figures, targets and table it prints."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "flower_app"))

from swarmbench_flower import workload as flower_workload  # noqa: E402

from consensus.genesis import load_genesis  # noqa: E402
from swarmnode.experiment import build_clients, local_update  # noqa: E402
from swarmnode.learning.data import locate_dataset  # noqa: E402
from swarmnode.learning.evaluate import evaluate  # noqa: E402
from swarmnode.learning.tasks import Task  # noqa: E402


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_vs_flower", ROOT / "scripts" / "bench_vs_flower.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["bench_vs_flower"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load_script()


# ---------------------------------------------------------------- the workload


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """The genesis and workload the benchmark writes for its defaults: 10 participants (3 rounds here)."""
    base = tmp_path_factory.mktemp("bench-flower")
    args = argparse.Namespace(genesis=bench.SEED_GENESIS, participants=10, rounds=3)
    genesis, workload = bench.prepare(args, base)
    return genesis, workload, base / "workload.json"


def test_the_workload_is_the_genesis_the_swarm_runs(prepared: tuple[Path, dict, Path]) -> None:
    genesis_path, workload, workload_path = prepared
    genesis, seed = load_genesis(genesis_path), load_genesis(bench.SEED_GENESIS)
    assert json.loads(workload_path.read_text()) == workload
    assert workload["task"] == genesis.task  # the Flower side reads exactly the daemons' task table
    assert genesis.task["rule"] == "fedavg" and genesis.task["rule_params"] == {}
    # only the rule differs from genesis/seed-10.toml's task; its rounds, chain and validators are the same
    changed = {k for k in seed.task if seed.task[k] != genesis.task[k]}
    assert changed == {"rule", "rule_params"}
    assert genesis.rounds == seed.rounds and genesis.chain_id == seed.chain_id
    assert genesis.validators == seed.validators and genesis.consensus == seed.consensus
    assert workload["participants"] == len(genesis.validators) == 10 and workload["rounds"] == 3
    assert workload["max_samples"] == genesis.rounds.max_samples
    # the Flower side parses it into the same Task and starts from the genesis model
    flower = flower_workload.Workload.from_dict(workload)
    assert flower.task == Task.from_dict(genesis.task)
    assert workload["genesis_model_hash"] == "0x" + genesis.genesis_model_hash.hex()
    flower_workload.initial_model(str(workload_path))  # raises WorkloadError on another initial model


def test_a_workload_with_another_initial_model_is_refused(prepared: tuple[Path, dict, Path], tmp_path: Path) -> None:
    _, workload, _ = prepared
    bad = tmp_path / "workload.json"
    bad.write_text(json.dumps({**workload, "genesis_model_hash": "0x" + "00" * 32}))
    with pytest.raises(flower_workload.WorkloadError, match="not start from the same model"):
        flower_workload.initial_model(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"task": workload["task"]}))
    with pytest.raises(flower_workload.WorkloadError, match="participants"):
        flower_workload.load(str(broken))


@pytest.mark.skipif(locate_dataset("fashion-mnist") is None, reason="Fashion-MNIST is not on this machine")
def test_the_flower_client_round_is_a_swarmnode_local_update(prepared: tuple[Path, dict, Path],
                                                            tmp_path: Path) -> None:
    """Bit for bit: the update a Flower ClientApp returns is the one a daemon computes for that client and
    round (same partition, seed, steps and thread count); a smaller share keeps the test short."""
    _, workload, _ = prepared
    small = {**workload, "task": {**workload["task"], "samples_per_client": 200, "local_steps": 3}}
    path = tmp_path / "small.json"
    path.write_text(json.dumps(small))
    task = Task.from_dict(small["task"])
    params = flower_workload.initial_model(str(path))  # the same model: the share size does not change it
    out = flower_workload.client_round(str(path), 2, 5, params)
    client = flower_workload.clients(str(path))[2]
    expected_client = build_clients(task, flower_workload._dataset(task.dataset, None))[2]
    assert torch.equal(client.train.labels, expected_client.train.labels)
    ref = local_update(task, params, expected_client.train, 5, 2)
    for name, p in params.items():
        assert torch.equal(out.local[name] - p, ref.result.delta[name]), name
    assert out.num_samples == min(ref.result.num_samples, small["max_samples"]) == len(expected_client.train)
    assert out.held_out_accuracy == evaluate(task.model_spec(), params, expected_client.val).accuracy
    other = flower_workload.client_round(str(path), 2, 6, params)  # another round trains on other batches
    assert not all(torch.equal(other.local[n], out.local[n]) for n in params)


def test_flower_requirements_pin_the_main_venvs_versions() -> None:
    versions = bench.main_venv_versions()
    reqs = bench.flower_requirements("1.42.0", versions)
    assert reqs[0] == "flwr[simulation]==1.42.0"
    assert f"torch=={torch.__version__.split('+')[0]}" in reqs  # the same kernels on both sides
    assert set(reqs[1:]) == {f"{n}=={versions[n]}" for n in bench.SHARED_PACKAGES}


def test_flower_run_arguments() -> None:
    sim = bench.flower_run_args(Path("/app"), "/w.json", Path("/out"), True, 7)
    dep = bench.flower_run_args(Path("/app"), "/w.json", Path("/out"), False, 7)
    assert dep == ["run", "/app", "bench", "--run-config", 'workload="/w.json" out-dir="/out"']
    assert sim[:5] == dep and sim[5] == "--federation-config" and "num-supernodes=7" in sim[6]
    assert bench.flower_connection(9093) == {"superlink": {"default": "bench", "bench": {
        "address": "127.0.0.1:9093", "insecure": True}}}


# ---------------------------------------------------------------- the meter


def test_process_tree_finds_grandchildren_and_their_cpu() -> None:
    code = ("import subprocess, time\n"
            "p = subprocess.Popen([__import__('sys').executable, '-c', 'while True: pass'])\n"
            "time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tree = bench.process_tree(child.pid)
            if len(tree) == 2 and tree[1].cpu >= 0.3:
                break
            time.sleep(0.1)
        assert [s.pid for s in tree][0] == child.pid and tree[1].ppid == child.pid
        assert tree[1].cpu >= 0.3  # the busy grandchild's own CPU is read
        assert bench.process_tree(child.pid + 10**7) == []
    finally:
        for s in bench.process_tree(child.pid)[::-1]:
            subprocess.run(["kill", "-9", str(s.pid)], check=False)
        child.wait(10)


def test_interpolate() -> None:
    S = bench.Sample
    samples = [S(10.0, 1.0, 0.0, 100, 1), S(12.0, 5.0, 0.0, None, 1), S(14.0, 9.0, 0.0, 300, 1)]
    assert bench.interpolate(samples, 11.0, lambda s: s.cpu) == 3.0
    assert bench.interpolate(samples, 9.0, lambda s: s.cpu) == 1.0
    assert bench.interpolate(samples, 99.0, lambda s: s.cpu) == 9.0
    assert bench.interpolate(samples, 12.0, lambda s: s.lo_tx) == 200.0  # missing readings are skipped
    assert bench.interpolate([], 1.0, lambda s: s.cpu) is None


def _run(name: str, ends: list[float], cpu_per_s: float, bytes_per_s: float) -> object:
    samples = [bench.Sample(t, cpu_per_s * t, 100.0 + t, int(bytes_per_s * t), 3) for t in range(0, 41)]
    return bench.SetupRun(name, {"t_start": 4.0, "round_ends": ends}, samples,
                          {(1, 0): 500.0, (2, 0): 700.0}, 123.0, 40.0, "test")


def test_setup_figures() -> None:
    f = bench.setup_figures(_run("x", [14.0, 18.0, 26.0], 2.0, 1000.0), [0.5, 0.6, 0.7])
    assert [r["seconds"] for r in f["rounds"]] == [10.0, 4.0, 8.0]
    assert f["round_seconds"] == 6.0 and f["first_round_seconds"] == 10.0  # the first round is left out
    assert f["cpu_seconds_per_round"] == pytest.approx(12.0)  # 2 CPU-s per s over 12 s, 2 rounds
    assert f["wire_bytes_per_round"] == pytest.approx(6000.0)
    assert f["cpu_seconds_total"] == 123.0 and f["peak_rss_mb"] == 140.0 and f["sum_vmhwm_mb"] == 1200.0
    assert f["startup_seconds"] == 4.0 and f["final_test_accuracy"] == 0.7
    one = bench.setup_figures(_run("x", [14.0], 2.0, 1000.0), [0.5])
    assert one["round_seconds"] == 10.0 and one["cpu_seconds_per_round"] == pytest.approx(20.0)


# ---------------------------------------------------------------- targets and table


def _figures(seconds: float, accs: list[float]) -> dict:
    return {"rounds": [{"round": i + 1, "seconds": seconds, "test_accuracy": a} for i, a in enumerate(accs)],
            "round_seconds": seconds, "cpu_seconds_per_round": 2.0 * seconds, "cpu_seconds_total": 100.0,
            "peak_rss_mb": 2048.0, "sum_vmhwm_mb": 4096.0, "wire_bytes_per_round": 8e6, "wire_scope": "test",
            "final_test_accuracy": accs[-1]}


def test_summary_meets_the_targets_only_when_they_are_met() -> None:
    accs = [0.50, 0.60, 0.70]
    met = bench.summarize({"flower-deployment": _figures(50.0, accs), "flower-simulation": _figures(3.0, accs),
                           "swarmnode": _figures(4.0, [0.505, 0.60, 0.70])}, {"rounds": 3})
    t = met["targets"]
    assert t["speedup_vs_flower_deployment"]["value"] == 12.5 and t["speedup_vs_flower_deployment"]["met"]
    assert t["slowdown_vs_flower_simulation"]["value"] == pytest.approx(4 / 3)
    assert t["slowdown_vs_flower_simulation"]["met"] and t["equal_accuracy"]["met"]
    assert t["accuracy_points_max_diff_vs_flower-simulation"] == pytest.approx(0.5)

    slow = bench.summarize({"flower-deployment": _figures(30.0, accs), "flower-simulation": _figures(3.0, accs),
                            "swarmnode": _figures(5.0, accs)}, {})
    assert slow["targets"]["speedup_vs_flower_deployment"] == {"value": 6.0, "target": ">= 10x", "met": False}
    assert not slow["targets"]["slowdown_vs_flower_simulation"]["met"]  # 1.67x

    unequal = bench.summarize({"flower-simulation": _figures(3.0, accs),
                               "swarmnode": _figures(1.0, [0.50, 0.62, 0.70])}, {})
    assert not unequal["targets"]["equal_accuracy"]["met"]  # 2 points apart in round 2
    assert not unequal["targets"]["slowdown_vs_flower_simulation"]["met"]  # fast, but not at equal accuracy
    assert bench.summarize({"flower-simulation": _figures(3.0, accs)}, {})["targets"] == {}


def test_table_shows_every_setup_round_and_target() -> None:
    accs = [0.5, 0.6]
    summary = bench.summarize({"flower-deployment": _figures(50.0, accs), "flower-simulation": _figures(3.0, accs),
                               "swarmnode": _figures(5.0, accs)}, {})
    text = bench.format_table(summary)
    lines = text.splitlines()
    assert lines[1].split()[:3] == ["flower-deployment", "50.00", "100.0"]
    assert lines[3].split()[:2] == ["swarmnode", "5.00"] and "8.00" in lines[3] and "60.00%" in lines[3]
    assert "speedup_vs_flower_deployment: 10.00x (target >= 10x): MET" in text
    assert "slowdown_vs_flower_simulation: 1.67x (target <= 1.5x): NOT MET" in text
    assert "equal accuracy" in text and text.count("\n    2 ") == 1


def test_a_failed_setup_is_reported_not_compared() -> None:
    accs = [0.5, 0.6]
    summary = bench.summarize({"flower-simulation": _figures(3.0, accs), "swarmnode": _figures(4.0, accs)},
                              {"failed": {"flower-deployment": "Flower is thrashing: 93 ClientApp processes"}})
    assert "speedup_vs_flower_deployment" not in summary["targets"]
    assert summary["targets"]["flower-deployment_failed"].startswith("Flower is thrashing")
    text = bench.format_table(summary)
    assert "flower-deployment  FAILED: Flower is thrashing: 93 ClientApp processes" in text.splitlines()[3]
