"""RoundWork scores a model on the node's validation split once: round r's final model is round r + 1's base,
so the progress line's score of r and the held-out score committed with r + 1 share one evaluation, whichever
asks first; a node that does not train the next round still gets its progress-line score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import trio
import trio.testing

from swarmnode.aggregation.codec import GlobalModel
from swarmnode.experiment import ClientData
from swarmnode.learning.data import Split
from swarmnode.learning.evaluate import evaluate
from swarmnode.learning.tasks import Task, initial_params
from swarmnode.node import work as work_mod
from swarmnode.node.store import ModelStore
from swarmnode.node.work import History, RoundWork


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RoundWork, GlobalModel, bytes, list[int]]:
    task = Task(model="mlp", num_clients=1, local_steps=1)
    models = ModelStore(tmp_path / "store")
    model = GlobalModel(initial_params(task))
    h = models.put_model(model)
    calls: list[int] = []

    def counted(*args: Any) -> Any:  # the real evaluation, counted
        calls.append(1)
        return evaluate(*args)

    monkeypatch.setattr(work_mod, "evaluate", counted)
    w = RoundWork(task=task, genesis_model_hash=h, models=models, fetcher=None, p2p=None,  # type: ignore[arg-type]
                  service=None, clients=[ClientData(0, _split(64, 1), _split(48, 2))],  # type: ignore[arg-type]
                  test_split=None, history=History(), data_dir=tmp_path, niceness=0)
    yield w, model, h, calls
    w.stop()


async def test_held_out_first_then_progress_score_share_one_evaluation(setup: Any) -> None:
    w, model, h, calls = setup
    loss, acc, n = await w.score_held_out(model, 0, h)
    await w.score(0, h, 0)
    assert len(calls) == 1 and n == 48
    assert w.history.get(0).val_accuracy == acc
    direct = evaluate(w.task.model_spec(), model.params, w.clients[0].val)
    assert (loss, acc) == (direct.loss, direct.accuracy)


async def test_progress_score_waits_for_the_next_rounds_held_out_score(setup: Any) -> None:
    w, model, h, calls = setup
    async with trio.open_nursery() as nursery:
        nursery.start_soon(w.score, 3, h, 0)  # the round is final: scored first...
        await trio.testing.wait_all_tasks_blocked()  # score has gone as far as it can alone:
        assert w._val_changed.statistics().tasks_waiting == 1  # parked on the shared held-out score
        assert calls == []  # ...it waits for the next round's training to score the same model
        _, acc, _ = await w.score_held_out(model, 0, h)
    assert len(calls) == 1
    assert w.history.get(3).val_accuracy == acc


async def test_progress_score_alone_is_computed_after_the_wait(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    w, model, h, calls = setup
    monkeypatch.setattr(work_mod, "VAL_SCORE_WAIT_S", 0.2)
    with trio.fail_after(30):
        await w.score(5, h, 0)  # nobody trains on this model next: the score computes it itself
    assert len(calls) == 1
    assert w.history.get(5).val_accuracy == evaluate(w.task.model_spec(), model.params, w.clients[0].val).accuracy
    await w.score_held_out(model, 0, h)  # and a later held-out score of that model reuses it
    assert len(calls) == 1


async def test_different_models_are_scored_separately(setup: Any) -> None:
    w, model, h, calls = setup
    other = GlobalModel({n: t + 0.01 for n, t in model.params.items()})
    await w.score_held_out(model, 0, h)
    await w.score_held_out(other, 0, w.models.put_model(other))
    assert len(calls) == 2
