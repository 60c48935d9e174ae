"""Training loop: ResNet50, adamax + class-weighted BCE, bf16/AMP, checkpoints, resume."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from cxrscreen.events import CachingImages, ProgressFn, TrainStep, ignore
from cxrscreen.model.architecture import build_resnet50, imgsim_weights_path, load_torchvision_backbone
from cxrscreen.model.files import load_model, save_model
from cxrscreen.model.inference import Runtime, choose_runtime, predict_batch, prepare
from cxrscreen.options import Optimizer, OptionError, TrainPrecision, parse
from cxrscreen.preprocess import PreprocessSpec
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.training.data import make_dataset, read_manifest
from cxrscreen.training.loop import Checkpoints, EpochLoop, Optimisation, train_step
from cxrscreen.training.metrics import auroc
from cxrscreen.version import __version__


@dataclass
class TrainConfig:
    """Options of ``cxrscreen train`` (also stored in the model metadata)."""

    manifest: str
    out: str
    init: str = "imgsim"
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamax"
    class_weighting: bool = True
    augment: bool = True
    seed: int = 0
    input_size: int = 224
    device: str = "auto"
    precision: str = "auto"
    workers: int = 0
    limit: int | None = None  # cap per split (smoke runs)
    threshold: float = 0.5
    name: str = "cxrscreen-resnet50"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse(Optimizer, self.optimizer, "--optimizer")
        parse(TrainPrecision, self.precision, "--precision")
        if self.init not in ("imgsim", "none", "default") and not Path(self.init).is_file():
            raise OptionError(f"--init: {self.init} is neither 'imgsim', 'none', 'default' nor an existing file")
        if self.epochs < 1:
            raise OptionError("--epochs must be at least 1")




def _subsample(df, n: int | None, seed: int):
    if n is None or len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def build_model(init: str) -> torch.nn.Module:
    """``none`` (random), ``imgsim``, ``default`` or a cxrscreen model file (fine-tune a whole
    model, e.g. the embedded one at a new site), or a torchvision-layout ResNet50 state dict."""
    if init == "default" or Path(init).suffix in (".json", ".safetensors"):
        return load_model(None if init == "default" else init).net.train()
    net = build_resnet50()
    if init == "none":
        return net
    path = imgsim_weights_path() if init == "imgsim" else Path(init)
    load_torchvision_backbone(net, path)
    return net


@torch.inference_mode()
def score_loader(net: torch.nn.Module, loader: DataLoader, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    probs, labels = [], []
    for batch in loader:
        probs.append(predict_batch(net, batch["image"], rt).numpy())
        labels.append(np.asarray(batch["label"]))
    return np.concatenate(probs), np.concatenate(labels)


@dataclass
class _Data:
    """The manifest's splits as loaders, and the class balance of ``train``."""

    train: DataLoader
    val: DataLoader
    generator: torch.Generator
    n_pos: int
    n_neg: int


def _data(cfg: TrainConfig, spec: PreprocessSpec, emit: ProgressFn) -> _Data:
    train_df = _subsample(read_manifest(cfg.manifest, "train"), cfg.limit, cfg.seed)
    val_df = _subsample(read_manifest(cfg.manifest, "val"), cfg.limit, cfg.seed)
    n_pos = int(train_df["label"].sum())
    n_neg = len(train_df) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the train split needs both normal and abnormal images")
    emit(CachingImages(len(train_df), len(val_df)))
    train_ds = make_dataset(train_df, spec, augment=cfg.augment, num_workers=max(cfg.workers, 1))
    val_ds = make_dataset(val_df, spec, augment=False, num_workers=max(cfg.workers, 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_df) > cfg.batch_size,
        num_workers=cfg.workers, generator=gen, persistent_workers=cfg.workers > 0,
    )
    return _Data(train_loader, DataLoader(val_ds, batch_size=64, shuffle=False, num_workers=0), gen, n_pos, n_neg)


def _schedule(opt: torch.optim.Optimizer, steps_per_epoch: int, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up (at most 200 steps, a tenth of the run), then cosine decay to 2 % of the peak."""
    total = steps_per_epoch * epochs
    warmup = min(200, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


class _TrainFit:
    """``train``'s :class:`~cxrscreen.training.loop.EpochFit`: every step over the train loader, val AUROC
    after each epoch; the best epoch is exported as ``OUT/model.json`` when it happens."""

    def __init__(self, cfg: TrainConfig, data: _Data, step: Optimisation, spec: PreprocessSpec,
                 emit: ProgressFn) -> None:
        self.cfg, self.data, self.step, self.spec, self.emit = cfg, data, step, spec, emit
        self.history: list[dict[str, Any]] = []
        self.probs = np.zeros(0)

    def epoch(self, n: int) -> dict[str, Any]:
        net, rt = self.step.net, self.step.rt
        net.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        steps = max(len(self.data.train), 1)
        for i, batch in enumerate(self.data.train):
            loss = train_step(self.step, batch["image"], batch["label"])
            seen += len(batch["label"])
            loss_sum += loss * len(batch["label"])
            self.emit(TrainStep(n, i + 1, steps, loss_sum / seen, seen / (time.time() - t0)))
        self.probs, labels = score_loader(net, self.data.val, rt)
        rec = {"epoch": n, "train_loss": loss_sum / max(seen, 1), "val_auroc": auroc(labels, self.probs),
               "seconds": time.time() - t0}
        self.history.append(rec)
        atomic_write_text(Path(self.cfg.out) / "history.json", json.dumps(self.history, indent=2) + "\n")
        return rec

    def state(self) -> dict[str, Any]:
        return {"model": self.step.net.state_dict(), "optimizer": self.step.opt.state_dict(),
                "scheduler": self.step.sched.state_dict() if self.step.sched else {}, "rng": torch.get_rng_state()}

    def restore(self, state: dict[str, Any], next_epoch: int) -> None:
        self.step.net.load_state_dict(state["model"])
        self.step.opt.load_state_dict(state["optimizer"])
        if self.step.sched is not None:
            self.step.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.data.generator.manual_seed(self.cfg.seed + next_epoch)
        history = Path(self.cfg.out) / "history.json"
        self.history = json.loads(history.read_text()) if history.is_file() else []

    def keep_best(self, n: int, record: dict[str, Any]) -> dict[str, Any]:
        best = {"auroc": record["val_auroc"], "epoch": n}
        out = Path(self.cfg.out)
        _export(self.step.net, self.cfg, self.spec, self.step.rt, (self.history, best), out / "model.json")
        np.save(out / "val_scores.npy", self.probs)
        return {"auroc": record["val_auroc"]}


def train(cfg: TrainConfig, resume: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train; returns the metadata of the best model (written to ``OUT/model.json``).

    ``FileExistsError`` when OUT holds a checkpoint and ``resume`` is not asked for."""
    optimizer = parse(Optimizer, cfg.optimizer, "--optimizer")
    out = Path(cfg.out)
    checkpoints = Checkpoints(out, single="checkpoint.pt")
    if checkpoints.exist() and not resume:
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    set_determinism(seed=cfg.seed)
    spec = PreprocessSpec(input_size=cfg.input_size)
    rt = choose_runtime(cfg.device, cfg.precision)
    emit = progress or ignore
    data = _data(cfg, spec, emit)
    resuming = resume and checkpoints.exist()
    net = prepare(build_model(cfg.init) if not resuming else build_resnet50(), rt).train()
    pos_weight = torch.tensor([data.n_neg / data.n_pos if cfg.class_weighting else 1.0], device=rt.device)
    optim = {Optimizer.adamax: torch.optim.Adamax, Optimizer.adamw: torch.optim.AdamW}[optimizer]
    opt = optim(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.device.type == "cuda" and rt.autocast_dtype == torch.float16)
    step = Optimisation(net, opt, torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight), rt,
                        _schedule(opt, max(len(data.train), 1), cfg.epochs), scaler)
    loop = EpochLoop(cfg.epochs, checkpoints, "val_auroc", resume=resume, emit=emit)
    loop.run(_TrainFit(cfg, data, step, spec, emit))
    return json.loads((out / "model.json").read_text())


def _export(net, cfg: TrainConfig, spec: PreprocessSpec, rt: Runtime, progress: tuple[list, dict], path: Path) -> None:
    history, best = progress
    meta = {
        "name": cfg.name,
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": {"name": "resnet50", "in_channels": 1, "num_classes": 1,
                         "implementation": "monai.networks.nets.resnet50(conv1_t_size=7, conv1_t_stride=2, "
                                           "bias_downsample=False)"},
        "preprocess": spec.to_dict(),
        "threshold": cfg.threshold,
        "threshold_source": "default 0.5 (not calibrated)",
        "labels": {"0": "normal", "1": "abnormal"},
        "output": "one logit; sigmoid(logit) = P(abnormal)",
        "training": {"config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
                     "runtime": rt.describe(), "history": history, "best": best, **cfg.extra},
    }
    save_model(net, meta, path, dtype=torch.float16)
