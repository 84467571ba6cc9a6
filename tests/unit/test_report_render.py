"""`swarmnode report`'s drawing: the figure's panels, the PNG, and the self-contained HTML page."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from swarmnode.cli import report_data as rd
from swarmnode.cli import report_render as rr
from tests.unit.test_report_data import ALICE, BOB, CONTRIB, VAL, VALID, commit, reward_log, round_info

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic(rounds: int, validators: int = 3, scored: bool = True) -> dict[str, Any]:
    """A report over `rounds` rounds (every 5th skipped) as build_report shapes it."""
    infos, times, logs, sets = [], {}, [], {}
    vals = [{"address": "0x%040x" % (i + 1), "stake": str((32 + i) * 10**18)} for i in range(validators)]
    for r in range(rounds):
        held = (400_000 + r, 600_000 + r, 20) if scored else (0, 0, 0)
        commits = [commit(ALICE, 500_000, 800_000, *held), commit(BOB, 600_000, 700_000, *held)]
        infos.append(round_info(r, commits, 3 * r, 3 * r + 1, 3 * r + 3, openTime=10 * r, skipped=r % 5 == 4))
        times.update({3 * r: 10 * r, 3 * r + 1: 10 * r + 4, 3 * r + 3: 10 * r + 10})  # final r = open r + 1
        logs += [reward_log(CONTRIB, r, ALICE, 7 * 10**17), reward_log(VALID, r, VAL, 3 * 10**17)]
        sets[3 * r + 3] = vals
    return rd.build_report({"chainId": 9, "height": 3 * rounds + 5}, infos, times, sets, logs, vals, [], {})


def texts(fig: Any) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def legend_labels(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_figure_has_six_panels_over_the_rounds() -> None:
    fig = rr.figure(synthetic(12))
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy (%)", "loss", "participants", "round time (s)",
                                                    "rewards paid (ether)", "validator stake (ether)"]
    assert "rounds 0-11" in fig.get_suptitle()
    assert "skipped (2)" in legend_labels(fig.axes[2]), "rounds 4 and 9 are skipped"
    assert texts(fig) == [], "held-out scores exist: no 'no data' note"
    stake = fig.axes[5]
    assert stake.get_ylim()[1] >= (32 + 33 + 34) * 0.99, "stacked stake reaches the total"


def test_without_held_out_scores_the_panels_say_so() -> None:
    assert texts(rr.figure(synthetic(3, scored=False))) == ["no held-out scores on chain"] * 2


def test_many_validators_name_the_largest_in_the_legend() -> None:
    ax = rr.figure(synthetic(4, validators=12)).axes[5]
    assert ax.get_legend().get_title().get_text() == f"largest {rr.MAX_STAKE_LEGEND} of 12"
    assert len(legend_labels(ax)) == rr.MAX_STAKE_LEGEND
    assert legend_labels(ax)[0] == "0x0000…000c", "the largest stake first"


@pytest.mark.parametrize("rounds", [1, rr.GAPPED_ROUNDS + 1])
def test_png(rounds: int) -> None:
    data = rr.png_bytes(synthetic(rounds))
    assert data[:8] == PNG_SIGNATURE and len(data) > 30_000


def test_html_is_one_file_with_the_figure_and_a_row_per_round() -> None:
    report = synthetic(7)
    report["rounds"][2]["modelHash"] = "<script>alert(1)</script>"  # whatever a field holds, it is text
    page = rr.html_page(report, b"\x89PNG-bytes")
    assert re.findall(r'<tr data-round="(\d+)">', page) == [str(r) for r in range(7)]
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    (src,) = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert base64.b64decode(src.removeprefix("data:image/png;base64,")) == b"\x89PNG-bytes"
    assert "http://" not in page and "https://" not in page, "nothing fetched from elsewhere"
    assert '<table id="summary">' in page and '<table id="accounts">' in page


def test_the_cli_says_in_one_line_what_it_wrote() -> None:
    from swarmnode.cli.report_cmd import headline

    assert headline(synthetic(10)) == ("rounds 0-9 of chain 9, 2 skipped, held-out accuracy 60.0% at round 9, "
                                       "mean round 10.0 s")
    assert headline(synthetic(3, scored=False)) == "rounds 0-2 of chain 9, mean round 10.0 s"
