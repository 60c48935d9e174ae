"""Default model v2: full fine-tuning of ResNet50 on the CPU, balanced over dataset × class cells.

Every layer trains (bf16 autocast where the CPU has it natively, channels_last), starting from
``--init`` (v2 started from v1, the embedded model before commit e389485). Each training sample is
drawn by cell weight (:data:`DEFAULT_WEIGHTS`), then through
:func:`cxrscreen.training.augment.source_breaking_chain`, so that neither the hospital's look nor the
crop can stand in for the label. The weights make the label independent of the source
within each group of films: NIH films (covid_db normals + site normals vs site pneumonias), non-NIH
adult films (openist normals vs covid_db COVID-19) and pediatric films (kermany normals vs pneumonias).

    .venv/bin/python tools/train_v2.py prepare --work /tmp/v2        # films → WORK/films.pt (~2 min)
    nohup .venv/bin/python tools/train_v2.py train --work /tmp/v2 [--resume] > /tmp/v2/train.log &

Data: cxr224 train, the site_nih train patients (``adapt``'s split, seed 0) and openist train.
Each epoch is scored on cxr224 val, the site calibration patients and openist val, per source and
class; the weights of every epoch are kept (``epoch_N.pt``), so the epoch can be chosen on val.
Test films are prepared but never scored here.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import set_track_meta
from monai.transforms import Compose
from sklearn.metrics import roc_auc_score

from cxrscreen.ingest.images import load_image
from cxrscreen.model.files import load_model
from cxrscreen.model.inference import choose_runtime
from cxrscreen.preprocess import PreprocessSpec, base_transforms
from cxrscreen.training.adapt import score
from cxrscreen.training.augment import source_breaking_chain
from cxrscreen.training.loop import Optimisation, train_step
from cxrscreen.training.site import prepare_site

ROOT = Path(__file__).resolve().parents[1]
SITE = "site_nih"
#: Cell weights (dataset, label) → relative draw probability.
DEFAULT_WEIGHTS = {("covid_db", 0): 0.5, (SITE, 0): 0.5, (SITE, 1): 1.0, ("openist", 0): 1.0,
                   ("covid_db", 1): 1.0, ("kermany", 0): 1.0, ("kermany", 1): 1.0}
ROLE_OF = {"train": "train", "val": "val", "calibration": "val", "test": "test"}


def _images(paths: list[Path], spec: PreprocessSpec) -> torch.Tensor:
    chain = Compose(base_transforms(spec))
    from concurrent.futures import ThreadPoolExecutor

    def one(p: Path) -> torch.Tensor:
        return torch.as_tensor(chain(load_image(p, min_side=spec.decode_target))).to(torch.float16)

    with ThreadPoolExecutor(2) as pool:
        return torch.stack(list(pool.map(one, paths)))


def prepare(work: Path, data: Path) -> None:
    """Every film through the scan chain (before normalisation) → ``WORK/films.pt``."""
    set_track_meta(False)
    spec = load_model(None).spec
    rows, parts = [], []
    for man_path in (data / "cxr224" / "manifest.csv", data / "openist" / "manifest.csv"):
        man = pd.read_csv(man_path)
        t = time.time()
        parts.append(_images([man_path.parent / p for p in man.path], spec))
        print(f"{man_path.parent.name}: {len(man)} films in {time.time() - t:.0f} s", flush=True)
        rows.append(pd.DataFrame({"id": man.path, "dataset": man.dataset, "label": man.label,
                                  "split": man.split, "group": man.group}))
    site = prepare_site(data / SITE / "dicom", data / SITE / "labels.csv", spec, seed=0)
    t = site.table.loc[site.usable]
    rows.append(pd.DataFrame({"id": t.path.to_numpy(), "dataset": SITE, "label": t.label.astype(int).to_numpy(),
                              "split": t.split.to_numpy(), "group": t.patient.to_numpy()}))
    parts.append(site.images.to(torch.float16))
    table = pd.concat(rows, ignore_index=True)
    table["role"] = table.split.map(ROLE_OF)
    images = torch.cat(parts)
    assert len(images) == len(table)
    torch.save({"images": images, "table": table.to_dict("list"), "spec": spec.to_dict()}, work / "films.pt")
    print(table.groupby(["role", "dataset", "label"]).size().to_string(), flush=True)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return 0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * t))


def val_metrics(table: pd.DataFrame, prob: np.ndarray) -> dict[str, float]:
    """Per-source AUROC on the val films, and the cross-source AUROCs that expose a source shortcut."""
    y, d = table.label.to_numpy(), table.dataset.to_numpy()

    def auc(pos: np.ndarray, neg: np.ndarray) -> float:
        return float(roc_auc_score(np.r_[np.ones(pos.sum()), np.zeros(neg.sum())], np.r_[prob[pos], prob[neg]]))

    m = {f"auroc/{s}": auc((d == s) & (y == 1), (d == s) & (y == 0)) for s in ("covid_db", "kermany", SITE)}
    # NIH pneumonias against non-NIH adult normals: a "not NIH → abnormal" model scores near 0 here
    m["auroc/site_abn_vs_openist"] = auc((d == SITE) & (y == 1), d == "openist")
    m["auroc/covid_vs_openist"] = auc((d == "covid_db") & (y == 1), d == "openist")
    adult = d != "kermany"
    m["auroc/adult"] = auc(adult & (y == 1), adult & (y == 0))
    m["merit"] = float(np.mean([m["auroc/covid_db"], m["auroc/kermany"], m[f"auroc/{SITE}"],
                                m["auroc/site_abn_vs_openist"]]))
    return m


def train(args: argparse.Namespace) -> None:
    set_track_meta(False)
    torch.set_num_threads(args.threads)
    work = args.work
    films = torch.load(work / "films.pt", weights_only=False)
    table = pd.DataFrame(films["table"])
    images: torch.Tensor = films["images"]
    spec = PreprocessSpec.from_dict(films["spec"])
    rt = choose_runtime("cpu", "auto")
    train_rows = table.index[table.role == "train"].to_numpy()
    val_rows = table.index[table.role == "val"].to_numpy()
    val_table = table.loc[val_rows].reset_index(drop=True)
    ds, lab = table.dataset.to_numpy()[train_rows], table.label.to_numpy()[train_rows]
    cells = {k: train_rows[(ds == k[0]) & (lab == k[1])] for k in DEFAULT_WEIGHTS}
    keys = [k for k in cells if len(cells[k])]
    p = np.array([DEFAULT_WEIGHTS[k] for k in keys])
    p = p / p.sum()
    print("cells: " + ", ".join(f"{d}/{c} {len(cells[d, c])} films p={w:.3f}"
                                for (d, c), w in zip(keys, p, strict=True)), flush=True)

    net = load_model(args.init).net.train().to(memory_format=torch.channels_last)
    fc = list(net.fc.parameters())
    fc_ids = {id(q) for q in fc}
    opt = torch.optim.AdamW([{"params": [q for q in net.parameters() if id(q) not in fc_ids], "lr": args.lr},
                             {"params": fc, "lr": args.lr * 5}], weight_decay=args.weight_decay)
    steps = args.per_epoch // args.batch
    total = steps * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total, warmup=min(150, total // 10)))
    optimisation = Optimisation(net, opt, torch.nn.BCEWithLogitsLoss(), rt, sched)
    history: list[dict] = []
    start = 0
    ckpt = work / "checkpoint.pt"
    if args.resume and ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history, start = ck["history"], ck["epoch"] + 1
        print(f"resumed after epoch {ck['epoch']}", flush=True)
    t_run = time.time()
    done_steps = 0
    for epoch in range(start, args.epochs):
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        chain = source_breaking_chain(seed=args.seed * 1000 + epoch)
        torch.manual_seed(args.seed * 1000 + epoch)
        net.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        for step in range(steps):
            ks = rng.choice(len(keys), size=args.batch, p=p)
            idx = [int(cells[keys[k]][rng.integers(len(cells[keys[k]]))]) for k in ks]
            x = (torch.stack([chain(images[i].float()) for i in idx]) - spec.mean) / spec.std
            loss = train_step(optimisation, x, torch.tensor([float(keys[k][1]) for k in ks]))
            seen += len(idx)
            done_steps += 1
            loss_sum += loss * len(idx)
            if (step + 1) % 25 == 0 or step + 1 == steps:
                rate = done_steps / (time.time() - t_run)
                left = (total - epoch * steps - step - 1) / rate
                print(f"epoch {epoch + 1}/{args.epochs} step {step + 1}/{steps} loss {loss_sum / seen:.4f} "
                      f"{seen / (time.time() - t0):.1f} img/s lr {sched.get_last_lr()[0]:.2e} "
                      f"ETA {left / 60:.0f} min (+ val)", flush=True)
        t_val = time.time()
        prob = score(net, images[torch.as_tensor(val_rows)], spec, rt)  # as scan scores: folded, bf16/fp32
        m = val_metrics(val_table, prob)
        rec = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_s": t_val - t0, "val_s": time.time() - t_val, **m}
        history.append(rec)
        np.save(work / f"val_epoch_{epoch + 1}.npy", prob)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()},
                   work / f"epoch_{epoch + 1}.pt")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch, "history": history}, work / "checkpoint.tmp")
        (work / "checkpoint.tmp").replace(ckpt)
        (work / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        print("EPOCH " + json.dumps(rec), flush=True)
    val_table.to_csv(work / "val_table.csv", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("prepare", "train"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-epoch", type=int, default=4800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default=None, help="starting model .json (default: the embedded model; v2 started "
                    "from v1: git show f89b51c:cxrscreen/models/default.{json,safetensors})")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "prepare":
        prepare(args.work, args.data)
    else:
        train(args)


if __name__ == "__main__":
    main()
