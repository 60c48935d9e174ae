"""``adapt``: fine-tune a model on a site's own labelled films, calibrate it, validate it, gate it.

The site's films are prepared once through the scan path (:mod:`cxrscreen.training.site`), split by
patient into train / calibration / test, and the starting model is fine-tuned on train with
augmentation (a checkpoint per epoch, ``--resume``); the epoch with the best calibration AUROC is
kept, its threshold is calibrated on the calibration split, and both models are scored on the site
test split. ``MODEL_DIR/model.json`` is written only when the adapted model passes the acceptance
gate; the validation report is written either way.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from cxrscreen import __version__
from cxrscreen.model.files import LoadedModel, load_model, save_model
from cxrscreen.model.inference import Runtime, choose_runtime, inference_net, predict_batch, prepare
from cxrscreen.options import TrainLayers, TrainPrecision, parse
from cxrscreen.outputs.worklist import write_csv
from cxrscreen.preprocess import PreprocessSpec, augment_transforms, normalize_transforms
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.training.calibrate import calibration_record, pick_threshold
from cxrscreen.training.head import Head, balanced_weights, extract, feature_net, fit_head
from cxrscreen.training.metrics import auroc, summarize
from cxrscreen.training.site import prepare_site, splits_frame

ProgressFn = Callable[[dict[str, Any]], None]
TRAINABLE = {TrainLayers.head: ("fc",), TrainLayers.layer4: ("layer4", "fc"), TrainLayers.all: ("",)}


@dataclass
class AdaptConfig:
    """Options of ``cxrscreen adapt`` (stored in the adapted model's metadata)."""

    dicom_dir: str
    labels: str
    out: str
    init: str = "default"
    target_sensitivity: float = 0.95
    require_lower_bound: bool = False
    epochs: int = 4
    seed: int = 0
    batch_size: int = 16
    lr: float = 2e-4
    train_layers: str = "head"
    min_auroc_gain: float = 0.0  # gate: adapted test AUROC ≥ starting AUROC + this
    sensitivity_margin: float = 0.05  # gate: adapted test sensitivity ≥ target − this
    device: str = "auto"
    precision: str = "auto"
    name: str | None = None
    min_per_class: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdaptResult:
    """What ``adapt`` concluded; ``passed`` decides whether ``model_path`` exists."""

    passed: bool
    reasons: list[str]
    model_path: Path | None
    report_md: Path
    report_pdf: Path
    summary: dict[str, Any]


# --------------------------------------------------------------------------- model pieces
def start_model(init: str) -> LoadedModel:
    """``default`` (the embedded model) or a cxrscreen model file."""
    return load_model(None if init == "default" else init)


def set_trainable(net: torch.nn.Module, layers: TrainLayers | str) -> list[torch.nn.Parameter]:
    """Freeze all but ``layers`` (a :class:`TrainLayers`); returns the parameters left to train."""
    prefixes = TRAINABLE[parse(TrainLayers, layers, "--train-layers")]
    params = []
    for name, p in net.named_parameters():
        p.requires_grad_(any(name.startswith(pre) for pre in prefixes))
        if p.requires_grad:
            params.append(p)
    return params


@torch.inference_mode()
def score(net: torch.nn.Module, images: torch.Tensor, spec: PreprocessSpec, rt: Runtime,
          batch_size: int = 32) -> np.ndarray:
    """P(abnormal) for cached chain outputs, normalised as ``scan`` does and scored by its scorer."""
    normalise = Compose(normalize_transforms(spec))
    scorer = inference_net(net, rt)
    out = [predict_batch(scorer, torch.stack([normalise(x) for x in images[i:i + batch_size]]), rt).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _epoch_order(n: int, labels: np.ndarray, seed: int) -> np.ndarray:
    """A class-balanced epoch: every film once, the rarer class resampled up to the commoner's count."""
    rng = np.random.default_rng(seed)
    idx = [np.flatnonzero(labels == c) for c in (0, 1)]
    big = max(len(i) for i in idx)
    order = np.concatenate([np.r_[i, rng.choice(i, big - len(i))] if len(i) < big else i for i in idx])
    return rng.permutation(order)


def train_epoch(net: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, labels: np.ndarray,
                spec: PreprocessSpec, rt: Runtime, batch_size: int, seed: int) -> float:
    """One epoch over class-balanced batches of augmented films; batch-norm statistics stay frozen."""
    augment = Compose([*augment_transforms(), *normalize_transforms(spec)])
    augment.set_random_state(seed=seed)
    net.eval()  # frozen running statistics: small site batches must not move them
    loss_fn = torch.nn.BCEWithLogitsLoss()
    order = _epoch_order(len(labels), labels, seed)
    total, seen = 0.0, 0
    for i in range(0, len(order), batch_size):
        take = order[i:i + batch_size]
        x = torch.stack([torch.as_tensor(augment(images[j])) for j in take]).to(rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(labels[take], dtype=torch.float32, device=rt.device)
        with rt.autocast():
            logits = net(x).float().reshape(-1)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(take)
        seen += len(take)
    return total / max(seen, 1)


def _trainable_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in net.state_dict().items() if k in names}


# --------------------------------------------------------------------------- the two ways to fine-tune
Fitted = tuple[torch.nn.Module, list[dict[str, Any]], dict[str, Any]]


def _last_checkpoint(ckpt_dir: Path, resume: bool) -> dict[str, Any] | None:
    done = sorted(ckpt_dir.glob("epoch_*.pt")) if resume else []
    return torch.load(done[-1], map_location="cpu", weights_only=True) if done else None


def film_views(images: torch.Tensor, spec: PreprocessSpec, epoch: int, seed: int) -> list[torch.Tensor]:
    """Epoch 0: the films as ``scan`` sees them; later epochs: one seeded augmented view of each."""
    parts = ([*augment_transforms(), *normalize_transforms(spec)] if epoch else normalize_transforms(spec))
    chain = Compose(parts)
    chain.set_random_state(seed=seed * 1000 + epoch)
    return [torch.as_tensor(chain(x)) for x in images]


def batched(items: list[torch.Tensor], size: int = 32):
    return (torch.stack(items[i:i + size]) for i in range(0, len(items), size))


def _fit_head(start: torch.nn.Module, train: torch.Tensor, y_train: np.ndarray, cal: torch.Tensor,
              y_cal: np.ndarray, spec: PreprocessSpec, rt: Runtime, cfg: AdaptConfig, ckpt_dir: Path, resume: bool,
              emit: ProgressFn) -> Fitted:
    """Frozen backbone, new head: each epoch adds one augmented view of every training film to the pool
    of features (the backbone runs in inference mode, as ``scan`` runs it) and refits the head; the
    epoch with the best calibration AUROC is kept."""
    scorer = feature_net(start, rt)
    cal_x = extract(scorer, batched(film_views(cal, spec, 0, cfg.seed)), rt)
    pool_x, pool_y = np.zeros((0, cal_x.shape[1]), np.float32), np.zeros(0, int)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "auroc": -math.inf}
    ck = _last_checkpoint(ckpt_dir, resume)
    if ck is not None:
        pool_x, pool_y = ck["pool_x"].numpy(), ck["pool_y"].numpy()
        history, best = json.loads(ck["history"]), json.loads(ck["best"])
        emit({"event": "resumed", "epoch": int(ck["epoch"]) + 1})
    for epoch in range(len(history), cfg.epochs):
        t = time.time()
        pool_x = np.concatenate([pool_x, extract(scorer, batched(film_views(train, spec, epoch, cfg.seed)), rt)])
        pool_y = np.r_[pool_y, y_train]
        weights = balanced_weights(np.zeros(len(pool_y)), pool_y)
        head = fit_head(pool_x, pool_y, weights, [cal_x], [y_cal])
        p = 1.0 / (1.0 + np.exp(-np.clip(head.logits(pool_x), -30, 30)))
        loss = float(-np.average(pool_y * np.log(p + 1e-12) + (1 - pool_y) * np.log(1 - p + 1e-12), weights=weights))
        history.append({"epoch": epoch, "train_loss": loss, "calibration_auroc": head.held_out_auroc,
                        "C": head.C, "views": int(len(pool_y)), "seconds": time.time() - t})
        if head.held_out_auroc > best["auroc"]:
            best = {"epoch": epoch, "auroc": head.held_out_auroc, "C": head.C,
                    "weight": head.weight.tolist(), "bias": head.bias}
        torch.save({"pool_x": torch.from_numpy(pool_x), "pool_y": torch.from_numpy(pool_y), "epoch": epoch,
                    "history": json.dumps(history), "best": json.dumps(best)}, ckpt_dir / f"epoch_{epoch:03d}.pt")
        emit({"event": "epoch", **history[-1], "best_epoch": best["epoch"]})
    if best["epoch"] < 0:
        raise ValueError("no epoch was trained (--epochs must be at least 1)")
    net = copy.deepcopy(start)
    Head(np.asarray(best.pop("weight")), float(best.pop("bias")), float(best["C"]), best["auroc"]).install(net)
    return net, history, best


def _fit_layers(start: torch.nn.Module, train: torch.Tensor, y_train: np.ndarray, cal: torch.Tensor,
                y_cal: np.ndarray, spec: PreprocessSpec, rt: Runtime, cfg: AdaptConfig, ckpt_dir: Path,
                resume: bool, emit: ProgressFn) -> Fitted:
    """Gradient fine-tuning of layer4 (or everything) + head on augmented films; for a GPU: on 2 CPU
    cores one epoch over ~300 films took 12 minutes."""
    net = prepare(copy.deepcopy(start), rt)
    params = set_trainable(net, cfg.train_layers)
    opt = torch.optim.Adamax(params, lr=cfg.lr)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "auroc": -math.inf}
    ck = _last_checkpoint(ckpt_dir, resume)
    if ck is not None:
        net.load_state_dict(ck["trainable"], strict=False)
        opt.load_state_dict(ck["optimizer"])
        history, best = json.loads(ck["history"]), json.loads(ck["best"])
        emit({"event": "resumed", "epoch": int(ck["epoch"]) + 1})
    for epoch in range(len(history), cfg.epochs):
        t = time.time()
        loss = train_epoch(net, opt, train, y_train, spec, rt, cfg.batch_size, cfg.seed * 1000 + epoch)
        cal_auc = auroc(y_cal, score(net, cal, spec, rt))
        history.append({"epoch": epoch, "train_loss": loss, "calibration_auroc": cal_auc, "seconds": time.time() - t})
        if cal_auc > best["auroc"]:
            best = {"epoch": epoch, "auroc": cal_auc}
            torch.save(_trainable_state(net), ckpt_dir / "best.pt")
        torch.save({"trainable": _trainable_state(net), "optimizer": opt.state_dict(), "epoch": epoch,
                    "history": json.dumps(history), "best": json.dumps(best)}, ckpt_dir / f"epoch_{epoch:03d}.pt")
        emit({"event": "epoch", **history[-1], "best_epoch": best["epoch"]})
    if best["epoch"] < 0:
        raise ValueError("no epoch was trained (--epochs must be at least 1)")
    net.load_state_dict(torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True), strict=False)
    return net.float().cpu(), history, best


# --------------------------------------------------------------------------- the gate
def gate(start: dict[str, Any], adapted: dict[str, Any], cfg: AdaptConfig) -> tuple[bool, list[str]]:
    """Acceptance: adapted test AUROC ≥ starting AUROC + gain, sensitivity ≥ target − margin."""
    reasons = []
    a_auc, s_auc = adapted["auroc"]["value"], start["auroc"]["value"]
    if not a_auc >= s_auc + cfg.min_auroc_gain:
        reasons.append(f"test AUROC {a_auc:.3f} is below the starting model's {s_auc:.3f}"
                       + (f" + {cfg.min_auroc_gain}" if cfg.min_auroc_gain else ""))
    need = cfg.target_sensitivity - cfg.sensitivity_margin
    sens = adapted["sensitivity"]["value"]
    if not sens >= need:
        reasons.append(f"test sensitivity {sens:.3f} is below {need:.3f} (target {cfg.target_sensitivity} − "
                       f"margin {cfg.sensitivity_margin})")
    return not reasons, reasons


# --------------------------------------------------------------------------- the command
def adapt(cfg: AdaptConfig, resume: bool = False, progress: ProgressFn | None = None) -> AdaptResult:
    """Run the whole adaptation; see the module docstring."""
    from cxrscreen.outputs.validation import write_validation_report

    layers = parse(TrainLayers, cfg.train_layers, "--train-layers")
    parse(TrainPrecision, cfg.precision, "--precision")
    emit = progress or (lambda _e: None)
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.is_dir() and any(ckpt_dir.glob("epoch_*.pt")) and not resume:
        raise FileExistsError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(exist_ok=True)
    rt = choose_runtime(cfg.device, cfg.precision)
    lm = start_model(cfg.init)
    spec = lm.spec

    t0 = time.time()
    emit({"event": "preparing", "folder": cfg.dicom_dir})
    site = prepare_site(Path(cfg.dicom_dir), Path(cfg.labels), spec, cfg.seed, cfg.min_per_class)
    write_csv(splits_frame(site), out / "splits.csv")
    if len(site.unmatched_labels):
        write_csv(site.unmatched_labels, out / "unmatched_labels.csv")
    emit({"event": "prepared", "seconds": time.time() - t0, **site.join})

    tr, cal, te = (site.rows(s) for s in ("train", "calibration", "test"))
    y_tr, y_cal, y_te = (site.labels(s) for s in ("train", "calibration", "test"))
    start_test = score(lm.net, site.images[te], spec, rt)

    fit = _fit_head if layers is TrainLayers.head else _fit_layers
    net, history, best = fit(lm.net, site.images[tr], y_tr, site.images[cal], y_cal, spec, rt, cfg, ckpt_dir,
                             resume, emit)

    cal_scores = score(net, site.images[cal], spec, rt)
    thr = pick_threshold(y_cal, cal_scores, cfg.target_sensitivity, cfg.require_lower_bound)
    test_scores = score(net, site.images[te], spec, rt)
    result = {
        "start": summarize(y_te, start_test, lm.threshold),
        "adapted": summarize(y_te, test_scores, thr),
    }
    passed, reasons = gate(result["start"], result["adapted"], cfg)
    calib = calibration_record(y_cal, cal_scores, thr, cfg.target_sensitivity, cfg.require_lower_bound,
                               "calibration", Path(cfg.labels).name)
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "software_version": __version__,
        "config": {k: v for k, v in asdict(cfg).items() if k != "extra"},
        "runtime": rt.describe(),
        "start_model": {"name": lm.name, "sha256": lm.sha256, "threshold": lm.threshold},
        "join": site.join,
        "splits": {s: {"films": int(len(site.rows(s))), "abnormal": int(site.labels(s).sum()),
                       "patients": int(site.table.loc[site.usable].query("split == @s")["patient"].nunique())}
                   for s in ("train", "calibration", "test")},
        "history": history,
        "best": best,
        "threshold": thr,
        "calibration": calib,
        "test": result,
        "gate": {"passed": passed, "reasons": reasons, "min_auroc_gain": cfg.min_auroc_gain,
                 "sensitivity_margin": cfg.sensitivity_margin},
        "seconds": round(time.time() - t0, 1),
    }
    model_path = None
    model_json = out / "model.json"
    if model_json.exists():
        model_json.unlink()  # a model from an earlier attempt must not outlive a failed gate
    if passed:
        meta = {k: v for k, v in lm.meta.items() if k not in ("sha256", "weights_file", "weights_dtype", "metrics")}
        meta.update({
            "name": cfg.name or f"{lm.name}-adapted",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "threshold": thr,
            "threshold_source": f"calibrated on the site's calibration split for sensitivity ≥ {cfg.target_sensitivity}"
                                + (" (95% lower bound)" if cfg.require_lower_bound else ""),
            "calibration": calib,
            "adaptation": {k: summary[k] for k in ("config", "start_model", "join", "splits", "history", "best",
                                                   "gate", "runtime")},
            "metrics": {"site:test": {"threshold": thr, "groups": {"site": _compact(result["adapted"])}}},
        })
        save_model(net, meta, model_json, dtype=torch.float16)
        model_path = model_json
    atomic_write_text(out / "adapt.json", json.dumps(summary, indent=2, default=float) + "\n")
    np.savez(out / "test_scores.npz", label=y_te, start=start_test, adapted=test_scores)
    md, pdf = write_validation_report(out, summary, y_te, start_test, test_scores)
    emit({"event": "done", "passed": passed})
    return AdaptResult(passed, reasons, model_path, md, pdf, summary)


def _compact(m: dict[str, Any]) -> dict[str, Any]:
    return {"n": m["n"], "auroc": m["auroc"],
            **{k: {kk: m[k][kk] for kk in ("value", "ci_low", "ci_high")} for k in ("sensitivity", "specificity")},
            "confusion": m["confusion"]}
