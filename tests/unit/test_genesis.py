"""Genesis file parsing, validation with named fields, round trip, and the network identity hash."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from consensus.contracts import SWARM_ROUNDS_ADDRESS, load_artifact
from consensus.devtools import address_of, dev_genesis, dev_key
from consensus.genesis import (
    Genesis,
    GenesisError,
    RoundsParams,
    dump_genesis,
    load_genesis,
    loads_genesis,
    parse_amount,
)
from consensus.genesis_block import genesis_hash, genesis_state

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evm_harness import Contract, EvmHarness  # noqa: E402

ADDR0 = "0x" + address_of(dev_key(0)).hex()

MINIMAL = f"""
chain_id = 99
[[validators]]
address = "{ADDR0}"
stake = "32 ether"
"""


def test_minimal_file_gets_defaults() -> None:
    g = loads_genesis(MINIMAL)
    assert g.chain_id == 99
    assert g.validators[0].stake == 32 * 10**18
    assert g.validators[0].peer_id is None
    assert g.consensus.epoch_length == 100
    assert g.rounds == RoundsParams()
    assert dataclasses.asdict(g.rounds) == {
        "commit_window_s": 60, "straggler_grace_pct": 100, "min_grace_s": 2, "min_participants": 1,
        "under_min": "extend", "absent_rounds": 3, "admission": "stake", "participant_bond": 10**18,
        "max_samples": 1_000_000, "reward_per_round": 10**18}
    assert dict(g.task) == {}
    assert g.genesis_model_hash == b"\x00" * 32


def test_round_trip_preserves_every_field(tmp_path) -> None:
    g = dev_genesis(3, 5)
    rounds = RoundsParams(commit_window_s=7, straggler_grace_pct=250, min_grace_s=0, min_participants=3,
                          under_min="skip", absent_rounds=0, admission="allowlist", participant_bond=5 * 10**9,
                          reward_per_round=12345)
    g = Genesis(**{**g.__dict__, "task": {"dataset": "mnist", "lr": 0.05, "sub": {"k": [1, 2]}},
                   "genesis_model_hash": bytes(range(32)), "rounds": rounds})
    path = tmp_path / "g.toml"
    path.write_text(dump_genesis(g))
    assert load_genesis(path) == g
    assert load_genesis(path).rounds == rounds
    text = path.read_text()
    assert "[[validators]]" in text and 'participant_bond = "5 gwei"' in text and 'under_min = "skip"' in text


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("chain_id = 1", "validators"),
        (MINIMAL.replace("chain_id = 99", ""), "chain_id"),
        (MINIMAL.replace("chain_id = 99", 'chain_id = "x"'), "chain_id"),
        (MINIMAL.replace('"32 ether"', '"lots"'), "validators[0].stake"),
        (MINIMAL.replace('"32 ether"', "0"), "validators[0].stake"),
        (MINIMAL.replace(ADDR0, "0x1234"), "validators[0].address"),
        (MINIMAL + "\n[consensus]\nepoch_length = 0\n", "consensus.epoch_length"),
        (MINIMAL + "\n[consensus]\nbogus = 1\n", "consensus.bogus"),
        (MINIMAL + "\n[consensus]\nempty_block_interval_ms = 500\n", "consensus.empty_block_interval_ms"),
        (MINIMAL + "\n[consensus]\nempty_block_interval_ms = -1\n", "consensus.empty_block_interval_ms"),
        ('genesis_model_hash = "0xab"\n' + MINIMAL, "genesis_model_hash"),
        ("surprise = 1\n" + MINIMAL, "surprise"),
        (MINIMAL + MINIMAL.split("\n", 2)[2], "validators[1].address"),
        ("chain_id = [", "<file>"),
    ],
)
def test_bad_field_is_named(text: str, field: str) -> None:
    with pytest.raises(GenesisError) as info:
        loads_genesis(text)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)


ROUNDS_BOUNDS = [  # (field, lowest accepted, highest accepted); one past each side is refused
    ("commit_window_s", 1, 86_400),
    ("straggler_grace_pct", 0, 1_000),
    ("min_grace_s", 0, 3_600),
    ("min_participants", 1, 128),
    ("absent_rounds", 0, 1_000_000),
]


def _with_rounds(body: str) -> str:
    return MINIMAL + "\n[rounds]\n" + body + "\n"


@pytest.mark.parametrize(("name", "low", "high"), ROUNDS_BOUNDS)
def test_rounds_integer_bounds(name: str, low: int, high: int) -> None:
    assert getattr(loads_genesis(_with_rounds(f"{name} = {low}")).rounds, name) == low
    assert getattr(loads_genesis(_with_rounds(f"{name} = {high}")).rounds, name) == high
    for bad in (low - 1, high + 1, '"5"', "1.5", "true"):
        with pytest.raises(GenesisError) as info:
            loads_genesis(_with_rounds(f"{name} = {bad}"))
        assert info.value.field == f"rounds.{name}", str(info.value)


@pytest.mark.parametrize(("body", "field"), [
    ('under_min = "wait"', "rounds.under_min"),
    ("under_min = 1", "rounds.under_min"),
    ('admission = "open"', "rounds.admission"),
    ('participant_bond = "-1 ether"', "rounds.participant_bond"),
    ('participant_bond = "a lot"', "rounds.participant_bond"),
    ("participant_bond = -1", "rounds.participant_bond"),
    ("reward_per_round = -1", "rounds.reward_per_round"),
    (f'reward_per_round = "{2**128 + 1}"', "rounds.reward_per_round"),
    ("bogus = 1", "rounds.bogus"),
    ('under_min = "skip"', "rounds.under_min"),  # needs a genesis_model_hash: round 0 would finalize on it
])
def test_rounds_bad_field_is_named(body: str, field: str) -> None:
    with pytest.raises(GenesisError) as info:
        loads_genesis(_with_rounds(body))
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)


def test_rounds_choices_and_amounts() -> None:
    g = loads_genesis('genesis_model_hash = "0x' + "11" * 32 + '"\n' + _with_rounds(
        'under_min = "skip"\nadmission = "allowlist"\nparticipant_bond = 0\n'
        f'reward_per_round = "{2**128}"'))
    assert (g.rounds.under_min, g.rounds.admission, g.rounds.participant_bond) == ("skip", "allowlist", 0)
    assert g.rounds.reward_per_round == 2**128
    assert loads_genesis(_with_rounds('participant_bond = "3 gwei"')).rounds.participant_bond == 3 * 10**9


def test_old_commit_window_in_blocks_is_refused_with_its_replacement() -> None:
    with pytest.raises(GenesisError) as info:
        loads_genesis(_with_rounds("commit_window = 20"))
    assert info.value.field == "rounds.commit_window"
    assert "replaced by commit_window_s" in str(info.value) and "seconds" in str(info.value)


def test_rounds_params_are_checked_when_built_in_code() -> None:
    with pytest.raises(GenesisError, match="rounds.commit_window_s"):
        RoundsParams(commit_window_s=0)
    with pytest.raises(GenesisError, match="rounds.admission"):
        RoundsParams(admission="open")
    with pytest.raises(GenesisError, match="rounds.under_min"):
        dev_genesis(1, 1, rounds=RoundsParams(under_min="skip"))  # zero genesis model hash


def test_rounds_reach_the_contract() -> None:
    """The [rounds] table, the model hash and the genesis time end up in SwarmRounds' genesis storage."""
    rounds = RoundsParams(commit_window_s=45, straggler_grace_pct=150, min_grace_s=7, min_participants=2,
                          under_min="skip", absent_rounds=5, admission="allowlist", participant_bond=3,
                          reward_per_round=11)
    g = dev_genesis(1, 1, rounds=rounds, genesis_model_hash=b"\x42" * 32, genesis_time=1_234_567)
    rounds_contract = Contract(SWARM_ROUNDS_ADDRESS, load_artifact("SwarmRounds")["abi"])
    evm = EvmHarness(g.chain_id, genesis_state(g), [rounds_contract], genesis_time=g.genesis_time)
    getters = {"commitWindowSecs": 45, "stragglerGracePct": 150, "minGraceSecs": 7, "minParticipants": 2,
               "skipUnderMin": True, "absentRounds": 5, "admissionMode": 1, "participantBond": 3,
               "rewardPerRound": 11, "genesisModelHash": b"\x42" * 32}
    assert {name: evm.call(rounds_contract, name) for name in getters} == getters
    info = evm.call(rounds_contract, "getRound", 0)
    assert info[1:3] == (1_234_567, 1_234_567 + 45)  # openTime, closeTime: round 0 opens at genesis time


def test_genesis_hash_commits_to_the_rounds_table() -> None:
    g = dev_genesis(1, 1)
    other = dataclasses.replace(g, rounds=dataclasses.replace(g.rounds, absent_rounds=4))
    assert genesis_hash(g) != genesis_hash(other)


def test_missing_file_is_a_typed_error(tmp_path) -> None:
    with pytest.raises(GenesisError, match="cannot read"):
        load_genesis(tmp_path / "nope.toml")


def test_amounts() -> None:
    assert parse_amount("5 gwei", "x") == 5 * 10**9
    assert parse_amount(7, "x") == 7
    assert parse_amount("12", "x") == 12
    with pytest.raises(GenesisError):
        parse_amount(True, "x")
    with pytest.raises(GenesisError):
        parse_amount(-1, "x")


def test_genesis_hash_is_deterministic_and_commits_to_the_task() -> None:
    g = dev_genesis(2, 2)
    assert genesis_hash(g) == genesis_hash(dev_genesis(2, 2))
    other_task = Genesis(**{**g.__dict__, "task": {"dataset": "fashion-mnist"}})
    other_chain = Genesis(**{**g.__dict__, "chain_id": g.chain_id + 1})
    assert len({genesis_hash(g), genesis_hash(other_task), genesis_hash(other_chain)}) == 3


# ---------------------------------------------------------------- shipped files and `swarmnode genesis new`

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("name", "validators", "dataset"),
                         [("minimal", 1, "fashion-mnist"), ("devnet-4", 4, "fashion-mnist"), ("seed-10", 10, "fashion-mnist")])
def test_shipped_genesis_files_load_with_dev_keys(name: str, validators: int, dataset: str) -> None:
    g = load_genesis(REPO / "genesis" / f"{name}.toml")
    assert len(g.validators) == validators and g.task["dataset"] == dataset
    assert [v.address for v in g.validators] == [address_of(dev_key(i)) for i in range(validators)]
    assert all(v.peer_id and v.peer_id.startswith("16Uiu2") for v in g.validators)
    assert len(genesis_hash(g)) == 32


def test_cli_regenerates_the_shipped_minimal_file_and_writes_private_keys(tmp_path, capsys) -> None:
    from swarmnode.cli.main import main

    shipped = (REPO / "genesis" / "minimal.toml").read_text()
    command = shipped.splitlines()[0].removeprefix("# generated by: swarmnode ").split()
    command[command.index("--out") + 1] = str(tmp_path / "g.toml")
    command[command.index("--keys-dir") + 1] = str(tmp_path / "keys")
    assert main(command) == 0
    regenerated = (tmp_path / "g.toml").read_text()
    assert regenerated.splitlines()[1:] == shipped.splitlines()[1:], (
        "genesis/minimal.toml is stale (did the task presets change?): regenerate the shipped files "
        "with the command on their first line")
    key_file = tmp_path / "keys" / "node-0.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert bytes.fromhex(key_file.read_text().strip()) == dev_key(0)
    assert main(command) == 2  # refuses to overwrite keys
    assert "exists" in capsys.readouterr().err


def test_cli_block_intervals(tmp_path, capsys) -> None:
    from swarmnode.cli.main import main

    base = ["genesis", "new", "--validators", "1", "--task", "seed", "--dev-keys", "--keys-dir", str(tmp_path / "k"),
            "--force"]
    out = tmp_path / "g.toml"
    assert main([*base, "--out", str(out), "--block-interval-ms", "500", "--empty-block-interval-ms", "2000"]) == 0
    g = load_genesis(out)
    assert (g.consensus.block_interval_ms, g.consensus.empty_block_interval_ms) == (500, 2000)
    assert "--block-interval-ms 500" in out.read_text().splitlines()[0]  # the command that regenerates it
    assert main([*base, "--out", str(out), "--block-interval-ms", "0"]) == 2
    assert "--block-interval-ms" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--block-interval-ms", "3000"]) == 0  # the default empty interval
    capsys.readouterr()
    assert main([*base, "--out", str(out), "--block-interval-ms", "6000"]) == 2  # but not below the block interval
    assert "--empty-block-interval-ms" in capsys.readouterr().err


def test_cli_rounds_flags(tmp_path, capsys) -> None:
    from swarmnode.cli.main import main

    base = ["genesis", "new", "--validators", "1", "--task", "tiny", "--dev-keys", "--keys-dir", str(tmp_path / "k"),
            "--force"]
    out = tmp_path / "g.toml"
    flags = ["--commit-window-s", "30", "--straggler-grace-pct", "50", "--min-grace-s", "5", "--min-participants",
             "2", "--under-min", "skip", "--absent-rounds", "0", "--admission", "allowlist", "--participant-bond",
             "2 ether", "--reward", "3 ether", "--max-samples", "777"]
    assert main([*base, "--out", str(out), *flags]) == 0
    g = load_genesis(out)
    assert g.rounds == RoundsParams(commit_window_s=30, straggler_grace_pct=50, min_grace_s=5, min_participants=2,
                                    under_min="skip", absent_rounds=0, admission="allowlist",
                                    participant_bond=2 * 10**18, reward_per_round=3 * 10**18, max_samples=777)
    default = tmp_path / "d.toml"
    assert main([*base, "--out", str(default)]) == 0
    assert load_genesis(default).rounds.max_samples == 600  # twice the tiny task's 300 samples per client
    assert main([*base, "--out", str(default), "--max-samples", "0"]) == 2
    first_line = out.read_text().splitlines()[0]
    for flag in flags[::2]:
        assert flag in first_line, f"{flag} missing from the regenerating command: {first_line}"
    capsys.readouterr()
    assert main(["genesis", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "window 30 s, grace 50% (min 5 s), min 2 commit(s) (skip), never dropped, allow-list admission" in shown


@pytest.mark.parametrize(("flags", "named"), [
    (["--commit-window", "20"], "--commit-window-s"),
    (["--commit-window-s", "0"], "rounds.commit_window_s"),
    (["--straggler-grace-pct", "1001"], "rounds.straggler_grace_pct"),
    (["--min-participants", "129"], "rounds.min_participants"),
    (["--participant-bond", "lots"], "--participant-bond"),
])
def test_cli_rounds_flags_refuse_bad_values(tmp_path, capsys, flags, named) -> None:
    from swarmnode.cli.main import main

    base = ["genesis", "new", "--validators", "1", "--task", "tiny", "--dev-keys", "--keys-dir", str(tmp_path / "k"),
            "--out", str(tmp_path / "g.toml")]
    assert main([*base, *flags]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "g.toml").exists()


def test_cli_help_lists_the_rounds_flags(capsys) -> None:
    from swarmnode.cli.main import main

    with pytest.raises(SystemExit):
        main(["genesis", "new", "--help"])
    text = capsys.readouterr().out
    for flag in ("--commit-window-s", "--straggler-grace-pct", "--min-grace-s", "--min-participants", "--under-min",
                 "--absent-rounds", "--admission", "--participant-bond"):
        assert flag in text
    assert "--commit-window " not in text  # the replaced flag is hidden


def test_max_samples_default_covers_unequal_dirichlet_shares(tmp_path, capsys) -> None:
    from swarmnode.cli.main import main

    task = tmp_path / "task.toml"
    task.write_text('[task]\nmodel = "mlp"\nnum_clients = 10\npartition = "dirichlet"\nseed = 7\n\n'
                    '[task.partition_params]\nalpha = 0.1\n')
    out = tmp_path / "g.toml"
    assert main(["genesis", "new", "--validators", "1", "--task-file", str(task), "--dev-keys", "--keys-dir",
                 str(tmp_path / "k"), "--out", str(out)]) == 0
    capsys.readouterr()
    # this task's largest training share is 17188 images: twice an equal share (12000) would cap it
    assert load_genesis(out).rounds.max_samples == 60_000
