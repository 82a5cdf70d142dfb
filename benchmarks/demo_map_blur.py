"""Choosing the demo's map blur on training images: map metrics against the blur sigma.

    python benchmarks/demo_map_blur.py [--per-label 20] [--split train] [--model assets/tiny-towns-model]

Typicality with the demo's settings (diffmine/apps/demo/demo.json) on the first --per-label images per town of
a split of the towns data (train: the images the recipe trained on, for choosing; test: the held-out
split the demo reports), then the pointing game and mean per-image pixel AUROC of each map against
its own label's characteristic elements, for Gaussian blurs of sigma (px at 256 px, scaled to the
64 px maps as `diffmine mine --eval-sigma` does). Last line: {"sigma_at_256": [...],
"pointing_game": [...], "pixel_auroc": [...]}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIGMAS = (0, 4, 8, 10, 12, 16)


def demo_maps(model: str | Path, data: Path, out: Path):
    """Typicality of every image of `data` with the demo's settings (diffmine/apps/demo/demo.json) into `out`;
    returns (maps (n, R, R) float32 under each image's own label, masks (n, R, R) of that label's
    characteristic elements)."""
    import numpy as np

    from diffmine.evaluation.groundtruth import record_elements
    from diffmine.core.settings import load_config
    from diffmine.core.dataset import LabeledImages
    from diffmine.apps.demo.run import demo_settings
    from typicality.config import TypicalityConfig
    from typicality.engine import run_typicality
    from typicality.store import TypicalityStore

    shutil.rmtree(out, ignore_errors=True)
    run_typicality(load_config(TypicalityConfig, None, model=str(model), data=str(data), out=str(out),
                               **demo_settings()["typicality"]), progress=False)
    store, ds = TypicalityStore.open(out), LabeledImages(data)
    res = int(store.meta["resolution"])
    maps, masks = [], []
    for r in ds.records:
        el = record_elements(r, res, ds.root)
        maps.append(np.asarray(store.map(r.image_id, r.labels[0]), dtype=np.float32))
        masks.append(el.union(el.characteristic(r.labels[0])))
    return np.stack(maps), np.stack(masks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "tiny-towns-model"))
    ap.add_argument("--per-label", type=int, default=20)
    ap.add_argument("--split", choices=("train", "test"), default="train")
    ap.add_argument("--work", default="runs/bench-demo-map-blur")
    args = ap.parse_args()

    import numpy as np

    from benchmarks.translation_quality import subset
    from diffmine.evaluation.metrics import pixel_auroc, pointing_game
    from diffmine.report.pictures import gaussian_blur
    from diffmine.apps.demo.run import towns_data

    start = time.time()
    work = Path(args.work)
    split = towns_data(work / "towns", n_train=args.per_label) / args.split
    data = subset(split, work / "data", args.per_label)
    maps, masks = demo_maps(args.model, data, work / "typ")
    res = maps.shape[-1]
    rows = []
    print(f"{len(maps)} {args.split} images ({args.per_label} per town), model {args.model}")
    print("| sigma (px at 256) | sigma (px here) | pointing game | pixel AUROC |\n|---|---|---|---|")
    for s in SIGMAS:
        blurred = np.stack([gaussian_blur(m, s * res / 256) for m in maps])
        rows.append((s, pointing_game(blurred, masks), pixel_auroc(blurred, masks)))
        print(f"| {s} | {s * res / 256:g} | {rows[-1][1]:.4f} | {rows[-1][2]:.4f} |")
    print(f"wall time {time.time() - start:.0f} s")
    print(json.dumps({"sigma_at_256": [r[0] for r in rows], "pointing_game": [round(r[1], 4) for r in rows],
                      "pixel_auroc": [round(r[2], 4) for r in rows]}))


if __name__ == "__main__":
    main()
