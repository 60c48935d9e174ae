"""Default model v2 from a ``tools/train_v2.py`` run: pick the epoch on val, set one operating point per
population on val, and measure every test split per source and class.

    .venv/bin/python tools/v2_release.py manifests --work /tmp/v2     # WORK/eval_manifest.csv (all sources)
    .venv/bin/python tools/v2_release.py export --work /tmp/v2 [--epoch N] --out /tmp/v2/model/v2.json
    .venv/bin/python tools/v2_release.py report --work /tmp/v2 --model /tmp/v2/model/v2.json [--model default]

``eval_manifest.csv`` holds every film of cxr224, openist and site_nih (absolute paths; site_nih's split is
``adapt``'s patient split, seed 0, with its calibration patients as ``val``) and each film's population.
``export`` keeps the epoch of :data:`SELECTION` (or ``--epoch``), then calibrates on val only:

* pediatric: sensitivity ≥ ``--pediatric-target`` on kermany val;
* adult: the lower of the thresholds for sensitivity ≥ ``--site-target`` on the site calibration patients
  and ≥ ``--covid-target`` on covid_db val COVID-19 films.

``report`` scores the test films (and val) of every source with the scan's scorer at each film's
operating point, and prints sensitivity per abnormal source and specificity per normal source.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrscreen.model.architecture import build_resnet50
from cxrscreen.model.files import load_model, save_model
from cxrscreen.model.inference import runtime_for
from cxrscreen.populations import OperatingPoints
from cxrscreen.training.calibrate import calibration_record, pick_threshold
from cxrscreen.training.evaluate import row_thresholds, score_frame
from cxrscreen.training.metrics import auroc_ci, wilson_ci

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SITE = "site_nih"
SELECTION = ("highest mean val AUROC over covid_db, kermany, site_nih and the site's pneumonias against openist's "
             "normals (first rule, their minimum, changed after epoch 5: the minimum was always the site's AUROC, "
             "whose epoch-to-epoch changes were within the noise of its 97 films)")


def manifests(work: Path) -> Path:
    """Every film of the three sources in one manifest with absolute paths."""
    parts = []
    for name in ("cxr224", "openist"):
        man = pd.read_csv(DATA / name / "manifest.csv")
        man["path"] = [str((DATA / name / p).resolve()) for p in man.path]
        parts.append(man)
    films = torch.load(work / "films.pt", weights_only=False)
    t = pd.DataFrame(films["table"])
    site = t[t.dataset == SITE]
    parts.append(pd.DataFrame({
        "path": [str((DATA / SITE / "dicom" / p).resolve()) for p in site.id], "label": site.label,
        "dataset": SITE, "split": site.split.replace({"calibration": "val"}), "source_class": "",
        "group": site.group, "population": "adult, NIH Clinical Center"}))
    out = work / "eval_manifest.csv"
    pd.concat(parts, ignore_index=True).to_csv(out, index=False)
    return out


def best_epoch(work: Path) -> int:
    history = json.loads((work / "history.json").read_text())
    return max(history, key=lambda h: h["merit"])["epoch"]


def _val(work: Path) -> pd.DataFrame:
    from cxrscreen.training.data import read_manifest

    return read_manifest(work / "eval_manifest.csv", "val")


def export(args: argparse.Namespace) -> None:
    work = args.work
    epoch = args.epoch or best_epoch(work)
    history = json.loads((work / "history.json").read_text())
    base = load_model(None)  # architecture, preprocessing and labels: the same for every version
    net = _epoch_net(work, epoch)
    head_note = ""
    if args.head:
        from cxrscreen.training.head import Head

        h = np.load(work / f"head_epoch_{epoch}.npz")
        Head(h["weight"], float(h["bias"]), float(h["C"]), float(h["held_out_auroc"])).install(net)
        head_note = (f"fc refitted on the kept epoch's frozen features (logistic regression, C {float(h['C'])}, "
                     "cells weighted as in training: tools/v2_release.py head)")
    meta = {
        "name": "cxrscreen-resnet50-v2",
        "version": "0.2.0",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": base.meta["architecture"],
        "preprocess": base.meta["preprocess"],
        "threshold": 0.5,
        "labels": base.meta["labels"],
        "output": base.meta["output"],
        "training": {
            "tool": "tools/train_v2.py (full fine-tuning of every layer from v1, bf16 autocast, channels_last)",
            "data": "cxr224 train, site_nih train patients (adapt's split, seed 0), openist train",
            "sampling": "dataset × class cells: covid_db normal 0.5, site_nih normal 0.5, site_nih pneumonia 1, "
                        "openist normal 1, covid_db COVID-19 1, kermany normal 1, kermany pneumonia 1",
            "augmentation": "cxrscreen.training.augment.source_breaking_chain",
            "history": history, "kept_epoch": epoch,
            "selection": SELECTION,
            **({"head": head_note} if head_note else {}),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(net, meta, args.out, dtype=torch.float16)
    lm = load_model(args.out)
    rt = runtime_for(lm, "cpu", "auto")
    val = _val(work)
    scores = score_frame(lm, val, rt, batch_size=64)
    np.save(work / "release_val_scores.npy", scores)
    y, d = val.label.to_numpy(), val.dataset.to_numpy()
    kid = d == "kermany"
    ped = pick_threshold(y[kid], scores[kid], args.pediatric_target)
    site = pick_threshold(y[d == SITE], scores[d == SITE], args.site_target)
    covid = pick_threshold(y[d == "covid_db"], scores[d == "covid_db"], args.covid_target)
    adult = min(site, covid)
    grown = ~kid
    points = OperatingPoints.standard(ped, adult)
    src = "tools/v2_release.py on eval_manifest.csv:val"
    ped_rec = calibration_record(y[kid], scores[kid], ped, args.pediatric_target, False, "val", "kermany val")
    adult_rec = calibration_record(y[grown], scores[grown], adult, args.site_target, False, "val",
                                   "covid_db val + openist val + site_nih calibration patients")
    adult_rec["dataset_thresholds"] = {SITE: site, "covid_db": covid}
    adult_rec["dataset_targets"] = {SITE: args.site_target, "covid_db": args.covid_target}
    points = points.with_point(replace(points["pediatric"], calibration=ped_rec, threshold_source=(
        f"{src}: sensitivity ≥ {args.pediatric_target} on kermany val")))
    points = points.with_point(replace(points["adult"], calibration=adult_rec, threshold_source=(
        f"{src}: the lower of sensitivity ≥ {args.site_target} on the site_nih calibration patients and "
        f"≥ {args.covid_target} on covid_db val COVID-19 films")))
    meta = {k: v for k, v in lm.meta.items() if k not in ("sha256", "weights_file", "weights_dtype")}
    meta["threshold"] = adult
    meta["threshold_source"] = "one operating point per population (pediatric < 18 y, adult ≥ 18 y; default adult)"
    meta["operating_points"] = points.to_meta()
    save_model(lm.net, meta, args.out, dtype=torch.float16)
    print(f"epoch {epoch}: pediatric {ped:.4f}, adult {adult:.4f} (site {site:.4f}, covid {covid:.4f})")


def _epoch_net(work: Path, epoch: int) -> torch.nn.Module:
    net = build_resnet50()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v
                         for k, v in torch.load(work / f"epoch_{epoch}.pt", weights_only=True).items()})
    return net.eval()


def head(args: argparse.Namespace) -> None:
    """Refit the kept epoch's ``fc`` as a logistic regression on its frozen features, cells weighted as
    in training, C chosen by the weakest val AUROC (covid_db, kermany, site, site pneumonia vs openist);
    writes ``WORK/head_epoch_N.npz`` and prints both heads' val AUROCs."""
    from monai.data import set_track_meta
    from monai.transforms import Compose
    from train_v2 import DEFAULT_WEIGHTS  # beside this script

    from cxrscreen.model.inference import choose_runtime
    from cxrscreen.preprocess import PreprocessSpec, normalize_transforms
    from cxrscreen.training.augment import source_breaking_chain
    from cxrscreen.training.head import Head, extract, feature_net, fit_head

    set_track_meta(False)
    work, epoch = args.work, args.epoch or best_epoch(args.work)
    films = torch.load(work / "films.pt", weights_only=False)
    table, images = pd.DataFrame(films["table"]), films["images"]
    spec = PreprocessSpec.from_dict(films["spec"])
    rt = choose_runtime("cpu", "auto")
    net = _epoch_net(work, epoch)
    scorer = feature_net(net, rt)
    norm = Compose(normalize_transforms(spec))
    rng = np.random.default_rng(0)
    aug = source_breaking_chain(seed=0)

    def feats(rows: np.ndarray, augmented: bool) -> np.ndarray:
        xs = [norm(aug(images[i].float()) if augmented else images[i].float()) for i in rows]
        return extract(scorer, (torch.stack(xs[i:i + 64]) for i in range(0, len(xs), 64)), rt)

    tx, ty, tw = [], [], []
    for (d, c), w in DEFAULT_WEIGHTS.items():
        rows = table.index[(table.role == "train") & (table.dataset == d) & (table.label == c)].to_numpy()
        if len(rows) > args.per_cell:
            rows = rng.choice(rows, args.per_cell, replace=False)
        views = max(1, args.per_cell // len(rows))
        for v in range(min(views, 4)):
            f = feats(rows, augmented=v > 0)
            tx.append(f)
            ty.append(np.full(len(f), c))
            tw.append(np.full(len(f), w))
        n = sum(len(a) for a in tx[-min(views, 4):])
        for a in tw[-min(views, 4):]:
            a /= n  # every cell's total is its weight
        print(f"features {d}/{c}: {n}", flush=True)
    x, y, w = np.concatenate(tx), np.concatenate(ty), np.concatenate(tw)
    w = w * len(w) / w.sum()
    val = table[table.role == "val"]
    vx = feats(val.index.to_numpy(), augmented=False)
    vd, vy = val.dataset.to_numpy(), val.label.to_numpy()
    held = [(vx[vd == s], vy[vd == s]) for s in ("covid_db", "kermany", SITE)]
    cross = ((vd == SITE) & (vy == 1)) | (vd == "openist")
    held.append((vx[cross], vy[cross]))
    fitted = fit_head(x, y, w, [h[0] for h in held], [h[1] for h in held])
    before = Head.of(net)
    from cxrscreen.training.metrics import auroc
    for name, h in (("fine-tuned fc", before), ("refitted head", fitted)):
        print(name, [round(auroc(hy, h.logits(hx)), 4) for hx, hy in held], flush=True)
    np.savez(work / f"head_epoch_{epoch}.npz", weight=fitted.weight, bias=fitted.bias, C=fitted.C,
             held_out_auroc=fitted.held_out_auroc)


def _rate(hit: np.ndarray) -> str:
    k, n = int(hit.sum()), int(hit.size)
    lo, hi = wilson_ci(k, n)
    return f"{k / n:.3f} ({lo:.3f}–{hi:.3f}) {k}/{n}"


def report(args: argparse.Namespace) -> None:
    from cxrscreen.training.data import read_manifest

    out: dict = {}
    for model in args.model:
        lm = load_model(None if model == "default" else model)
        rt = runtime_for(lm, "cpu", "auto")
        for split in args.splits:
            df = read_manifest(args.work / "eval_manifest.csv", split)
            scores = score_frame(lm, df, rt, batch_size=64)
            thr = row_thresholds(lm, df)
            flag = scores >= thr
            y, d = df.label.to_numpy(), df.dataset.to_numpy()
            rows = {}
            for src in sorted(set(d)):
                m = d == src
                row: dict = {"threshold": float(np.unique(thr[m])[0])}
                if len(set(y[m])) == 2:
                    a, lo, hi = auroc_ci(y[m], scores[m], n_boot=1000)
                    row["auroc"] = f"{a:.3f} ({lo:.3f}–{hi:.3f})"
                if (y[m] == 1).any():
                    row["sensitivity"] = _rate(flag[m & (y == 1)])
                if (y[m] == 0).any():
                    row["specificity"] = _rate(~flag[m & (y == 0)])
                rows[src] = row
                print(f"{lm.name} {split} {src}: {row}", flush=True)
            out[f"{lm.name}/{split}"] = rows
    (args.work / "release_report.json").write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("manifests", "head", "export", "report"))
    ap.add_argument("--head", action="store_true", help="export: install WORK/head_epoch_N.npz")
    ap.add_argument("--per-cell", type=int, default=600, help="head: feature rows per training cell")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epoch", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--splits", nargs="+", default=["test"])
    ap.add_argument("--pediatric-target", type=float, default=0.97)
    ap.add_argument("--site-target", type=float, default=0.92)
    ap.add_argument("--covid-target", type=float, default=0.97)
    args = ap.parse_args()
    if args.command == "manifests":
        print(manifests(args.work))
    elif args.command == "head":
        head(args)
    elif args.command == "export":
        export(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
