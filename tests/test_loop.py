"""The shared training step and checkpointed epoch loop (``cxrscreen.training.loop``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cxrscreen.events import EpochDone, Event, Resumed
from cxrscreen.model.inference import choose_runtime
from cxrscreen.training.loop import Checkpoints, EpochLoop, Optimisation, train_step


class Scripted:
    """A fit whose epoch scores are given; it counts the epochs it really ran."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.ran, self.value, self.kept = scores, [], 0, []

    def epoch(self, n: int) -> dict[str, Any]:
        self.ran.append(n)
        self.value += 1
        return {"epoch": n, "score": self.scores[n], "train_loss": 1.0 - self.scores[n], "seconds": 0.1}

    def state(self) -> dict[str, Any]:
        return {"value": torch.tensor(self.value)}

    def restore(self, state: dict[str, Any], next_epoch: int) -> None:
        self.value = int(state["value"])

    def keep_best(self, n: int, record: dict[str, Any]) -> dict[str, Any]:
        self.kept.append(n)
        return {"note": f"epoch {n}"}


@pytest.mark.parametrize("single", [None, "checkpoint.pt"])
def test_the_loop_keeps_the_best_epoch_and_resumes_after_the_last_checkpoint(tmp_path: Path, single) -> None:
    events: list[Event] = []
    first = Scripted([0.5, 0.9, 0.7, 0.95])
    history, best = EpochLoop(2, Checkpoints(tmp_path, single), "score", emit=events.append).run(first)
    assert [h["epoch"] for h in history] == [0, 1] and best == {"epoch": 1, "score": 0.9, "note": "epoch 1"}
    assert [e.best_epoch for e in events if isinstance(e, EpochDone)] == [0, 1]

    again = Scripted([0.5, 0.9, 0.7, 0.95])
    history, best = EpochLoop(4, Checkpoints(tmp_path, single), "score", resume=True, emit=events.append).run(again)
    assert again.ran == [2, 3] and again.value == 4  # restored the state after epoch 1, then two more
    assert [h["epoch"] for h in history] == [0, 1, 2, 3] and best["epoch"] == 3 and again.kept == [3]
    assert Resumed(2) in events
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == (["checkpoint.pt"] if single else [f"epoch_{i:03d}.pt" for i in range(4)])

    fresh = Scripted([0.5, 0.9])
    EpochLoop(2, Checkpoints(tmp_path, single), "score", resume=False).run(fresh)
    assert fresh.ran == [0, 1]  # without resume the checkpoints are not read


def test_no_epoch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--epochs"):
        EpochLoop(0, Checkpoints(tmp_path), "score").run(Scripted([]))


def test_train_step_lowers_the_loss_on_a_separable_batch() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    x = torch.randn(32, 1, 4, 4)
    y = (x.mean(dim=(1, 2, 3)) > 0).float()
    sched_steps = []
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched_steps.append(s) or 1.0)
    step = Optimisation(net, opt, torch.nn.BCEWithLogitsLoss(), choose_runtime("cpu", "fp32"), sched)
    losses = [train_step(step, x, y) for _ in range(30)]
    assert losses[-1] < losses[0] / 2
    assert len(sched_steps) == 31  # the schedule advanced once a step (plus its initial call)
