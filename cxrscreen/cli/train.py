"""``cxrscreen train``: train a ResNet50 from a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from cxrscreen.cli.common import DEVICE_HELP, TRAIN_PRECISION_HELP, Quiet, fail, is_tty
from cxrscreen.events import CachingImages, EpochDone, Event, Resumed, TrainStep
from cxrscreen.options import Device, Optimizer, TrainPrecision


def train_command(
    manifest: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="CSV with path,label,split (+dataset,group).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for checkpoints and the trained model.")],
    init: Annotated[str, typer.Option(help="imgsim | none | default (fine-tune the embedded model) | PATH: a cxrscreen model (.json) or a torchvision-layout ResNet50 state dict.")] = "imgsim",
    epochs: Annotated[int, typer.Option(min=1)] = 4,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    optimizer: Optimizer = Optimizer.adamax,
    class_weighting: Annotated[bool, typer.Option("--class-weighting/--no-class-weighting")] = True,
    augment: Annotated[bool, typer.Option("--augment/--no-augment")] = True,
    seed: int = 0,
    device: Annotated[Device, typer.Option(help=DEVICE_HELP)] = Device.auto,
    precision: Annotated[TrainPrecision, typer.Option(help=TRAIN_PRECISION_HELP)] = TrainPrecision.auto,
    workers: Annotated[int, typer.Option(min=0)] = 0,
    limit: Annotated[int | None, typer.Option(help="Use at most N images per split (smoke runs).")] = None,
    name: str = "cxrscreen-resnet50",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = False,
    quiet: Quiet = False,
) -> None:
    """Train a ResNet50 (one logit = abnormal); the best epoch by val AUROC is kept as OUT/model.json."""
    from cxrscreen.options import OptionError
    from cxrscreen.training.data import ManifestError
    from cxrscreen.training.train import TrainConfig, train

    try:
        cfg = TrainConfig(manifest=str(manifest), out=str(out), init=init, epochs=epochs, batch_size=batch_size,
                          lr=lr, optimizer=optimizer.value, class_weighting=class_weighting, augment=augment,
                          seed=seed, device=device.value, precision=precision.value, workers=workers, limit=limit,
                          name=name)
    except OptionError as exc:
        fail(str(exc))
    console = Console(stderr=True, quiet=quiet)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=console, disable=quiet or not is_tty())
    task = None

    def on_event(e: Event) -> None:
        nonlocal task
        match e:
            case TrainStep():
                desc = f"epoch {e.epoch + 1}/{epochs}"
                if not is_tty() and e.step % 50 == 0:  # a log line now and then under nohup/cron
                    console.print(f"{desc} step {e.step}/{e.steps}: loss {e.loss:.4f}, {e.img_s:.1f} img/s")
                if task is None:
                    task = progress.add_task(desc, total=e.steps, info="")
                progress.update(task, completed=e.step, total=e.steps, description=desc,
                                info=f"loss {e.loss:.4f} · {e.img_s:.1f} img/s")
            case EpochDone():
                if task is not None:
                    progress.remove_task(task)
                    task = None
                console.print(f"epoch {e.epoch + 1}: train loss {e.train_loss:.4f}, "
                              f"val AUROC {e.score:.4f} ({e.seconds:.0f} s; best epoch {e.best_epoch + 1})")
            case CachingImages():
                console.print(f"preparing {e.train} train and {e.val} val images")
            case Resumed():
                console.print(f"resuming at epoch {e.epoch + 1}")

    try:
        with progress:
            meta = train(cfg, resume=resume, progress=on_event)
    except (ManifestError, FileNotFoundError, FileExistsError, ValueError) as exc:
        fail(str(exc))
    console.print(f"model: {out / 'model.json'} (sha256 {meta['sha256'][:12]}, best epoch "
                  f"{meta['training']['best']['epoch'] + 1}, val AUROC {meta['training']['best']['auroc']:.4f})")
