"""When does finetuning teach a small model its labels? Label read-back on training and held-out images, per step.

    python benchmarks/label_learning.py [--n-train 100] [--steps 500 1000 1500 2000 2500 3000]
        [--base tiny] [--finetune JSON] [--seed 0] [--per-label 25] [--element-size 0.2] [--work runs/bench-label-learning]

A learning curve of benchmarks/label_use.py's diagnosis. The planted-element images
(diffmine/datasets/planted.py: 4 labels whose only difference is one small element; --n-train per
label, 25 held-out per label, 64 px) are finetuned with the README's laptop recipe (`diffmine
finetune --base tiny`, the VAE adaptation included; --base another model folder, such as the broad
small base) and the --finetune settings over it. The
finetuner runs to each --steps value in turn, resuming its own checkpoint, so every point of the
curve is the model a user would get by stopping there. At each point, per image (the first
--per-label of each label of both folders): the own label's gain over the null prompt and whether
the own label gives the lowest noise error of all labels (label_use.label_errors, t = 0.2, 0.4, 0.6
of T), with 95 % bootstrap intervals over images. Chance read-back: 0.25.

It separates two failures of the maps: a model that never reads its labels (training and held-out
near chance) and one that memorised its training images (training high, held-out near chance).
Appended to results/label_learning.json, a record per (settings, step), per-image rows beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> list[dict]:
    from benchmarks.label_use import folder_figures
    from benchmarks.records import save_run
    from diffmine.core.models import load_bundle
    from diffmine.core.prompts import PromptTemplate
    from diffmine.datasets.planted import ELEMENT_SIZE, LABELS, generate_planted
    from finetune.config import TrainConfig
    from finetune.train import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=100, help="training images per label")
    p.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 1500, 2000, 2500, 3000])
    p.add_argument("--base", default="tiny", help="model to finetune (the recipe's: the shipped tiny)")
    p.add_argument("--finetune", default=None, metavar="JSON", help="finetune settings over the recipe's")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--element-size", type=float, default=ELEMENT_SIZE,
                   help=f"side of the label's element over the image's (the generator's {ELEMENT_SIZE}; larger: a "
                        "control of whether the recipe learns labels at all when their evidence is larger)")
    p.add_argument("--per-label", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="runs/bench-label-learning")
    args = p.parse_args(argv)
    if not 0 < args.element_size <= 0.5:
        p.error(f"--element-size: a fraction of the image side in (0, 0.5], got {args.element_size}")
    torch.set_num_threads(args.threads)
    work = Path(args.work) / (f"seed{args.seed}-n{args.n_train}"
                              + (f"-e{args.element_size:g}" if args.element_size != ELEMENT_SIZE else ""))
    data = generate_planted(work / "data", n_train=args.n_train, n_test=25, seed=args.seed, progress=True,
                            element_size=args.element_size)
    overrides = json.loads(args.finetune) if args.finetune else {}
    # another base or setting, another folder: a model is never resumed under other settings
    base_tag = "" if args.base == "tiny" else f"-{Path(args.base).name}"
    model = work / ("model" + base_tag + "".join(f"-{k}{v}" for k, v in sorted(overrides.items())))
    labels = sorted(LABELS)
    records = []
    for steps in sorted(args.steps):
        train(TrainConfig(data=str(data / "train"), out=str(model), base=args.base, max_steps=steps,
                          resume=model.exists(), samples_per_label=0, checkpoint_every=min(args.steps),
                          **overrides))
        info = json.loads((model / "diffmine_train.json").read_text())
        if info["steps"] != steps:  # a folder left by a longer run: this point of the curve is gone
            raise SystemExit(f"{model}: already trained to step {info['steps']}, past {steps}; give another --work")
        bundle = load_bundle(str(model)).eval()
        prompts = PromptTemplate.load(str(model))
        figures, items = folder_figures(bundle, prompts, labels, {"train": data / "train", "heldout": data / "test"},
                                        args.per_label)
        summary = {"n_train": args.n_train, "element_size": args.element_size, "base": args.base, "finetune": overrides,
                   "step": steps, "seed": args.seed, **figures}
        summary.update(reconstruction_psnr_db=info.get("reconstruction_psnr_db"),
                       unet_minutes=round(info["train_seconds"] / 60, 1))
        records.append(save_run("label_learning", summary, items, protocol=vars(args)))
        print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_ci")}), flush=True)
    return records


if __name__ == "__main__":
    main()
