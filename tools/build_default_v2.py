"""Build a candidate default model v2: v1 backbone, new head on cxr224 + site_nih (not shipped).

An experiment of the v1 era (docs/adult_films.md, "Earlier notes"). It starts from the embedded model,
which is now v2: to reproduce those figures, point ``cxrscreen.model.files.DEFAULT_MODEL`` at v1
(``git show f89b51c:cxrscreen/models/default.json`` and ``.safetensors``).

See docs/adult_films.md for its figures and why the embedded default is still v1.

Why a new head and not a new backbone: a linear model on v1's own 2048-d penultimate features
separates adult NIH pneumonia from normal films (AUROC ≈ 0.87–0.90 within that hospital), while v1's
head, fitted on a mix where every NIH-hospital film was a normal (covid_db's RSNA normals), ranks them
at 0.60. The head is refitted on a balanced mix (every dataset × class carries the same total weight),
so "this hospital's look" no longer predicts "normal". A full fine-tune on 2 CPU cores was not
affordable in the session that built v2 (see docs/model_card.md).

Usage (from the repo root; features are cached, a rerun only fits):
    python tools/build_default_v2.py --cache /tmp/v2cache --out /tmp/v2/default.json
    [--data ../shared/data] [--train-per-group 600] [--site-weight 1.0]
It prints the validation and test figures and writes ``v2_build.json`` beside the model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from cxrscreen.model.files import load_model, save_model
from cxrscreen.model.inference import choose_runtime
from cxrscreen.training.adapt import batched, film_views
from cxrscreen.training.calibrate import pick_threshold
from cxrscreen.training.data import make_dataset, read_manifest
from cxrscreen.training.head import Head, balanced_weights, extract, feature_net, fit_head
from cxrscreen.training.metrics import auroc, summarize
from cxrscreen.training.site import prepare_site

ROOT = Path(__file__).resolve().parents[1]
SITE = "nih_site"
TARGET = 0.95


def cxr_features(scorer, rt, lm, rows: pd.DataFrame, cache: Path) -> np.ndarray:
    """Features of manifest rows (their index is the manifest row), cached by row in ``cache``."""
    store = dict(np.load(cache)) if cache.is_file() else {}
    todo = [i for i in rows.index if str(i) not in store]
    for start in range(0, len(todo), 512):
        part = rows.loc[todo[start:start + 512]]
        loader = DataLoader(make_dataset(part, lm.spec, cache=False), batch_size=32, num_workers=0)
        feats = extract(scorer, (b["image"] for b in loader), rt)
        store.update({str(i): f for i, f in zip(part.index, feats, strict=True)})
        np.savez(cache, **store)
        print(f"  features {min(start + 512, len(todo))}/{len(todo)}", flush=True)
    return np.stack([store[str(i)] for i in rows.index])


def site_features(scorer, rt, lm, data: Path, seed: int, views: int, cache: Path) -> dict[str, np.ndarray]:
    """site_nih through the scan path, split by patient as ``adapt`` splits it (same seed); the train
    films once as scan sees them plus ``views − 1`` augmented views (as ``adapt --train-layers head``)."""
    if cache.is_file():
        return dict(np.load(cache))
    site = prepare_site(data / "site_nih" / "dicom", data / "site_nih" / "labels.csv", lm.spec, seed=seed)
    out: dict[str, np.ndarray] = {}
    for split in ("train", "calibration", "test"):
        imgs = site.images[site.rows(split)]
        n = views if split == "train" else 1
        out[f"{split}_x"] = np.concatenate([extract(scorer, batched(film_views(imgs, lm.spec, v, seed)), rt)
                                            for v in range(n)])
        out[f"{split}_y"] = np.tile(site.labels(split), n)
    np.savez(cache, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-per-group", type=int, default=600, help="cxr224 train films per dataset × class")
    ap.add_argument("--site-weight", type=float, default=1.0)
    ap.add_argument("--train-rows", type=Path, help="CSV with the cxr224 train paths to use (default: a sample)")
    ap.add_argument("--site-views", type=int, default=4, help="site train views: 1 plain + N−1 augmented")
    ap.add_argument("--prior", action=argparse.BooleanOptionalAction, default=True, help="v1's logit as an input")
    ap.add_argument("--dry-run", action="store_true", help="fit and print; write no model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    lm = load_model(None)
    rt = choose_runtime("auto", "auto")
    scorer = feature_net(lm.net, rt)

    man = read_manifest(args.data / "cxr224" / "manifest.csv")
    train = man[man["split"] == "train"]
    if args.train_rows:
        keep = set(pd.read_csv(args.train_rows)["path"])
        train = train[train["path"].isin(keep)]
    else:
        train = train.groupby(["dataset", "label"], group_keys=False).apply(
            lambda g: g.sample(n=min(len(g), args.train_per_group), random_state=args.seed))
    rows = pd.concat([train, man[man["split"].isin(["val", "test"])]])
    print(f"cxr224: {len(rows)} films ({len(train)} train)", flush=True)
    f_cxr = cxr_features(scorer, rt, lm, rows, args.cache / "cxr224.npz")
    site = site_features(scorer, rt, lm, args.data, args.seed, args.site_views, args.cache / "site.npz")

    def part(split: str, site_split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = (rows["split"] == split).to_numpy()
        x = np.concatenate([f_cxr[m], site[f"{site_split}_x"]])
        y = np.r_[rows["label"].to_numpy()[m], site[f"{site_split}_y"]].astype(int)
        g = np.r_[rows["dataset"].to_numpy()[m], np.full(len(site[f"{site_split}_y"]), SITE)]
        return x, y, g

    x_tr, y_tr, g_tr = part("train", "train")
    x_va, y_va, g_va = part("val", "calibration")
    x_te, y_te, g_te = part("test", "test")
    names = sorted(set(g_va))
    weights = balanced_weights(g_tr, y_tr, {SITE: args.site_weight})
    prior = Head.of(lm.net)
    head = fit_head(x_tr, y_tr, weights, [x_va[g_va == d] for d in names], [y_va[g_va == d] for d in names],
                    prior=prior if args.prior else None)
    v2 = head.install(load_model(None).net)

    def prob(h: Head, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.clip(h.logits(x), -30, 30)))

    per = {d: pick_threshold(y_va[g_va == d], prob(head, x_va[g_va == d]), TARGET) for d in names}
    thr = min(per.values())
    report = {"C": head.C, "prior": args.prior, "site_weight": args.site_weight, "site_views": args.site_views,
              "cxr224_train_films": len(train), "threshold": thr, "group_thresholds": per,
              "val_auroc": {d: auroc(y_va[g_va == d], head.logits(x_va[g_va == d])) for d in names}, "test": {}}
    for d in names:
        m = g_te == d
        report["test"][d] = {"v1": summarize(y_te[m], prob(prior, x_te[m]), lm.threshold),
                             "v2": summarize(y_te[m], prob(head, x_te[m]), thr)}
        a, b = report["test"][d]["v1"], report["test"][d]["v2"]
        print(f"test {d}: v1 AUROC {a['auroc']['value']:.4f} sens {a['sensitivity']['value']:.3f} spec "
              f"{a['specificity']['value']:.3f} | v2 AUROC {b['auroc']['value']:.4f} sens "
              f"{b['sensitivity']['value']:.3f} spec {b['specificity']['value']:.3f}", flush=True)
    print(f"C {head.C}, threshold {thr:.4f} ({per})", flush=True)
    if args.dry_run:
        return

    meta = {k: v for k, v in lm.meta.items() if k not in ("sha256", "weights_file", "weights_dtype", "metrics",
                                                          "calibration")}
    meta.update({
        "name": "cxrscreen-cxr224-nih-resnet50-v2",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threshold": thr,
        "threshold_source": f"calibrated on val for sensitivity ≥ {TARGET} in every dataset (kermany, covid_db, "
                            "the site_nih calibration patients); the lowest threshold wins",
        "training": {"v1": lm.meta.get("name"), "v1_sha256": lm.sha256,
                     "head": {"method": "L2 logistic regression on v1's penultimate features (+ v1's logit), "
                                        "standardised, sample weights balanced per dataset × class (scikit-learn); "
                                        "folded into fc",
                              **{k: report[k] for k in ("C", "prior", "site_weight", "site_views",
                                                        "cxr224_train_films", "val_auroc")},
                              "site_nih_split": "split_patients(seed=0): train 3/5, calibration 1/5, test 1/5",
                              "tool": "tools/build_default_v2.py"},
                     "v1_training": lm.meta.get("training")},
        "calibration": {"target_sensitivity": TARGET, "group_thresholds": per, "threshold": thr},
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(v2, meta, args.out, dtype=torch.float16)
    (args.out.parent / "v2_build.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"written {args.out} (threshold {thr:.4f}, C {head.C})")


if __name__ == "__main__":
    main()
