"""Training loop: ResNet50, adamax + class-weighted BCE, bf16/AMP, checkpoints, resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from cxrscreen import __version__
from cxrscreen.model.architecture import build_resnet50, imgsim_weights_path, load_torchvision_backbone
from cxrscreen.model.files import load_model, save_model
from cxrscreen.model.inference import Runtime, choose_runtime, predict_batch, prepare
from cxrscreen.options import Optimizer, TrainPrecision, parse
from cxrscreen.preprocess import PreprocessSpec
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.training.data import make_dataset, read_manifest
from cxrscreen.training.metrics import auroc


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


ProgressFn = Callable[[dict[str, Any]], None]


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


def train(cfg: TrainConfig, resume: bool = False, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train; returns the metadata of the best model (written to ``OUT/model.json``)."""
    optimizer = parse(Optimizer, cfg.optimizer, "--optimizer")
    parse(TrainPrecision, cfg.precision, "--precision")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    set_determinism(seed=cfg.seed)
    spec = PreprocessSpec(input_size=cfg.input_size)
    rt = choose_runtime(cfg.device, cfg.precision)

    train_df = _subsample(read_manifest(cfg.manifest, "train"), cfg.limit, cfg.seed)
    val_df = _subsample(read_manifest(cfg.manifest, "val"), cfg.limit, cfg.seed)
    n_pos = int(train_df["label"].sum())
    n_neg = len(train_df) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the train split needs both normal and abnormal images")

    emit = progress or (lambda _e: None)
    emit({"event": "caching", "train": len(train_df), "val": len(val_df)})
    train_ds = make_dataset(train_df, spec, augment=cfg.augment, num_workers=max(cfg.workers, 1))
    val_ds = make_dataset(val_df, spec, augment=False, num_workers=max(cfg.workers, 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_df) > cfg.batch_size,
        num_workers=cfg.workers, generator=gen, persistent_workers=cfg.workers > 0,
    )
    val_loader = DataLoader(val_ds, batch_size=64, shuffle=False, num_workers=0)

    net = build_model(cfg.init) if not resume or not ckpt_path.exists() else build_resnet50()
    net = prepare(net, rt).train()
    pos_weight = torch.tensor([n_neg / n_pos if cfg.class_weighting else 1.0], device=rt.device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optim = {Optimizer.adamax: torch.optim.Adamax, Optimizer.adamw: torch.optim.AdamW}[optimizer]
    opt = optim(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(len(train_loader), 1)
    total = steps_per_epoch * cfg.epochs
    warmup = min(200, total // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(total - warmup, 1)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cuda", enabled=rt.device.type == "cuda" and rt.autocast_dtype == torch.float16)

    start_epoch, history, best = 0, [], {"auroc": -1.0, "epoch": -1}
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, history = int(ck["epoch"]) + 1, json.loads(ck["history"])
        best = json.loads(ck["best"])
        torch.set_rng_state(ck["rng"])
        gen.manual_seed(cfg.seed + start_epoch)
        emit({"event": "resumed", "epoch": start_epoch})

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        for step, batch in enumerate(train_loader):
            x = batch["image"].to(rt.device)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(batch["label"], dtype=torch.float32, device=rt.device)
            with rt.autocast():
                logits = net(x).float().reshape(-1)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            emit({"event": "step", "epoch": epoch, "step": step + 1, "steps": steps_per_epoch,
                  "loss": loss_sum / seen, "img_s": seen / (time.time() - t0)})
        probs, labels = score_loader(net, val_loader, rt)
        val_auc = auroc(labels, probs)
        rec = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_auroc": val_auc,
               "seconds": time.time() - t0}
        history.append(rec)
        if val_auc > best["auroc"]:
            best = {"auroc": val_auc, "epoch": epoch}
            _export(net, cfg, spec, rt, history, best, out / "model.json")
            np.save(out / "val_scores.npy", probs)
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "epoch": epoch, "history": json.dumps(history),
                    "best": json.dumps(best), "rng": torch.get_rng_state()}, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(ckpt_path)
        atomic_write_text(out / "history.json", json.dumps(history, indent=2) + "\n")
        emit({"event": "epoch", **rec, "best_epoch": best["epoch"]})

    meta = json.loads((out / "model.json").read_text())
    return meta


def _export(net, cfg: TrainConfig, spec: PreprocessSpec, rt: Runtime, history, best, path: Path) -> None:
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
