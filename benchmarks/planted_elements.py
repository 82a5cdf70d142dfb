"""Does a base let mining find small planted elements? Finetune, typicality, held-out pointing and pixel AUROC.

    python benchmarks/planted_elements.py [--base tiny] [--steps 1000] [--draws 16] [--work runs/bench-planted]
        [--seed N] [--protocol benchmarks/protocols/planted.json] [--recipe] [--finetune JSON] [--domain-steps N]

Data: diffmine/datasets/planted.py (4 labels, one small characteristic element each: a thin ring,
a thin cross, a filled wedge, a filled tile, about a fifth of the side; distractors shared by all
labels), seed 0 (or --seed N, under WORK/seedN), 100 training and 25 held-out images per label, 64 px. The README's recipe:
`diffmine finetune --base BASE --max-steps STEPS` on train/, then `diffmine typicality` on test/
(the model's own labels), and per held-out image the pointing game (is the map's maximum on the
label's element?) and pixel AUROC against the element's pixel mask (diffmine/evaluation/metrics.py,
as the demo's mining evaluation), per label and overall, with 95 % bootstrap intervals over
images. Beside it, on the same images, the pairwise baseline (benchmarks/label_contrast.py: each
pixel patch's distance to the nearest patch of the other labels' training images), with the paired
difference (`<figure>_minus_contrast`). The finetune run also records the base's reconstruction PSNR on
these images. `label_gain_pct`: per held-out image, 100 x its mean typicality over its null error's mean
(how much the label improves the noise estimate at all; the towns demo's model on its held-out split: 3.8).
`element_above_distractors`: the share of held-out images whose map is higher on average on the label's
element than on the distractors (0.5: the map does not tell them apart; per image `map_element`,
`map_distractors`, `map_background`).
With --recipe the run follows the README's laptop recipe on train/ (400 images of 4 labels) as a
user would: `finetune` (the VAE adaptation included), `typicality` at its default draws and `mine`
with its defaults, each phase timed (`phase_<name>_s`, `recipe_minutes`); the held-out maps above
are computed after it and not counted.
With --domain-steps N the finetuning runs in two stages: first N steps on train/ with the null prompt
only (`--null-rate 1`: a model of the folder's images that never sees a label, the autoencoder
adapted as the recipe does), then --steps with the labels from that model (`--base` the first
stage's folder, the --finetune settings, e.g. {"lora_rank": 4}), so that the labels only have to
add what tells the labels apart to a model that already denoises these images (phase `domain`).
Runs appended to results/planted_elements.json, per-image results beside each (benchmarks.records).
Last line: {"pointing_game", "pointing_game_ci", "pixel_auroc", "pixel_auroc_ci",
"<label>_pointing_game", ..., "reconstruction_psnr_db", "base"}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def summarise(rows: list[dict], labels) -> dict:
    """Per-image `rows` (pointing, pixel_auroc, label_gain_pct, map_*, the baseline's contrast_*) to the run's
    figures: overall and per label, each mean with its 95 % bootstrap interval over images."""
    from benchmarks.label_contrast import contrast_summary
    from benchmarks.records import mean_interval

    def mean(values) -> float:
        return round(float(np.mean(values)), 3)

    def maps(prefix: str, sub: list[dict]) -> dict:  # pointing game and pixel AUROC over `sub`, each with its interval
        out = {}
        for key, name in (("pointing", "pointing_game"), ("pixel_auroc", "pixel_auroc")):
            values = [x[key] for x in sub]
            out[f"{prefix}{name}"], out[f"{prefix}{name}_ci"] = mean(values), mean_interval(values, 3)
        return out

    summary = maps("", rows)
    summary.update(contrast_summary(rows, digits=3))  # the pairwise pixel-patch baseline on the same images
    summary.update(label_gain_pct=mean([x["label_gain_pct"] for x in rows]),
                   label_gain_pct_ci=mean_interval([x["label_gain_pct"] for x in rows], 3))
    above = [float(x["map_element"] > x["map_distractors"]) for x in rows]  # the map tells its element from distractors
    summary.update(element_above_distractors=mean(above), element_above_distractors_ci=mean_interval(above, 3))
    for lab in labels:
        summary.update(maps(f"{lab}_", [x for x in rows if x["label"] == lab]))
    return summary


def main(argv=None) -> dict:
    import torch

    from diffmine.core.dataset import LabeledImages
    from diffmine.datasets.planted import LABELS, generate_planted
    from diffmine.evaluation.groundtruth import record_elements
    from diffmine.evaluation.metrics import auroc, pointing_hit
    from finetune.config import TrainConfig
    from finetune.train import train
    from typicality.engine import run_typicality
    from typicality.store import TypicalityStore

    from benchmarks.label_contrast import label_contrast_maps
    from benchmarks.records import protocol_argument, save_run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="tiny")
    p.add_argument("--steps", type=int, default=1000, help="UNet steps (the README's laptop recipe: 1000)")
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--t-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="timestep range of the held-out maps (default: typicality's)")
    p.add_argument("--work", default="runs/bench-planted")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=None, help="data seed (default: the generator's 0)")
    p.add_argument("--domain-steps", type=int, default=0,
                   help="first train this many steps without labels (null prompt only), then the labels from there")
    p.add_argument("--recipe", action="store_true", help="also time the README's laptop recipe on train/")
    p.add_argument("--finetune", default=None, metavar="JSON",
                   help='finetune settings over the recipe\'s (e.g. {"lr": 5e-4, "batch_size": 16}); the model '
                        "folder's name carries them, so another setting never resumes this one's model")
    protocol_argument(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # another seed, another folder: the model trained on seed 0's images is never resumed on new ones
    work = Path(args.work) / ("" if args.seed is None else f"seed{args.seed}")
    data = generate_planted(work / "data", n_train=100, n_test=25, progress=True,
                            **({} if args.seed is None else {"seed": args.seed}))
    overrides = json.loads(args.finetune) if args.finetune else {}
    tag = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    domain_tag = f"-domain{args.domain_steps}" if args.domain_steps else ""
    model = work / f"model-{Path(args.base).name}{domain_tag}-{args.steps}{tag}"
    phases = {}

    def timed(name, fn, *a, **kw):
        start = time.time()
        out = fn(*a, **kw)
        phases[f"phase_{name}_s"] = round(time.time() - start, 1)
        print(f"[planted] {name}: {phases[f'phase_{name}_s']} s", flush=True)
        return out

    base = args.base
    if args.domain_steps:  # stage one: the folder's images without labels (its own model folder, resumable)
        base = str(work / f"domain-{Path(args.base).name}-{args.domain_steps}")
        timed("domain", train, TrainConfig(data=str(data / "train"), out=base, base=args.base, null_rate=1.0,
                                           max_steps=args.domain_steps, resume=Path(base).exists(),
                                           samples_per_label=0))
    timed("finetune", train, TrainConfig(data=str(data / "train"), out=str(model), base=base,
                                         max_steps=args.steps, resume=model.exists(), samples_per_label=1,
                                         **overrides))
    if args.recipe:  # typicality and mine as the README's laptop recipe runs them: defaults, on the user's folder
        from mining.config import MineConfig
        from mining.mine import run_mining

        recipe_typ = timed("typicality", run_typicality, model=str(model), data=str(data / "train"),
                           out=str(work / f"recipe-typ-{model.name}"))
        timed("mine", run_mining, MineConfig(model=str(model), data=str(data / "train"), typicality=str(recipe_typ),
                                             out=str(work / f"recipe-mine-{model.name}")))
        phases["recipe_minutes"] = round(sum(phases.values()) / 60, 1)
    t_range = {} if args.t_range is None else {"t_range": tuple(args.t_range)}
    t_tag = "" if args.t_range is None else "-t{}-{}".format(*args.t_range)
    store_dir = run_typicality(model=str(model), data=str(data / "test"), draws=args.draws, **t_range,
                               out=str(work / f"typ-{model.name}-d{args.draws}{t_tag}"))
    store = TypicalityStore.open(store_dir)
    test = LabeledImages(data / "test")
    baseline = label_contrast_maps(data)  # benchmarks/label_contrast.py
    rows, mask_shares = [], []  # a mask's share of the image: the pointing game's chance of a random point
    for r in test:
        label = r.labels[0]
        gt = record_elements(r, 64, test.root)
        mask = gt.union(gt.characteristic([label]))
        distractors = gt.union(gt.shared())
        mask_shares.append(float(mask.mean()))
        tmap, bmap = store.map(r.image_id, label, 64), baseline[r.image_id]
        err_null, _ = store.error_maps(r.image_id, label)
        rows.append({"image_id": r.image_id, "label": label, "pointing": float(pointing_hit(tmap, mask)),
                     # how much the label changes the UNet's noise estimate at all, against its error
                     "label_gain_pct": float(100 * store.latent_map(r.image_id, label).mean() / np.mean(err_null)),
                     # where the map puts it: a label that helps, but not on its element, shows here
                     "map_element": float(tmap[mask].mean()), "map_distractors": float(tmap[distractors].mean()),
                     "map_background": float(tmap[~(mask | distractors)].mean()),
                     "pixel_auroc": auroc(tmap, mask), "contrast_pointing": float(pointing_hit(bmap, mask)),
                     "contrast_pixel_auroc": auroc(bmap, mask)})
    summary = summarise(rows, LABELS)
    info = json.loads((model / "diffmine_train.json").read_text())
    if args.domain_steps:  # the autoencoder was adapted in stage one
        first = json.loads((Path(base) / "diffmine_train.json").read_text())
        info.update({k: first.get(k) for k in ("reconstruction_before_adapt_psnr_db", "vae_adapted_steps")})
    summary.update(phases)
    summary.update(reconstruction_psnr_db=info.get("reconstruction_psnr_db"),
                   reconstruction_before_adapt_psnr_db=info.get("reconstruction_before_adapt_psnr_db"),
                   vae_adapted_steps=info.get("vae_adapted_steps"), base=args.base, steps=args.steps,
                   domain_steps=args.domain_steps,
                   draws=args.draws, t_range=args.t_range, chance_pointing=round(float(np.mean(mask_shares)), 3))
    save_run("planted_elements", summary, [{k: x[k] for k in ("image_id", "label", "pointing", "pixel_auroc",
                                                              "label_gain_pct", "map_element", "map_distractors",
                                                              "map_background", "contrast_pointing",
                                                              "contrast_pixel_auroc")}
                                           for x in rows], protocol=vars(args), protocol_file=args.protocol)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
