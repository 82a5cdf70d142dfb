"""How much the pretrained small base helps: finetuned from it vs a UNet trained from scratch.

    python benchmarks/base_vs_scratch.py [--steps 400] [--work runs/bench-base-vs-scratch]

Data: `remix`, another dataset from the towns renderer (diffmine/datasets/towns.py TOWN_SETS: other labels,
the kinds dealt out anew, so what the base knows about which town shows which element is wrong
here), seed 1, 200 training and 20 held-out images per label, 64 px. Two models, the same
finetuner settings and the same budget of UNet steps (the same compute, whatever else the machine
is doing):

  pretrained   --base tiny: the shipped model (VAE, text encoder and UNet trained on towns)
  scratch      the same folder with the UNet re-initialised (diffusers' from_config, the same
               architecture): only the UNet starts from nothing, the VAE and text encoder are the
               base's, so the comparison is about the UNet's start alone

Then typicality on the held-out split with the demo's settings (diffmine/apps/demo/demo.json) and the maps'
pointing game and pixel AUROC against the characteristic elements of each image's own label.
Intervals (95 %): over held-out images, and the margins pretrained - scratch paired (the same
images). Each run is appended to results/base_vs_scratch.json with one row per image and model.
Last line: {"pretrained_pointing_game", "pretrained_pixel_auroc", "scratch_pointing_game",
"scratch_pixel_auroc", "pixel_auroc_margin", "pixel_auroc_margin_ci", "steps", ...}.
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


def scratch_copy(base: Path, out: Path, seed: int) -> Path:
    """`base` with its UNet replaced by a freshly initialised one of the same config."""
    import torch
    from diffusers import UNet2DConditionModel

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("samples.png", "train_log.jsonl"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
    shutil.rmtree(out / "unet")
    unet.save_pretrained(out / "unet")
    return out


def held_out_metrics(model: Path, test: Path, out: Path) -> tuple[dict, list[tuple]]:
    """The figures, and per held-out image (pointing hit or None, pixel AUROC)."""
    from benchmarks.demo_map_blur import demo_maps
    from diffmine.evaluation.metrics import auroc, pixel_auroc, pointing_game, pointing_hit

    maps, masks = demo_maps(model, test, out)
    per = [(pointing_hit(m, k), auroc(m, k)) for m, k in zip(maps, masks)]
    return {"pointing_game": round(pointing_game(maps, masks), 4), "pixel_auroc": round(pixel_auroc(maps, masks), 4)}, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="UNet training steps per model")
    ap.add_argument("--work", default="runs/bench-base-vs-scratch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4, help="the shipped recipe's (assets/tiny-towns-recipe.json)")
    args = ap.parse_args()

    from diffmine.core.models import SMALL_BASE_DIR
    from diffmine.datasets.towns import generate_towns
    from finetune.train import train
    from finetune.config import TrainConfig

    start = time.time()
    work = Path(args.work)
    data = generate_towns(work / "remix", n_train=200, n_test=20, size=64, seed=1, variant="remix")
    starts = {"pretrained": SMALL_BASE_DIR, "scratch": scratch_copy(SMALL_BASE_DIR, work / "scratch-base", seed=0)}
    results, per_image = {}, {}
    for name, base in starts.items():
        model = work / name
        if model.exists():
            shutil.rmtree(model)
        t0 = time.time()
        train(TrainConfig(data=str(data / "train"), out=str(model), base=str(base), resolution=64,
                          batch_size=args.batch_size, lr=args.lr, ema=True, random_crop=True,
                          max_steps=args.steps, checkpoint_every=10 ** 6,
                          prompt="A facade in {label}.", null_prompt="A facade.", null_rate=0.1,
                          samples_per_label=2), progress=False)
        figures, per_image[name] = held_out_metrics(model, data / "test", work / f"typ-{name}")
        results[name] = {**figures, "train_s": round(time.time() - t0, 1)}
        print(f"{name}: {results[name]}", flush=True)
    print(f"| start ({args.steps} UNet steps x {args.batch_size}) | held-out pointing game | held-out pixel AUROC "
          f"| finetune + typicality s |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['pointing_game']:.4f} | {r['pixel_auroc']:.4f} | {r['train_s']} |")
    import numpy as np

    from benchmarks.records import save_run
    from diffmine.evaluation.intervals import mean_estimate, statistic_estimate

    col = {(n, k): np.array([np.nan if v[j] is None else float(v[j]) for v in per_image[n]])
           for n in per_image for j, k in enumerate(("pointing", "auroc"))}
    units = np.arange(len(per_image["pretrained"]))
    est = {f"{n}_{k}": mean_estimate(col[(n, k)]) for n, k in col}
    margins = {k: statistic_estimate(units, lambda i, k=k: np.nanmean(col[("pretrained", k)][i])
                                     - np.nanmean(col[("scratch", k)][i])) for k in ("pointing", "auroc")}
    for k, e in margins.items():
        print(f"pretrained - scratch, {k}: {e['value']:+.4f} [{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}]")
    wall = time.time() - start
    print(f"wall time {wall:.0f} s")
    r = lambda e: [round(x, 4) for x in e["ci"]]
    last = {"pretrained_pointing_game": results["pretrained"]["pointing_game"],
            "pretrained_pointing_game_ci": r(est["pretrained_pointing"]),
            "pretrained_pixel_auroc": results["pretrained"]["pixel_auroc"], "pretrained_pixel_auroc_ci": r(est["pretrained_auroc"]),
            "scratch_pointing_game": results["scratch"]["pointing_game"], "scratch_pointing_game_ci": r(est["scratch_pointing"]),
            "scratch_pixel_auroc": results["scratch"]["pixel_auroc"], "scratch_pixel_auroc_ci": r(est["scratch_auroc"]),
            "pixel_auroc_margin": round(margins["auroc"]["value"], 4), "pixel_auroc_margin_ci": r(margins["auroc"]),
            "pointing_margin": round(margins["pointing"]["value"], 4), "pointing_margin_ci": r(margins["pointing"]),
            "steps": args.steps}
    items = [{"image": int(i), **{f"{n}_{k}": col[(n, k)][i] for n, k in col}} for i in units]
    save_run("base_vs_scratch", {**last, "train_s": {n: v["train_s"] for n, v in results.items()}, "wall_s": round(wall, 1)},
             items, protocol=vars(args))
    print(json.dumps(last))


if __name__ == "__main__":
    main()
