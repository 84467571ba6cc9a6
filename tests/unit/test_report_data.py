"""`swarmnode report`'s data shaping: round ranges, log query windows, reward logs, per-round records."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from eth_utils import to_checksum_address

from swarmnode.cli import report_data as rd
from swarmnode.cli.chain_cmd import round_summary
from swarmnode.cli.errors import CliError
from swarmnode.cli.report_data import RoundRange

ALICE, BOB, VAL = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
CONTRIB, VALID = list(rd.REWARD_EVENTS)  # topic0 of ContributorRewarded, ValidatorRewarded


def commit(who: str, loss: int, acc: int, held_loss: int = 0, held_acc: int = 0, held_n: int = 0) -> dict[str, Any]:
    return {"participant": who, "updateHash": "0x11", "numSamples": 100, "localLoss": loss, "localAccuracy": acc,
            "heldOutLoss": held_loss, "heldOutAccuracy": held_acc, "heldOutCount": held_n, "blockNumber": 3}


def round_info(r: int, commits: list[dict[str, Any]], open_: int, close: int, final: int, **extra: Any) -> dict[str, Any]:
    return {"round": r, "commitCount": len(commits), "participantCount": 3, "expectedCount": 3, "absentCount": 0,
            "finalized": True, "skipped": False, "closedEarly": True, "totalSamples": 100 * len(commits),
            "finalHash": "0x" + f"{r:02x}" * 32, "openBlock": open_, "closeBlock": close, "finalBlock": final,
            "attestationCount": 2, "commits": commits, **extra}


def reward_log(topic: str, r: int, who: str, wei: int) -> dict[str, Any]:
    return {"topics": [topic, hex(r), "0x" + "00" * 12 + who[2:]], "data": "0x" + wei.to_bytes(32, "big").hex()}


# ---------------------------------------------------------------- --rounds


@pytest.mark.parametrize("text, want", [
    ("3:7", RoundRange(3, 7)), ("3:", RoundRange(3, None)), (":7", RoundRange(None, 7)), (":", RoundRange()),
    ("4", RoundRange(4, 4)), (" 2 : 5 ", RoundRange(2, 5)), ("0:0", RoundRange(0, 0)),
])
def test_round_range_parses(text: str, want: RoundRange) -> None:
    assert rd.parse_round_range(text) == want


@pytest.mark.parametrize("text, says", [
    ("7:3", "7 is after 3"), ("a:b", "integers"), ("-1:", ">= 0"), ("1:2:3", "expected A:B"), ("", "expected A:B"), (" ", "expected A:B"),
])
def test_round_range_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        rd.parse_round_range(text)


def test_round_range_is_cut_at_the_latest_final_round() -> None:
    assert RoundRange().clip(9) == (0, 9)
    assert RoundRange(3, 100).clip(9) == (3, 9)
    assert RoundRange(None, 4).clip(9) == (0, 4)
    assert RoundRange(9, 9).clip(9) == (9, 9)


def test_an_empty_range_is_a_readable_error() -> None:
    with pytest.raises(CliError, match="no finalized round in rounds 10:20: the latest finalized round is 9"):
        RoundRange(10, 20).clip(9)
    with pytest.raises(CliError, match="no finalized round on this chain yet: the first round is still open"):
        RoundRange(3, None).clip(None)


# ---------------------------------------------------------------- what to fetch


def test_block_heights_are_the_distinct_open_close_final_blocks() -> None:
    rounds = [round_info(0, [], 0, 4, 6), round_info(1, [], 6, 9, 11)]
    assert rd.block_heights(rounds) == [0, 4, 6, 9, 11]


def windows_of(finals: list[int], logs_each: int, **caps: int) -> list[tuple[int, int]]:
    rounds = [round_info(r, [commit(ALICE, 1, 1)] * (logs_each - 2), 0, 0, f) for r, f in enumerate(finals)]
    return rd.log_windows(rounds, **caps)


def test_log_windows_group_rounds_up_to_the_block_cap_on_both_sides() -> None:
    # span exactly max_blocks: one query; one block more: two
    assert windows_of([10, 50, 109], 3, max_blocks=100, max_logs=1000) == [(10, 109)]
    assert windows_of([10, 50, 110], 3, max_blocks=100, max_logs=1000) == [(10, 50), (110, 110)]


def test_log_windows_group_rounds_up_to_the_log_cap_on_both_sides() -> None:
    # 3 rounds of 4 logs: 12 fit a cap of 12, not one of 11
    assert windows_of([5, 6, 7], 4, max_blocks=100, max_logs=12) == [(5, 7)]
    assert windows_of([5, 6, 7], 4, max_blocks=100, max_logs=11) == [(5, 6), (7, 7)]


def test_log_windows_of_thousands_of_rounds_cover_every_final_block_in_few_queries() -> None:
    finals = [10 + 7 * r for r in range(5000)]
    windows = windows_of(finals, 12)
    assert len(windows) == 13, windows  # 416 rounds of 12 logs fit 5000 logs per query: ceil(5000 / 416)
    assert all(b - a + 1 <= rd.MAX_LOG_BLOCKS for a, b in windows)
    assert all(any(a <= f <= b for a, b in windows) for f in finals)
    assert rd.log_windows([]) == []


# ---------------------------------------------------------------- shaping


def test_rewards_are_summed_per_round_kind_and_account() -> None:
    logs = [reward_log(CONTRIB, 1, ALICE, 300), reward_log(CONTRIB, 1, BOB, 100), reward_log(VALID, 1, VAL, 50),
            reward_log(VALID, 1, ALICE, 7), reward_log(CONTRIB, 2, ALICE, 9),
            {"topics": ["0x" + "12" * 32, hex(1)], "data": "0x01"}]  # another event: ignored
    paid = rd.rewards_by_round(logs)
    assert set(paid) == {1, 2}
    assert (paid[1].contributors, paid[1].validators) == (400, 57)
    assert paid[1].by_account == {to_checksum_address(ALICE): 307, to_checksum_address(BOB): 100,
                                  to_checksum_address(VAL): 50}
    assert (paid[2].contributors, paid[2].validators) == (9, 0)


def test_held_out_loss_is_weighted_by_examples_and_ignores_unscored_commits() -> None:
    commits = [commit(ALICE, 1, 1, 400_000, 800_000, 30), commit(BOB, 1, 1, 800_000, 600_000, 10),
               commit(VAL, 1, 1)]
    assert rd.held_out_loss(commits) == pytest.approx((0.4 * 30 + 0.8 * 10) / 40)
    assert rd.held_out_loss([commit(ALICE, 1, 1)]) is None
    assert rd.held_out_loss([]) is None


def test_a_round_record_keeps_chain_rounds_fields_and_adds_time_rewards_stake() -> None:
    info = round_info(3, [commit(ALICE, 250_000, 900_000, 500_000, 700_000, 20), commit(BOB, 350_000, 800_000)],
                      open_=20, close=25, final=28, skipped=False, closedEarly=False)
    times = {20: 1000, 25: 1012, 28: 1015}
    info["openTime"] = 1000
    stake = [{"address": VAL, "stake": str(32 * 10**18)}, {"address": ALICE, "stake": str(10**18)}]
    paid = rd.RoundRewards(contributors=600, validators=400, by_account={ALICE: 600, VAL: 400})
    rec = rd.round_record(info, times, stake, paid)
    assert {k: rec[k] for k in round_summary(info)} == round_summary(info), "chain rounds --json's values, unchanged"
    assert rec["heldOutLoss"] == pytest.approx(0.5) and rec["baseHeldOutAccuracy"] == pytest.approx(0.7)
    assert (rec["openTimestamp"], rec["closeTimestamp"], rec["finalTimestamp"]) == (1000, 1012, 1015)
    assert (rec["roundSeconds"], rec["commitSeconds"], rec["finalizeSeconds"], rec["idleSeconds"]) == (15, 12, 3, 0)
    assert (rec["contributorRewards"], rec["validatorRewards"]) == ("600", "400")
    assert rec["rewardsByAccount"] == {ALICE: "600", VAL: "400"}
    assert rec["stake"] == {VAL: str(32 * 10**18), ALICE: str(10**18)} and rec["totalStake"] == str(33 * 10**18)
    assert (rec["expected"], rec["absent"], rec["skipped"], rec["closedEarly"]) == (3, 0, False, False)


def test_round_time_counts_the_wait_for_a_first_commit_after_a_missed_deadline() -> None:
    # round 4 opened at 1000; nobody committed before its deadline; the first commit at 1010 restarted the
    # commit clock (openTime); the window closed at 1015 and the round was final at 1018
    info = round_info(4, [commit(ALICE, 1, 1)], 20, 23, 25, openTime=1010)
    rec = rd.round_record(info, {20: 1000, 23: 1015, 25: 1018}, [], None)
    assert (rec["openTimestamp"], rec["clockStart"]) == (1000, 1010)
    assert (rec["roundSeconds"], rec["idleSeconds"], rec["commitSeconds"], rec["finalizeSeconds"]) == (18, 10, 5, 3)


def test_a_round_opened_in_the_genesis_block_starts_at_its_commit_clock() -> None:
    # round 0 opened at genesis (timestamp 0, when the genesis file was made); the first commit at 5000
    # restarted the clock: the round's time starts there
    info = round_info(0, [commit(ALICE, 1, 1)], 0, 3, 5, openTime=5000)
    rec = rd.round_record(info, {0: 0, 3: 5009, 5: 5012}, [], None)
    assert (rec["openTimestamp"], rec["clockStart"]) == (0, 5000)
    assert (rec["roundSeconds"], rec["idleSeconds"], rec["commitSeconds"], rec["finalizeSeconds"]) == (12, 0, 9, 3)


def test_a_round_without_timestamps_or_rewards_says_so_with_none_and_zero() -> None:
    rec = rd.round_record(round_info(0, [], 0, 3, 5, skipped=True), {}, [], None)
    assert (rec["roundSeconds"], rec["commitSeconds"], rec["finalizeSeconds"]) == (None, None, None)
    assert rec["idleSeconds"] is None
    assert (rec["contributorRewards"], rec["validatorRewards"], rec["rewardsByAccount"]) == ("0", "0", {})
    assert rec["skipped"] is True and rec["totalStake"] == "0"


def test_accounts_join_stake_bonds_and_rewards() -> None:
    records = [{"rewardsByAccount": {ALICE: "5", VAL: "7"}}, {"rewardsByAccount": {ALICE: "6"}}]
    validators = [{"address": VAL, "stake": "32"}]
    participants = [{"address": ALICE, "active": True, "bond": 0}, {"address": BOB, "active": False, "bond": "0"}]
    rows = {a["address"]: a for a in rd.account_rows(records, validators, participants)}
    assert rows[ALICE] == {"address": ALICE, "validatorStake": "0", "participant": "active", "participantBond": "0",
                           "rewards": "11", "roundsPaid": 2}
    assert rows[BOB]["participant"] == "left" and rows[BOB]["rewards"] == "0"
    assert rows[VAL]["participant"] is None and rows[VAL]["validatorStake"] == "32" and rows[VAL]["rewards"] == "7"


def test_report_and_summary_over_rounds() -> None:
    rounds = [round_info(0, [commit(ALICE, 1, 1)], 0, 4, 6, openTime=100),
              round_info(1, [commit(ALICE, 1, 1, 1, 600_000, 10), commit(BOB, 1, 1, 1, 800_000, 10)], 6, 9, 11,
                         openTime=131),
              round_info(2, [], 11, 14, 15, skipped=True, openTime=142)]
    times = {0: 100, 4: 130, 6: 131, 9: 140, 11: 142, 14: 150, 15: 151}
    logs = [reward_log(CONTRIB, 0, ALICE, 10), reward_log(VALID, 1, VAL, 3)]
    sets = {f: [{"address": VAL, "stake": "32"}] for f in (6, 11, 15)}
    report = rd.build_report({"chainId": 7, "height": 20, "headTimestamp": 160}, rounds, times, sets, logs,
                             [{"address": VAL, "stake": "32"}], [], {"rewardPerRound": 1})
    assert (report["firstRound"], report["lastRound"], report["chainId"]) == (0, 2, 7)
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert [r["roundSeconds"] for r in report["rounds"]] == [31, 11, 9]
    s = report["summary"]
    assert (s["rounds"], s["skipped"], s["commits"]) == (3, 1, 3)
    assert s["participationRate"] == pytest.approx(3 / 9)
    assert s["meanRoundSeconds"] == pytest.approx(17) and s["maxRoundSeconds"] == 31
    assert (s["lastHeldOutAccuracy"], s["lastHeldOutRound"]) == (pytest.approx(0.7), 1)
    assert (s["contributorRewards"], s["validatorRewards"]) == ("10", "3")
