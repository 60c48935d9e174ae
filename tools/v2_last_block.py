"""Default-model v2 experiment: fine-tune v1's last layers (``layer4[2]`` or ``layer4``) and ``fc`` on a mix.

An experiment of the v1 era (docs/adult_films.md, "Earlier notes"). It starts from the embedded model,
which is now v2: to reproduce those figures, point ``cxrscreen.model.files.DEFAULT_MODEL`` at v1
(``git show f89b51c:cxrscreen/models/default.json`` and ``.safetensors``).

See docs/adult_films.md ("A default model v2") for what it gave and why v1 is still the default.

Training the whole backbone on 2 CPU cores was not affordable (one epoch of ``layer4`` on the 294
site films took 755 s), so the frozen part of v1 runs once: ``cache`` stores the input of the
trained part (``--train layer4.2``: v1's ``layer4[1]`` output, fp16 2048×7×7, ~200 kB a film;
``--train layer4``: ``layer3``'s, 1024×14×14, ~400 kB) of every cxr224 film (the chain without augmentation) and of
the site_nih films through the scan path (``prepare_site``, the patient split of ``adapt --seed 0``;
training films as seen by ``scan`` plus 5 seeded augmented views). ``train`` then fits that part
(batch-norm statistics frozen at v1's) and ``fc`` with batches drawn evenly from each
dataset × class cell (``--site-weight`` scales both site cells, ``--site-abnormal-weight`` the site's
abnormal cell, ``--drop-covid-normals`` leaves covid_db's normals out), keeps the epoch that best
trades site calibration AUROC against any loss on covid_db / kermany val, and prints v1 and the
candidate on every test set. Nothing is written to the package; ``--save`` keeps the weights.

    .venv/bin/python tools/v2_last_block.py cache --work /tmp/v2lb [--train layer4]   # ~6 min on 2 cores (bf16)
    .venv/bin/python tools/v2_last_block.py train --work /tmp/v2lb [--train layer4] [--site-weight 3] [--epochs 8]
"""

from __future__ import annotations

import argparse
import copy
import json
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
from cxrscreen.model.inference import choose_runtime, inference_net
from cxrscreen.preprocess import base_transforms, normalize_transforms
from cxrscreen.training.adapt import film_views
from cxrscreen.training.calibrate import pick_threshold
from cxrscreen.training.site import prepare_site

ROOT = Path(__file__).resolve().parents[1]
SITE = "nih_site"
SITE_VIEWS = 6
TARGET = 0.95


def cache(work: Path, data: Path, part: str) -> None:
    """Activations entering ``part`` for cxr224 (``cxr.npy``, manifest order) and site_nih (``site_*``)."""
    set_track_meta(False)
    lm = load_model(None)
    rt = choose_runtime("cpu", "auto")
    net = inference_net(lm.net, rt)
    tail = [net.layer4[0], net.layer4[1]] if part == "layer4.2" else []
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3,
                                *tail).eval()
    shape = (2048, 7, 7) if part == "layer4.2" else (1024, 14, 14)

    @torch.inference_mode()
    def run(images: list[torch.Tensor]) -> np.ndarray:
        x = torch.stack(images).contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            return trunk(x).float().half().contiguous().numpy()

    site = prepare_site(data / "site_nih" / "dicom", data / "site_nih" / "labels.csv", lm.spec, seed=0)
    for split in ("train", "calibration", "test"):
        images = site.images[site.rows(split)]
        np.save(work / f"site_{split}_y.npy", site.labels(split))
        for v in range(SITE_VIEWS if split == "train" else 1):
            views = film_views(images, lm.spec, v, 0)
            np.save(work / f"site_{split}_v{v}.npy", np.concatenate([run(views[i:i + 32])
                                                                   for i in range(0, len(views), 32)]))
    man = pd.read_csv(data / "cxr224" / "manifest.csv")
    chain = Compose([*base_transforms(lm.spec), *normalize_transforms(lm.spec)])
    out = np.lib.format.open_memmap(work / "cxr.npy", mode="w+", dtype=np.float16, shape=(len(man), *shape))
    for start in range(0, len(man), 256):
        rows = range(start, min(len(man), start + 256))
        images = [torch.as_tensor(chain(load_image(data / "cxr224" / man.path[i], min_side=lm.spec.decode_target)))
                  for i in rows]
        for j in range(0, len(images), 32):
            out[start + j:start + j + len(images[j:j + 32])] = run(images[j:j + 32])
        print(f"cxr224 {rows.stop}/{len(man)}", flush=True)
    out.flush()


class LastBlock(torch.nn.Module):
    """``layer4[2]`` (or ``layer4``) → average pool → ``fc`` of a ResNet50, as one logit per image."""

    def __init__(self, net: torch.nn.Module, part: str):
        super().__init__()
        self.block = copy.deepcopy(net.layer4[2] if part == "layer4.2" else net.layer4).eval()
        self.fc = copy.deepcopy(net.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.block(x), 1), 1)).squeeze(1)


@torch.inference_mode()
def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    out = []
    for i in range(0, len(x), 128):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(model(torch.from_numpy(np.asarray(x[i:i + 128], dtype=np.float32))).float())
    return torch.cat(out).numpy()


def train(args: argparse.Namespace) -> None:
    """Fit ``--train`` + ``fc`` on the cached activations; print v1 and the candidate per dataset."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = args.work
    man = pd.read_csv(args.data / "cxr224" / "manifest.csv")
    cxr = np.load(work / "cxr.npy", mmap_mode="r")
    site = {s: [np.load(work / f"site_{s}_v{v}.npy") for v in range(SITE_VIEWS if s == "train" else 1)]
            for s in ("train", "calibration", "test")}
    site_y = {s: np.load(work / f"site_{s}_y.npy") for s in site}

    def sets(split: str, site_split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for d in ("covid_db", "kermany"):
            idx = np.flatnonzero((man.split == split).to_numpy() & (man.dataset == d).to_numpy())
            out[d] = (np.asarray(cxr[idx]), man.label.to_numpy()[idx])
        out[SITE] = (site[site_split][0], site_y[site_split])
        return out

    train_idx = np.flatnonzero((man.split == "train").to_numpy())
    train_x = np.asarray(cxr[train_idx])
    train_y, train_g = man.label.to_numpy()[train_idx], man.dataset.to_numpy()[train_idx]
    val, test = sets("val", "calibration"), sets("test", "test")
    cells: dict[tuple[str, int], np.ndarray] = {
        (d, c): np.flatnonzero((train_g == d) & (train_y == c)) for d in ("covid_db", "kermany") for c in (0, 1)}
    cells.update({(SITE, c): np.flatnonzero(site_y["train"] == c) for c in (0, 1)})
    keys = list(cells)
    weight = np.array([(args.site_weight * (args.site_abnormal_weight if c else 1.0)) if d == SITE
                       else (0.0 if args.drop_covid_normals and (d, c) == ("covid_db", 0) else 1.0)
                       for d, c in keys])
    weight /= weight.sum()

    lm = load_model(None)
    v1 = LastBlock(lm.net, args.train)
    # eval mode throughout: batch-norm keeps v1's statistics, its affine terms train
    net = LastBlock(lm.net, args.train)
    opt = torch.optim.AdamW([{"params": net.block.parameters(), "lr": args.lr},
                             {"params": net.fc.parameters(), "lr": args.fc_lr}], weight_decay=1e-4)
    base = {d: roc_auc_score(y, logits(v1, x)) for d, (x, y) in val.items()}
    best: tuple[float, int, dict] | None = None
    history = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        cell = rng.choice(len(keys), size=args.per_epoch, p=weight)
        total = 0.0
        for b in range(0, args.per_epoch, 32):
            xs, ys = [], []
            for k in cell[b:b + 32]:
                d, c = keys[k]
                i = cells[d, c][rng.integers(len(cells[d, c]))]
                xs.append(site["train"][rng.integers(SITE_VIEWS)][i] if d == SITE else train_x[i])
                ys.append(float(c))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(torch.from_numpy(np.stack(xs).astype(np.float32))).float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, torch.tensor(ys))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(ys)
        auc = {d: roc_auc_score(y, logits(net, x)) for d, (x, y) in val.items()}
        history.append({"epoch": epoch, "loss": total / args.per_epoch, "val_auroc": auc})
        print(f"epoch {epoch}: loss {total / args.per_epoch:.4f}, val AUROC "
              + ", ".join(f"{d} {a:.4f} ({a - base[d]:+.4f})" for d, a in auc.items()) + f" [{time.time() - t0:.0f} s]",
              flush=True)
        merit = auc[SITE] + 5 * min(auc["covid_db"] - base["covid_db"], auc["kermany"] - base["kermany"], 0.0)
        if best is None or merit > best[0]:
            best = (merit, epoch, copy.deepcopy(net.state_dict()))
    assert best is not None
    net.load_state_dict(best[2])
    prob = {d: 1 / (1 + np.exp(-logits(net, x))) for d, (x, _) in val.items()}
    per = {d: pick_threshold(val[d][1], prob[d], TARGET) for d in val}
    threshold = min(per.values())
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "kept_epoch": best[1], "history": history,
                    "val_thresholds": per, "threshold": threshold, "test": {}}
    print(f"kept epoch {best[1]}; val thresholds for sensitivity ≥ {TARGET}: "
          + ", ".join(f"{d} {t:.4f}" for d, t in per.items()))
    for name, model, thr in (("v1", v1, lm.threshold), ("candidate", net, threshold)):
        for d, (x, y) in test.items():
            p = 1 / (1 + np.exp(-logits(model, x)))
            flag = p >= thr
            row = {"auroc": roc_auc_score(y, p), "threshold": thr, "sensitivity": float(flag[y == 1].mean()),
                   "specificity": float(1 - flag[y == 0].mean())}
            if name == "candidate":
                own = p >= per[d]
                row |= {"own_threshold": per[d], "own_sensitivity": float(own[y == 1].mean()),
                        "own_specificity": float(1 - own[y == 0].mean())}
            report["test"][f"{name}/{d}"] = row
            print(f"test {name:9s} {d:8s}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    (work / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.save:
        torch.save(net.state_dict(), work / f"{args.tag}.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("cache", "train"))
    ap.add_argument("--work", type=Path, required=True, help="folder for the cached activations and results")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--train", choices=("layer4.2", "layer4"), default="layer4.2",
                    help="the part of v1 fitted (the rest runs once, cached); one cache folder per choice")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-epoch", type=int, default=4800, help="training samples drawn per epoch")
    ap.add_argument("--lr", type=float, default=1e-4, help="learning rate of the fitted layers (AdamW)")
    ap.add_argument("--fc-lr", type=float, default=1e-3)
    ap.add_argument("--site-weight", type=float, default=1.0)
    ap.add_argument("--site-abnormal-weight", type=float, default=1.0)
    ap.add_argument("--drop-covid-normals", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="candidate")
    ap.add_argument("--save", action="store_true", help="keep the fitted block's weights (TAG.pt)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "cache":
        cache(args.work, args.data, args.train)
    else:
        train(args)


if __name__ == "__main__":
    main()
