"""The one optimisation step and the one checkpointed epoch loop, shared by ``train`` and ``adapt``.

:func:`train_step` is a step of gradient descent on one batch (autocast where the runtime has it,
channels_last, an AMP scaler on CUDA fp16, a per-step schedule). :class:`EpochLoop` runs the epochs of
an :class:`EpochFit`: a checkpoint after each (atomic), ``resume`` from the newest, and the best epoch
by one history field, so every way of fitting resumes and selects alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from cxrscreen.events import EpochDone, ProgressFn, Resumed, ignore
from cxrscreen.model.inference import Runtime, to_device


@dataclass
class Optimisation:
    """What a step needs: the network, its optimiser and loss, where it runs; optionally a per-step
    learning-rate schedule and an AMP gradient scaler (CUDA fp16)."""

    net: torch.nn.Module
    opt: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    rt: Runtime
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None


def train_step(o: Optimisation, x: torch.Tensor, y: torch.Tensor) -> float:
    """One step on the batch ``x`` (``(B, 1, S, S)``) with labels ``y`` (0/1); returns the batch loss."""
    x = to_device(x, o.rt)
    y = torch.as_tensor(y, dtype=torch.float32).to(o.rt.device)
    with o.rt.autocast():
        logits = o.net(x).float().reshape(-1)
    loss = o.loss_fn(logits, y)
    o.opt.zero_grad(set_to_none=True)
    if o.scaler is not None and o.scaler.is_enabled():
        o.scaler.scale(loss).backward()
        o.scaler.step(o.opt)
        o.scaler.update()
    else:
        loss.backward()
        o.opt.step()
    if o.sched is not None:
        o.sched.step()
    return float(loss.detach())


@dataclass(frozen=True)
class Checkpoints:
    """Where a loop's checkpoints go: ``folder/epoch_NNN.pt`` for every epoch, or with ``single`` one file
    (``folder/<single>``) replaced after each epoch."""

    folder: Path
    single: str | None = None

    def path(self, epoch: int) -> Path:
        return self.folder / (self.single or f"epoch_{epoch:03d}.pt")

    def exist(self) -> bool:
        return (self.folder / self.single).is_file() if self.single else any(self.folder.glob("epoch_*.pt"))

    def last(self) -> dict[str, Any] | None:
        """The newest checkpoint, or None."""
        if self.single:
            found = [self.folder / self.single] if (self.folder / self.single).is_file() else []
        else:
            found = sorted(self.folder.glob("epoch_*.pt"))
        return torch.load(found[-1], map_location="cpu", weights_only=True) if found else None

    def save(self, epoch: int, payload: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(epoch)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)


class EpochFit(Protocol):
    """One way of fitting, epoch by epoch (what :class:`EpochLoop` runs)."""

    def epoch(self, n: int) -> dict[str, Any]:
        """Fit epoch ``n`` (from 0) and return its history record: JSON-able, with the loop's score,
        ``train_loss`` and ``seconds`` (what :class:`~cxrscreen.events.EpochDone` reports)."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume (tensors and JSON-able values)."""

    def restore(self, state: dict[str, Any], next_epoch: int) -> None:
        """Take up a checkpoint's state before epoch ``next_epoch``."""

    def keep_best(self, n: int, record: dict[str, Any]) -> dict[str, Any]:
        """Epoch ``n`` is the best so far: keep what the result needs; returns JSON-able extras for ``best``."""


@dataclass
class EpochLoop:
    """``epochs`` epochs of a fit, a checkpoint after each, the best by ``score`` (a history field, higher
    is better); with ``resume`` the loop goes on after the newest checkpoint."""

    epochs: int
    checkpoints: Checkpoints
    score: str
    resume: bool = False
    emit: ProgressFn = field(default=ignore)

    def run(self, fit: EpochFit) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(history, best); ``best`` holds ``epoch``, the score and what :meth:`EpochFit.keep_best` added.
        ``ValueError`` when no epoch was fitted."""
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"epoch": -1, self.score: float("-inf")}
        ck = self.checkpoints.last() if self.resume else None
        if ck is not None:
            history, best = json.loads(ck["history"]), json.loads(ck["best"])
            fit.restore(ck["state"], len(history))
            self.emit(Resumed(len(history)))
        for n in range(len(history), self.epochs):
            record = fit.epoch(n)
            history.append(record)
            if record[self.score] > best[self.score]:
                best = {"epoch": n, self.score: record[self.score], **fit.keep_best(n, record)}
            self.checkpoints.save(n, {"state": fit.state(), "epoch": n, "history": json.dumps(history),
                                      "best": json.dumps(best)})
            self.emit(EpochDone(n, record["train_loss"], self.score, record[self.score], record["seconds"],
                                best["epoch"]))
        if best["epoch"] < 0:
            raise ValueError("no epoch was trained (--epochs must be at least 1)")
        return history, best
