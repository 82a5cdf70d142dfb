"""Choosing the demo's map blur on training images: map metrics against the blur sigma.

    python benchmarks/demo_map_blur.py [--per-label 20] [--split train] [--model assets/tiny-towns-model]

Typicality with the demo's settings (diffmine/apps/demo/demo.json) on the first --per-label images per town of
a split of the towns data (train: the images the recipe trained on, for choosing; test: the held-out
split the demo reports), then the pointing game and mean per-image pixel AUROC of each map against
its own label's characteristic elements, for Gaussian blurs of sigma (px at 256 px, scaled to the
64 px maps as `diffmine mine --eval-sigma` does), each with a 95 % interval over images; one row per
image and sigma is appended with the run to results/demo_map_blur.json. Last line: {"sigma_at_256": [...],
"pointing_game": [...], "pixel_auroc": [...], "pixel_auroc_ci": [...]}.
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

    from benchmarks.translation_quality import subset
    from benchmarks.records import save_run
    from diffmine.evaluation.intervals import mean_estimate, proportion_estimate
    from diffmine.evaluation.metrics import auroc, pointing_hit
    from diffmine.report.pictures import gaussian_blur
    from diffmine.apps.demo.run import towns_data

    start = time.time()
    work = Path(args.work)
    split = towns_data(work / "towns", n_train=args.per_label) / args.split
    data = subset(split, work / "data", args.per_label)
    maps, masks = demo_maps(args.model, data, work / "typ")
    res = maps.shape[-1]
    rows, items = [], []
    print(f"{len(maps)} {args.split} images ({args.per_label} per town), model {args.model}")
    print("| sigma (px at 256) | sigma (px here) | pointing game | pixel AUROC |\n|---|---|---|---|")
    ci = lambda e: f"{e['value']:.4f} [{e['ci'][0]:.4f}, {e['ci'][1]:.4f}]"
    for s in SIGMAS:
        blurred = [gaussian_blur(m, s * res / 256) for m in maps]
        hits = [pointing_hit(b, k) for b, k in zip(blurred, masks)]
        aucs = [auroc(b, k) for b, k in zip(blurred, masks)]
        items += [{"image": i, "sigma_at_256": s, "pointing_hit": h, "pixel_auroc": a}
                  for i, (h, a) in enumerate(zip(hits, aucs))]
        scored = [h for h in hits if h is not None]  # images without a characteristic element: no pointing
        pg, au = proportion_estimate(sum(scored), len(scored)), mean_estimate(aucs)
        rows.append((s, pg, au))
        print(f"| {s} | {s * res / 256:g} | {ci(pg)} | {ci(au)} |")
    wall = time.time() - start
    print(f"wall time {wall:.0f} s")
    last = {"sigma_at_256": [r[0] for r in rows], "pointing_game": [round(r[1]["value"], 4) for r in rows],
            "pixel_auroc": [round(r[2]["value"], 4) for r in rows],
            "pixel_auroc_ci": [[round(x, 4) for x in r[2]["ci"]] for r in rows]}
    save_run("demo_map_blur", {**last, "split": args.split, "per_label": args.per_label, "wall_s": round(wall, 1)},
             items, protocol=vars(args))
    print(json.dumps(last))


if __name__ == "__main__":
    main()
