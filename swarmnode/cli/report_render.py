"""Drawing `swarmnode report`: one matplotlib figure (Agg, no display needed) as PNG, or a self-contained
HTML page holding that figure (base64 PNG) and tables of the same figures; no script, nothing fetched."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from swarmnode.cli.chain_cmd import ETHER

MARKED_ROUNDS = 60  # up to this many rounds, line points get markers
BAR = 0.8  # bar width, in rounds
GAPPED_ROUNDS = 200  # above this many rounds, bars touch
MAX_STAKE_LEGEND = 10  # validators named in the stake panel's legend
COLORS = {"held": "#1f77b4", "local": "#ff7f0e", "commit": "#2ca02c", "registered": "#7f7f7f",
          "expected": "#9467bd", "skipped": "#d62728", "idle": "#bdbdbd", "window": "#8c9eff", "finalize": "#ffab40",
          "contributors": "#43a047", "validators": "#5c6bc0"}


def _num(value: float | None, scale: float = 1.0) -> float:
    return math.nan if value is None else value * scale


def _ether(wei: str | int) -> float:
    return int(wei) / ETHER


def figure(report: dict[str, Any]) -> Any:
    """The report's figure: six panels over the rounds, sharing the round axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    records = report["rounds"]
    fig = Figure(figsize=(12, 15), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(6, 1, sharex=True)
    dense = len(records) > MARKED_ROUNDS
    for draw, ax in zip((_accuracy, _loss, _participation, _round_time, _rewards, _stake), axes, strict=True):
        draw(ax, records, dense)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("learning round")
    fig.suptitle(_title(report))
    return fig


def _title(report: dict[str, Any]) -> str:
    return (f"swarmnode chain {report['chainId']}: rounds {report['firstRound']}-{report['lastRound']} "
            f"(chain height {report['height']})")


def _rounds(records: list[dict[str, Any]]) -> list[int]:
    return [r["round"] for r in records]


def _empty_note(ax: Any, values: list[float], what: str) -> None:
    if all(math.isnan(v) for v in values):
        ax.text(0.5, 0.5, f"no {what} on chain", transform=ax.transAxes, ha="center", va="center", color="gray")


def _accuracy(ax: Any, records: list[dict[str, Any]], dense: bool) -> None:
    x = _rounds(records)
    held = [_num(r["baseHeldOutAccuracy"], 100) for r in records]
    ax.plot(x, held, marker="" if dense else "o", color=COLORS["held"],
            label="held-out: the round's base\nmodel, weighted by examples")
    ax.plot(x, [_num(r["meanAccuracy"], 100) for r in records], linestyle="--", color=COLORS["local"],
            label="committers' local\ntraining (mean)")
    _empty_note(ax, held, "held-out scores")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    _legend(ax)


def _loss(ax: Any, records: list[dict[str, Any]], dense: bool) -> None:
    x = _rounds(records)
    held = [_num(r["heldOutLoss"]) for r in records]
    ax.plot(x, held, marker="" if dense else "o", color=COLORS["held"], label="held-out: the round's base\nmodel, weighted by examples")
    ax.plot(x, [_num(r["meanLoss"]) for r in records], linestyle="--", color=COLORS["local"],
            label="committers' local\ntraining (mean)")
    _empty_note(ax, held, "held-out scores")
    ax.set_ylabel("loss")
    _legend(ax)


def _stack(ax: Any, x: list[int], layers: list[tuple[list[float], str, Any]]) -> None:
    """Stacked bars, bottom layer first, as (values, label, color); each layer is one PolyCollection, since one Rectangle artist per
    bar (ax.bar) takes seconds to lay out and draw for a few hundred rounds."""
    from matplotlib.collections import PolyCollection

    half = (BAR if len(x) <= GAPPED_ROUNDS else 1.0) / 2  # gaps between bars thinner than a pixel would alias
    bottom = [0.0] * len(x)
    for values, label, color in layers:
        top = [b + (0.0 if math.isnan(v) else v) for b, v in zip(bottom, values, strict=True)]
        bars = [[(r - half, b), (r - half, t), (r + half, t), (r + half, b)]
                for r, b, t in zip(x, bottom, top, strict=True) if t > b]
        ax.add_collection(PolyCollection(bars, facecolors=color, edgecolors="none", label=label), autolim=True)
        bottom = top
    ax.autoscale_view()
    ax.set_ylim(bottom=0)


def _participation(ax: Any, records: list[dict[str, Any]], dense: bool) -> None:
    x = _rounds(records)
    _stack(ax, x, [([float(r["participants"]) for r in records], "committers", COLORS["commit"])])
    ax.step(x, [r["registered"] for r in records], where="mid", color=COLORS["registered"],
            label="registered\n(active at open)")
    ax.step(x, [r["expected"] for r in records], where="mid", linestyle=":", color=COLORS["expected"],
            label="expected")
    skipped = [r["round"] for r in records if r["skipped"]]
    if skipped:
        ax.plot(skipped, [0] * len(skipped), "x", color=COLORS["skipped"], markersize=9, clip_on=False,
                label=f"skipped ({len(skipped)})")
    top = max([r["registered"] for r in records] + [r["participants"] for r in records] + [1])
    ax.set_ylim(0, top * 1.15)  # headroom: the registered line must not hide in the bars' tops
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("participants")
    _legend(ax)


def _round_time(ax: Any, records: list[dict[str, Any]], dense: bool) -> None:
    _stack(ax, _rounds(records), [
        ([_num(r["idleSeconds"]) for r in records], "no commit before\nthe deadline", COLORS["idle"]),
        ([_num(r["commitSeconds"]) for r in records], "commit window", COLORS["window"]),
        ([_num(r["finalizeSeconds"]) for r in records], "close to final\n(aggregate, attest)", COLORS["finalize"]),
    ])
    ax.set_ylabel("round time (s)")
    _legend(ax)


def _rewards(ax: Any, records: list[dict[str, Any]], dense: bool) -> None:
    _stack(ax, _rounds(records), [
        ([_ether(r["contributorRewards"]) for r in records], "to contributors", COLORS["contributors"]),
        ([_ether(r["validatorRewards"]) for r in records], "to attesting\nvalidators", COLORS["validators"]),
    ])
    ax.set_ylabel("rewards paid (ether)")
    _legend(ax)


def _stake(ax: Any, records: list[dict[str, Any]], dense: bool) -> None:
    """Stacked by validator (largest at the bottom): the height is the total stake, the bands its split."""
    from matplotlib import colormaps

    validators = sorted({a for r in records for a in r["stake"]},
                        key=lambda a: -max(_ether(r["stake"].get(a, 0)) for r in records))
    palette = colormaps["tab20"]
    _stack(ax, _rounds(records), [([_ether(r["stake"].get(a, 0)) for r in records],
                                   _short(a) if i < MAX_STAKE_LEGEND else "_", palette(i % 20))
                                  for i, a in enumerate(validators)])
    ax.set_ylabel("validator stake (ether)")
    if validators:
        _legend(ax, None if len(validators) <= MAX_STAKE_LEGEND
                else f"largest {MAX_STAKE_LEGEND} of {len(validators)}")


def _legend(ax: Any, title: str | None = None) -> None:
    """Beside the panel, so it never hides a bar."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title=title,
              title_fontsize="small", frameon=False)


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def png_bytes(report: dict[str, Any], dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    figure(report).savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# ---------------------------------------------------------------- HTML


def _cell(value: Any) -> str:
    return f"<td>{html.escape('-' if value is None else str(value))}</td>"


def _table(table_id: str, headers: list[str], rows: list[tuple[dict[str, str], list[Any]]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "\n".join("<tr" + "".join(f' {k}="{html.escape(v)}"' for k, v in attrs.items()) + ">"
                     + "".join(_cell(c) for c in cells) + "</tr>" for attrs, cells in rows)
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{value * 100:.1f}%"


def _fixed(value: float | None, digits: int = 4) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _eth_text(wei: str | int) -> str:
    return f"{_ether(wei):.6g}"


def _summary_rows(report: dict[str, Any]) -> list[tuple[dict[str, str], list[Any]]]:
    s = report["summary"]
    held = (f"{_pct(s['lastHeldOutAccuracy'])} (round {s['lastHeldOutRound']}; best {_pct(s['bestHeldOutAccuracy'])})"
            if s["lastHeldOutAccuracy"] is not None else None)
    pairs = [
        ("rounds", f"{s['rounds']} ({report['firstRound']}-{report['lastRound']}), {s['skipped']} skipped, "
                   f"{s['closedEarly']} closed early"),
        ("commits", f"{s['commits']} ({_pct(s['participationRate'])} of registered participants)"),
        ("held-out accuracy, latest", held),
        ("round time", None if s["meanRoundSeconds"] is None
         else f"mean {s['meanRoundSeconds']:.1f} s, longest {s['maxRoundSeconds']} s"),
        ("rewards paid (ether)", f"{_eth_text(s['contributorRewards'])} to contributors, "
                                 f"{_eth_text(s['validatorRewards'])} to validators"),
    ]
    return [({}, [k, v]) for k, v in pairs]


def _account_rows(report: dict[str, Any]) -> list[tuple[dict[str, str], list[Any]]]:
    return [({}, [a["address"], _eth_text(a["validatorStake"]), a["participant"], _eth_text(a["participantBond"]),
                  _eth_text(a["rewards"]), a["roundsPaid"]]) for a in report["accounts"]]


def _round_rows(report: dict[str, Any]) -> list[tuple[dict[str, str], list[Any]]]:
    return [({"data-round": str(r["round"])}, [
        r["round"], f"{r['participants']}/{r['registered']}" + (" skipped" if r["skipped"] else ""),
        _pct(r["baseHeldOutAccuracy"]), _fixed(r["heldOutLoss"]), _pct(r["meanAccuracy"]), _fixed(r["meanLoss"]),
        r["roundSeconds"], _eth_text(int(r["contributorRewards"]) + int(r["validatorRewards"])),
        _eth_text(r["totalStake"]), f"{r['openBlock']}-{r['finalBlock']}", r["modelHash"],
    ]) for r in report["rounds"]]


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}code{font-size:0.9em}"""


def html_page(report: dict[str, Any], png: bytes) -> str:
    """One HTML file with everything inline: the figure (base64 PNG), a summary, accounts, and one row
    per round (`<tr data-round="R">`, in table#rounds)."""
    title = html.escape(_title(report))
    image = base64.b64encode(png).decode()
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
        f"<style>{STYLE}</style></head><body>", f"<h1>{title}</h1>",
        "<p>Built from chain data: SwarmRounds' round records and reward logs, block timestamps, and the "
        "validator set in force at each round's final block. Held-out scores are those of the round's base "
        "model (the previous round's global model) on the committers' own held-out splits.</p>",
        _table("summary", ["figure", "value"], _summary_rows(report)),
        f'<img alt="{title}" src="data:image/png;base64,{image}">',
        "<h2>Accounts</h2>",
        _table("accounts", ["address", "validator stake now", "participant", "bond now", "rewards in these rounds",
                            "rounds paid"], _account_rows(report)),
        "<h2>Rounds</h2>",
        _table("rounds", ["round", "committed", "held-out acc", "held-out loss", "local acc", "local loss",
                          "round s", "rewards (ether)", "stake (ether)", "blocks", "global model hash"],
               _round_rows(report)),
        "</body></html>", ""])


def write_png(report: dict[str, Any], path: Path) -> None:
    path.write_bytes(png_bytes(report))


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(html_page(report, png_bytes(report)), encoding="utf-8")
