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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose

from cxrscreen.events import AdaptDone, ProgressFn, SitePrepared, SitePreparing, ignore
from cxrscreen.model.files import LoadedModel, load_model, save_model
from cxrscreen.model.inference import Runtime, choose_runtime, inference_net, predict_batch, prepare
from cxrscreen.options import OptionError, TrainLayers, TrainPrecision, parse
from cxrscreen.outputs.worklist import write_csv
from cxrscreen.preprocess import PreprocessSpec, augment_transforms, normalize_transforms
from cxrscreen.state.atomic import atomic_write_text
from cxrscreen.training.calibrate import calibration_record, pick_threshold
from cxrscreen.training.head import Head, balanced_weights, extract, feature_net, fit_head
from cxrscreen.training.loop import Checkpoints, EpochLoop, Optimisation, train_step
from cxrscreen.training.metrics import auroc, summarize
from cxrscreen.training.site import prepare_site, splits_frame
from cxrscreen.version import __version__

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

    def __post_init__(self) -> None:
        parse(TrainLayers, self.train_layers, "--train-layers")
        parse(TrainPrecision, self.precision, "--precision")
        if self.init != "default" and not Path(self.init).is_file():
            raise OptionError(f"--init: {self.init} is neither 'default' nor an existing model file")
        if not Path(self.dicom_dir).is_dir():
            raise OptionError(f"{self.dicom_dir}: not a folder")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise OptionError("--target-sensitivity must be above 0 and at most 1")


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


def train_epoch(step: Optimisation, images: torch.Tensor, labels: np.ndarray, spec: PreprocessSpec,
                batch_size: int, seed: int) -> float:
    """One epoch over class-balanced batches of augmented films; batch-norm statistics stay frozen."""
    augment = Compose([*augment_transforms(), *normalize_transforms(spec)])
    augment.set_random_state(seed=seed)
    step.net.eval()  # frozen running statistics: small site batches must not move them
    order = _epoch_order(len(labels), labels, seed)
    total, seen = 0.0, 0
    for i in range(0, len(order), batch_size):
        take = order[i:i + batch_size]
        x = torch.stack([torch.as_tensor(augment(images[j])) for j in take])
        total += train_step(step, x, torch.as_tensor(labels[take], dtype=torch.float32)) * len(take)
        seen += len(take)
    return total / max(seen, 1)


def _trainable_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in net.state_dict().items() if k in names}


# --------------------------------------------------------------------------- the two ways to fine-tune
@dataclass
class SiteSplits:
    """What a fit learns from and is selected on: the train and calibration films (the chain's output
    before normalisation) and their labels."""

    train: torch.Tensor
    y_train: np.ndarray
    cal: torch.Tensor
    y_cal: np.ndarray


def film_views(images: torch.Tensor, spec: PreprocessSpec, epoch: int, seed: int) -> list[torch.Tensor]:
    """Epoch 0: the films as ``scan`` sees them; later epochs: one seeded augmented view of each."""
    parts = ([*augment_transforms(), *normalize_transforms(spec)] if epoch else normalize_transforms(spec))
    chain = Compose(parts)
    chain.set_random_state(seed=seed * 1000 + epoch)
    return [torch.as_tensor(chain(x)) for x in images]


def batched(items: list[torch.Tensor], size: int = 32):
    return (torch.stack(items[i:i + size]) for i in range(0, len(items), size))


class HeadFit:
    """Frozen backbone, new head: each epoch adds one augmented view of every training film to the pool
    of features (the backbone runs in inference mode, as ``scan`` runs it) and refits the head; the
    epoch with the best calibration AUROC is kept."""

    def __init__(self, start: torch.nn.Module, films: SiteSplits, spec: PreprocessSpec, rt: Runtime,
                 seed: int) -> None:
        self.start, self.films, self.spec, self.rt, self.seed = start, films, spec, rt, seed
        self.scorer = feature_net(start, rt)
        self.cal_x = extract(self.scorer, batched(film_views(films.cal, spec, 0, seed)), rt)
        self.pool_x, self.pool_y = np.zeros((0, self.cal_x.shape[1]), np.float32), np.zeros(0, int)
        self.head: Head | None = None

    def epoch(self, n: int) -> dict[str, Any]:
        t = time.time()
        views = extract(self.scorer, batched(film_views(self.films.train, self.spec, n, self.seed)), self.rt)
        self.pool_x = np.concatenate([self.pool_x, views])
        self.pool_y = np.r_[self.pool_y, self.films.y_train]
        weights = balanced_weights(np.zeros(len(self.pool_y)), self.pool_y)
        self.head = fit_head(self.pool_x, self.pool_y, weights, [self.cal_x], [self.films.y_cal])
        p = 1.0 / (1.0 + np.exp(-np.clip(self.head.logits(self.pool_x), -30, 30)))
        y = self.pool_y
        loss = float(-np.average(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12), weights=weights))
        return {"epoch": n, "train_loss": loss, "calibration_auroc": self.head.held_out_auroc, "C": self.head.C,
                "views": int(len(y)), "seconds": time.time() - t}

    def state(self) -> dict[str, Any]:
        return {"pool_x": torch.from_numpy(self.pool_x), "pool_y": torch.from_numpy(self.pool_y)}

    def restore(self, state: dict[str, Any], next_epoch: int) -> None:
        self.pool_x, self.pool_y = state["pool_x"].numpy(), state["pool_y"].numpy()

    def keep_best(self, n: int, record: dict[str, Any]) -> dict[str, Any]:
        assert self.head is not None
        return {"auroc": self.head.held_out_auroc, "C": self.head.C, "weight": self.head.weight.tolist(),
                "bias": self.head.bias}

    def result(self, best: dict[str, Any]) -> torch.nn.Module:
        """The starting network with the best epoch's head; ``best`` loses the head's numbers."""
        net = copy.deepcopy(self.start)
        Head(np.asarray(best.pop("weight")), float(best.pop("bias")), float(best["C"]), best["auroc"]).install(net)
        return net


class LayersFit:
    """Gradient fine-tuning of layer4 (or everything) + head on augmented films (meant for a GPU); the
    epoch with the best calibration AUROC is kept (``best.pt`` beside the checkpoints)."""

    def __init__(self, start: torch.nn.Module, films: SiteSplits, spec: PreprocessSpec, rt: Runtime,
                 cfg: AdaptConfig, ckpt_dir: Path) -> None:
        self.films, self.spec, self.cfg, self.ckpt_dir = films, spec, cfg, ckpt_dir
        net = prepare(copy.deepcopy(start), rt)
        opt = torch.optim.Adamax(set_trainable(net, cfg.train_layers), lr=cfg.lr)
        self.step = Optimisation(net, opt, torch.nn.BCEWithLogitsLoss(), rt)

    def epoch(self, n: int) -> dict[str, Any]:
        t = time.time()
        f, cfg = self.films, self.cfg
        loss = train_epoch(self.step, f.train, f.y_train, self.spec, cfg.batch_size, cfg.seed * 1000 + n)
        cal_auc = auroc(f.y_cal, score(self.step.net, f.cal, self.spec, self.step.rt))
        return {"epoch": n, "train_loss": loss, "calibration_auroc": cal_auc, "seconds": time.time() - t}

    def state(self) -> dict[str, Any]:
        return {"trainable": _trainable_state(self.step.net), "optimizer": self.step.opt.state_dict()}

    def restore(self, state: dict[str, Any], next_epoch: int) -> None:
        self.step.net.load_state_dict(state["trainable"], strict=False)
        self.step.opt.load_state_dict(state["optimizer"])

    def keep_best(self, n: int, record: dict[str, Any]) -> dict[str, Any]:
        torch.save(_trainable_state(self.step.net), self.ckpt_dir / "best.pt")
        return {"auroc": record["calibration_auroc"]}

    def result(self, best: dict[str, Any]) -> torch.nn.Module:
        net = self.step.net
        net.load_state_dict(torch.load(self.ckpt_dir / "best.pt", map_location="cpu", weights_only=True),
                            strict=False)
        return net.float().cpu()


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
    emit = progress or ignore
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
    emit(SitePreparing(cfg.dicom_dir))
    site = prepare_site(Path(cfg.dicom_dir), Path(cfg.labels), spec, cfg.seed, cfg.min_per_class)
    write_csv(splits_frame(site), out / "splits.csv")
    if len(site.unmatched_labels):
        write_csv(site.unmatched_labels, out / "unmatched_labels.csv")
    j = site.join
    emit(SitePrepared(time.time() - t0, j["films_found"], j["qc_rejected"], j["labelled"], j["label_rows_unmatched"],
                      j["usable"]))

    tr, cal, te = (site.rows(s) for s in ("train", "calibration", "test"))
    y_tr, y_cal, y_te = (site.labels(s) for s in ("train", "calibration", "test"))
    start_test = score(lm.net, site.images[te], spec, rt)

    films = SiteSplits(site.images[tr], y_tr, site.images[cal], y_cal)
    fit = (HeadFit(lm.net, films, spec, rt, cfg.seed) if layers is TrainLayers.head
           else LayersFit(lm.net, films, spec, rt, cfg, ckpt_dir))
    loop = EpochLoop(cfg.epochs, Checkpoints(ckpt_dir), "calibration_auroc", resume=resume, emit=emit)
    history, best = loop.run(fit)
    net = fit.result(best)

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
        # one threshold, calibrated on the site's films: the starting model's operating points were set
        # for its own network and populations, not for the adapted one
        dropped = ("sha256", "weights_file", "weights_dtype", "metrics", "operating_points")
        meta = {k: v for k, v in lm.meta.items() if k not in dropped}
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
    emit(AdaptDone(passed))
    return AdaptResult(passed, reasons, model_path, md, pdf, summary)


def _compact(m: dict[str, Any]) -> dict[str, Any]:
    return {"n": m["n"], "auroc": m["auroc"],
            **{k: {kk: m[k][kk] for kk in ("value", "ci_low", "ci_high")} for k in ("sensitivity", "specificity")},
            "confusion": m["confusion"]}
