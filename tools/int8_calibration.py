"""Calibrate a model for ``--precision int8`` on a validation split; writes ``<model>.int8.json`` beside it.

    .venv/bin/python tools/int8_calibration.py [MODEL.json] [--manifest ../shared/data/cxr224/manifest.csv]
        [--split val] [--limit N]

The images go through cxrscreen's own preprocessing chain (``training.data.make_dataset``, as
``evaluate`` and ``calibrate`` read them) into an observed copy of the network
(:func:`cxrscreen.model.quantize.calibrate_int8`). Rerun it whenever the model's weights change: the
file is tied to their sha256 and ``--precision int8`` refuses a stale one. Check the result with
``benchmarks/int8.py`` (decisions changed and AUROC on the test split).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="model .json (default: the embedded default model)")
    ap.add_argument("--manifest", type=Path, default=REPO.parent / "shared" / "data" / "cxr224" / "manifest.csv")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, default=0, help="at most this many images (0: the whole split)")
    args = ap.parse_args(argv)
    if args.split == "test":
        sys.exit("refusing to calibrate on the test split: it is what the int8 network is checked on")
    sys.path.insert(0, str(REPO))
    from torch.utils.data import DataLoader

    from cxrscreen.model.files import load_model
    from cxrscreen.model.quantize import calibrate_int8, calibration_path, save_calibration
    from cxrscreen.training.data import make_dataset, read_manifest

    lm = load_model(args.model)
    df = read_manifest(args.manifest, args.split)
    if args.limit:
        df = df.sample(n=min(args.limit, len(df)), random_state=0).sort_index()
    loader = DataLoader(make_dataset(df, lm.spec, augment=False, cache=False), batch_size=64, num_workers=0)
    source = f"{args.manifest.name}:{args.split} ({len(df)} images)"
    calib = calibrate_int8(lm.net, (b["image"] for b in loader), lm.sha256, source)
    out = calibration_path(lm.path)
    save_calibration(calib, out)
    print(f"{out}: {len(calib.qparams)} activations, calibrated on {source}")


if __name__ == "__main__":
    main()
