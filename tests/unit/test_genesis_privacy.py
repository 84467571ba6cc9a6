"""The genesis [privacy] table: what reaches SwarmRounds (both sides of each bound), the genesis hash, and
`genesis new`'s privacy flags (noise multiplier pinned, update-norm bound raised, rule for masked sums)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from consensus.contracts import SWARM_ROUNDS_ADDRESS, load_artifact
from consensus.devtools import DEV_ROUNDS, dev_genesis
from consensus.genesis import GenesisError, load_genesis, privacy_params
from consensus.genesis_block import genesis_hash, genesis_state
from swarmnode.privacy.config import PrivacyConfig, PrivacyConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evm_harness import Contract, EvmHarness  # noqa: E402


def test_privacy_reaches_the_contract_and_the_genesis_hash() -> None:
    g = dataclasses.replace(dev_genesis(1, 1, rounds=dataclasses.replace(DEV_ROUNDS, min_participants=2)), privacy={"dp": "participant", "epsilon": 3.5, "delta": 1e-6,
                                                        "secure_aggregation": True, "secagg_reveal_s": 12})
    rounds = Contract(SWARM_ROUNDS_ADDRESS, load_artifact("SwarmRounds")["abi"])
    evm = EvmHarness(g.chain_id, genesis_state(g), [rounds], genesis_time=g.genesis_time)
    got = {n: evm.call(rounds, n) for n in ("epsilonBudget", "secureAggregation")}
    assert got == {"epsilonBudget": 3_500_000, "secureAggregation": True}
    assert evm.call(rounds, "revealDeadline", 0) == g.genesis_time + g.rounds.commit_window_s + 12
    assert genesis_hash(g) != genesis_hash(dev_genesis(1, 1))
    assert genesis_hash(g) != genesis_hash(dataclasses.replace(g, privacy={**g.privacy, "epsilon": 3.0}))


@pytest.mark.parametrize(("table", "field"), [
    ({"dp": "participant"}, "privacy.epsilon"),
    ({"dp": "participant", "epsilon": 0}, "privacy.epsilon"),
    ({"dp": "participant", "epsilon": 1000.0001}, "privacy.epsilon"),
    ({"dp": "participant", "epsilon": True}, "privacy.epsilon"),
    ({"dp": "participant", "epsilon": 1, "delta": 1}, "privacy.delta"),
    ({"dp": "participant", "epsilon": 1, "delta": 0}, "privacy.delta"),
    ({"secure_aggregation": "yes"}, "privacy.secure_aggregation"),
    ({"secure_aggregation": True, "secagg_reveal_s": 0}, "privacy.secagg_reveal_s"),
    ({"secure_aggregation": True, "secagg_reveal_s": 3601}, "privacy.secagg_reveal_s"),
    ({"dp": 3}, "privacy.dp"),
])
def test_bad_privacy_fields_are_named(table: dict, field: str) -> None:
    with pytest.raises(GenesisError, match=field.replace(".", r"\.")):
        privacy_params(table)


def test_privacy_bounds_accept_their_edges() -> None:
    assert privacy_params({"dp": "example", "epsilon": 1000, "delta": 0.999}).epsilon_budget_micro == 10**9
    assert privacy_params({"secure_aggregation": True, "secagg_reveal_s": 3600}).reveal_window_s == 3600
    assert privacy_params({}) == privacy_params({"dp": "off"})
    assert privacy_params({}).epsilon_budget_micro == 0


@pytest.mark.parametrize(("table", "named"), [
    ({"dp": "central"}, "privacy.dp"),
    ({"dp": "off", "epsilon": 3}, "privacy.epsilon"),
    ({"dp": "participant", "epsilon": 3, "rounds": 0}, "privacy.rounds"),
    ({"dp": "participant", "epsilon": 3, "clip_norm": 0}, "privacy.clip_norm"),
    ({"dp": "participant", "epsilon": 3, "noise_multiplier": -1}, "privacy.noise_multiplier"),
    ({"surprise": 1}, "unknown keys"),
])
def test_the_learning_side_refuses_bad_tables(table: dict, named: str) -> None:
    with pytest.raises(PrivacyConfigError, match=named):
        PrivacyConfig.from_dict(table)


def test_genesis_new_privacy_flags(tmp_path, capsys) -> None:
    from swarmnode.cli.main import main

    base = ["genesis", "new", "--validators", "2", "--task", "tiny", "--dev-keys", "--keys-dir", str(tmp_path / "k"),
            "--force"]
    out = tmp_path / "g.toml"
    assert main([*base, "--out", str(out), "--dp", "participant", "--epsilon", "3", "--dp-rounds", "60",
                 "--secure-aggregation", "--min-participants", "2"]) == 0
    g = load_genesis(out)
    assert g.privacy["dp"] == "participant" and g.privacy["secure_aggregation"] is True
    assert 11.0 < g.privacy["noise_multiplier"] < 12.5, g.privacy  # z for epsilon 3 over 60 Gaussian releases
    assert g.task["rule"] == "fedavgm", "the robust rule needs individual updates"
    assert g.task["max_update_norm"] > 1000.0, "a noised update must pass the norm check"
    assert "rule 'robust' needs individual updates" in capsys.readouterr().out
    assert main(["genesis", "show", str(out)]) == 0
    assert "DP (participant level) epsilon 3.0" in capsys.readouterr().out
    assert main([*base, "--out", str(out), "--dp", "participant"]) == 2
    assert "--epsilon" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--epsilon", "3"]) == 2
    assert main([*base, "--out", str(out), "--secure-aggregation"]) == 2  # min participants 1: the sum is one update
    assert "--min-participants 2" in capsys.readouterr().err
    assert main([*base, "--out", str(out)]) == 0
    assert load_genesis(out).privacy == {}
