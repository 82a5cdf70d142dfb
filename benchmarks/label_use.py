"""Does a finetuned model use its labels on images it was not trained on? Label gain, training vs held-out.

    python benchmarks/label_use.py --model MODEL --train DATA/train --heldout DATA/test [--per-label 12]

A diagnosis of typicality (docs/method.md §2) before any map: per image of each folder (the first
--per-label images of every label), at t = 0.2, 0.4 and 0.6 of T with one seeded noise draw shared by
all prompts, the noise-prediction error under the null prompt and under every label's prompt.
Per image: `gain_pct`, 100 x (null error - own label's error) / null error (how much its label helps
the denoiser; typicality's image mean), and `own_lowest`, whether its own label gives the lowest error
of all labels (the label can be read back from the denoiser). Per folder and t: their means with 95 %
bootstrap intervals over images (percentile, 2000 resamples), and the null error's mean. A model that
uses its labels shows the same gain on both folders; one that memorised its training images shows it
on the training folder only. Appended to results/label_use.json with per-image rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
T_FRACTIONS = (0.2, 0.4, 0.6)


@torch.no_grad()
def label_errors(bundle, prompts, labels: list[str], folder: str, per_label: int, seed: int = 0) -> list[dict]:
    """Per image of `folder`: its label, and per t its null error, own-label gain and own_lowest."""
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.images import load_rgb, resize_crop, to_tensor_array

    data = LabeledImages(folder)
    records = [r for lab in labels for r in [x for x in data if x.labels[0] == lab][:per_label]]
    res = bundle.resolution
    x = torch.from_numpy(np.stack([to_tensor_array(resize_crop(load_rgb(r.path), res)) for r in records]))
    z = bundle.encode_images(x).float()
    emb = bundle.encode_prompts([prompts.null_prompt] + [prompts.prompt([lab]) for lab in labels]).float()
    own = torch.tensor([1 + labels.index(r.labels[0]) for r in records])
    rows = [{"image_id": r.image_id, "label": r.labels[0]} for r in records]
    g = torch.Generator().manual_seed(seed)
    for frac in T_FRACTIONS:
        t = torch.full((len(z),), int(frac * bundle.scheduler.config.num_train_timesteps))
        eps = torch.randn(z.shape, generator=g)
        a = bundle.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        zt = a.sqrt() * z + (1 - a).sqrt() * eps
        errs = torch.stack([((bundle.unet(zt, t, encoder_hidden_states=e[None].expand(len(z), -1, -1)).sample
                              - eps) ** 2).mean((1, 2, 3)) for e in emb], 1)
        gain = 100 * (errs[:, 0] - errs[torch.arange(len(z)), own]) / errs[:, 0]
        lowest = errs[:, 1:].argmin(1) + 1 == own
        for i, row in enumerate(rows):
            row.update({f"null_err_t{frac}": float(errs[i, 0]), f"gain_pct_t{frac}": float(gain[i]),
                        f"own_lowest_t{frac}": int(lowest[i])})
    return rows


def folder_figures(bundle, prompts, labels: list[str], folders: dict, per_label: int) -> tuple[dict, list[dict]]:
    """({"<split>_<figure>_t<frac>": mean, ..._ci: its interval, "<split>_null_err_t<frac>"}, per-image rows)
    of label_errors on each folder of `folders` (split name -> folder)."""
    from benchmarks.records import mean_interval

    summary, items = {}, []
    for split, folder in folders.items():
        rows = label_errors(bundle, prompts, labels, str(folder), per_label)
        items += [{"split": split, **r} for r in rows]
        for frac in T_FRACTIONS:
            for key in ("gain_pct", "own_lowest"):
                vals = [r[f"{key}_t{frac}"] for r in rows]
                summary[f"{split}_{key}_t{frac}"] = round(float(np.mean(vals)), 4)
                summary[f"{split}_{key}_t{frac}_ci"] = mean_interval(vals, 4)
            summary[f"{split}_null_err_t{frac}"] = round(float(np.mean([r[f"null_err_t{frac}"] for r in rows])), 5)
    return summary, items


def main(argv=None) -> dict:
    from benchmarks.records import save_run
    from diffmine.core.models import load_bundle, model_labels
    from diffmine.core.prompts import PromptTemplate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="the folder the model was finetuned on")
    ap.add_argument("--heldout", required=True, help="a folder of the same labels it never saw")
    ap.add_argument("--per-label", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default=None, help="what the record calls the model (default: its folder's name)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.model).eval()
    prompts = PromptTemplate.load(args.model)
    labels = sorted(model_labels(args.model) or [])
    figures, items = folder_figures(bundle, prompts, labels, {"train": args.train, "heldout": args.heldout},
                                    args.per_label)
    summary = {"model": args.name or Path(args.model).name, "labels": labels, **figures}
    save_run("label_use", summary, items, protocol=vars(args))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
