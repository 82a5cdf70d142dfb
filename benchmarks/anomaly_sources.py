"""Why `patches` finds or misses a defect: one PatchCore over each feature source of the tiny base, depth by depth.

    OMP_NUM_THREADS=2 python -m benchmarks.anomaly_sources --threads 2 [--seed 77] [--cells ...] [--sources ...]

A diagnosis, not a choice: nothing here sets a default (benchmarks/anomaly_transfer.py chooses, on
diffmine.datasets.defects only). Feature sources, each a per-cell map of the detector's 64 px tiles
(side by side; `vae+pixels@32` every 32 px):

    vae-down0/1/2   the tiny base's VAE encoder after each down block (32, 16, 16 cells a tile side)
    vae             after its mid block: the `vae` patch features
    dift-up0/1/2    the UNet's up blocks at t = 161, the null prompt, 2 draws: `dift` with --patch-block
    pixels-8/16     raw 8 / 16 px RGB squares, one every half square: `pixels` with --patch-size
    vae+pixels      the shipped default (the detector itself), and vae+pixels@32 its tiles every 32 px
    vae-adapted, vae+pixels-adapted   `vae` and the detector with the base's VAE replaced by the fast
                    autoencoder `finetune --adapt-vae` trains, trained here on the cell's normal tiles
                    (finetune.vae_adapt.adapt: 3000 steps, as the finetuner; once per cell, timed apart)

Every source but the detector's own rows runs the same PatchCore here: learned cells L2-normalised
(pixels not), unpooled; a bank of 10 % of the normal cells (at most 16384) by greedy k-center
(diffmine.apps.anomaly.patches.greedy_coreset); exact nearest-bank distance; image score the maximum
(`max`) and top-k-or-mean (`or-mean`, the normal images' leave-one-out scores as its units).

Data cells (--cells): `defects-128` (diffmine.datasets.defects, weave, 128 px, seed 0: the choice's
generator, val split 6 per kind), and defect_families twill / mesh at 64 px and twill at 256 px drawn
with --seed (77: a seed drawn for this diagnosis only, never for a confirmation), 60 normal images to
fit (30 at 256 px) and 12 per defect kind, 24 good.
Per cell and source: image AUROC per group (defects: local, weave, global; families: local, global)
and pixel AUROC over the good and local-defect images, with 95 % bootstrap intervals over images;
seconds. Appended to results/anomaly_sources.json with per-image scores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.anomaly_defects import boot_ci
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.patches import (MemoryBank, bank_size_for, cut_tiles, greedy_coreset, local_or_global,
                                           patch_vectors, score_statistics, stitch, tile_boxes)
from diffmine.datasets import defect_families as fam
from diffmine.datasets.defects import GOOD, defect_group, generate_defects, read_split
from diffmine.evaluation.anomaly import pixel_auroc
from diffmine.evaluation.metrics import auroc

TILE = 64
CELLS = ("defects-128", "twill-64", "mesh-64", "twill-256")
SOURCES = ("vae-down0", "vae-down1", "vae-down2", "vae", "dift-up0", "dift-up1", "dift-up2", "pixels-8",
           "pixels-16", "vae+pixels", "vae+pixels@32")
ADAPTED = ("vae-adapted", "vae+pixels-adapted")  # not in the default run: each cell trains an autoencoder first
DETECTOR_ROWS = {"vae+pixels": {}, "vae+pixels@32": {"tile_stride": 32}, "vae+pixels-adapted": {}}  # the detector
BOOT = 500


def load_cell(name: str, seed: int) -> dict:
    """train (n, S, S, 3) uint8; test images, masks, labels and groups."""
    if name == "defects-128":
        data = generate_defects("/tmp/diffmine-bench/sources-defects-128", n_train=60, n_val=6, n_test=1, size=128,
                                seed=0)
        train = np.stack([np.asarray(Image.open(p).convert("RGB"))
                          for p in sorted((data / "train" / "images").rglob("*.png"))])
        rows = read_split(data / "val")
        test = np.stack([np.asarray(Image.open(data / "val" / r["file_name"]).convert("RGB")) for r in rows])
        return {"name": name, "train": train, "test": test, "masks": np.stack([r["mask"] for r in rows]),
                "label": np.array([r["label"] for r in rows]),
                "group": np.array([defect_group(r["label"]) or "" for r in rows])}
    texture, size = name.split("-")
    size = int(size)
    n_train = 30 if size > 64 else 60
    train, _ = fam.sample(texture, GOOD, size, n_train, seed)
    labels = fam.labels_for(texture)
    parts = [fam.sample(texture, lb, size, 24 if lb == GOOD else 12, seed, start=n_train if lb == GOOD else 0)
             for lb in labels]
    label = np.concatenate([[lb] * len(p[0]) for lb, p in zip(labels, parts)])
    return {"name": name, "train": train, "test": np.concatenate([p[0] for p in parts]),
            "masks": np.concatenate([p[1] for p in parts]), "label": label,
            "group": np.array([fam.group(lb) or "" for lb in label])}


class SourceFeatures:
    """(tiles (n, 3, 64, 64) in [-1, 1]) -> (n, h, w, C) patch vectors of one source of the tiny base."""

    def __init__(self, source: str, bundle):
        from diffmine.core.models import resolve_model
        from diffmine.core.prompts import PromptTemplate
        from mining.features import DiftExtractor

        self.kind, _, depth = source.partition("-")
        self.bundle, self.depth = bundle, int(depth[-1]) if depth else None
        if self.kind == "dift":  # the extractor and its prompt once per source, not once per batch
            self.null = PromptTemplate.load(resolve_model("tiny")).null_prompt
            self.dift = DiftExtractor(bundle, block=self.depth, draws=2, seed=0, batch_size=32)

    @torch.no_grad()
    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        from diffmine.apps.anomaly.encoder_features import vae_encoder_features
        from diffmine.apps.anomaly.pixel_features import pixel_patch_features

        if self.kind == "pixels":
            return patch_vectors(pixel_patch_features(tiles, self.depth), 1, normalize=False)
        if self.kind == "vae":
            module = None if self.depth is None else self.bundle.vae.encoder.down_blocks[self.depth]
            return patch_vectors(vae_encoder_features(self.bundle.vae, tiles, 64, module=module), 1)
        return patch_vectors(self.dift(tiles, [self.null] * len(tiles)), 1)


def adapted_model(cell: dict, work: Path, steps: int) -> tuple[Path, float]:
    """(the tiny base's folder with its VAE replaced by a fast autoencoder trained on the cell's normal
    tiles, as `finetune --adapt-vae` trains one; the training's seconds). The UNet gets input and output
    layers of the new width (unused by VAE features)."""
    import shutil

    from diffmine.core.models import load_bundle, resolve_model
    from finetune import vae_adapt

    tiles = np.concatenate([cut_tiles(Image.fromarray(a), TILE, TILE) for a in cell["train"]])
    bundle = load_bundle("tiny")
    key = ("anomaly-sources", cell["name"], len(tiles), steps, vae_adapt.DESIGN)
    vae, seconds = vae_adapt.adapt(vae_adapt.starting_autoencoder(bundle.vae, 0), torch.from_numpy(tiles),
                                   work / "cache", key, steps, 0, progress=False)
    folder = work / f"model-{cell['name']}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(resolve_model("tiny"), folder, ignore=shutil.ignore_patterns("vae", "unet"))
    vae.save_pretrained(folder / "vae")
    vae_adapt.fit_unet(bundle.unet, vae.config.latent_channels, 0).save_pretrained(folder / "unet")
    return folder, seconds


def patchcore(cell: dict, features: SourceFeatures) -> tuple[dict, np.ndarray]:
    """({"max": scores, "or-mean": scores}, maps (n, S, S)) of the cell's test images."""
    size = cell["train"].shape[1]
    boxes = tile_boxes(size, size, TILE, TILE)

    def cells(images):
        out = []
        for i in range(0, len(images), 16):
            tiles = np.concatenate([cut_tiles(Image.fromarray(a), TILE, TILE) for a in images[i:i + 16]])
            v = features(torch.from_numpy(tiles))
            out += list(v.reshape(len(images[i:i + 16]), len(boxes), *v.shape[1:]))
        return out  # per image (tiles, h, w, C)

    train = cells(cell["train"])
    per_image = [v.reshape(-1, v.shape[-1]) for v in train]
    owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(per_image)])
    pool = torch.cat(per_image)
    pick = greedy_coreset(pool, bank_size_for(len(pool), 0.1, 16384), 0)
    bank = MemoryBank(pool[torch.from_numpy(pick)].numpy(), owner[pick], "exact")
    stats = score_statistics([bank.distances(v.numpy(), exclude_owner=i) for i, v in enumerate(per_image)], 1)
    scores, maps = {"max": [], "or-mean": []}, []
    for v in cells(cell["test"]):
        d = bank.distances(v.reshape(-1, v.shape[-1]).numpy())
        scores["max"].append(d.max())
        scores["or-mean"].append(local_or_global(d, 1, stats))
        maps.append(stitch(torch.from_numpy(d.reshape(v.shape[:3])).float(), boxes, (size, size)).numpy())
    return {k: np.array(s) for k, s in scores.items()}, np.stack(maps)


def detector_rows(cell: dict, settings: dict, model="tiny") -> tuple[dict, np.ndarray]:
    """The shipped detector fitted once, its test images read with either image score (the maps are the same)."""
    det = DiffusionDetector(model=str(model), score="patches", **settings).fit(cell["train"])
    out = {name: det.set_params(image_score=image_score).decision_function(cell["test"])
           for name, image_score in (("max", "top-k"), ("or-mean", "top-k-or-mean"))}
    return out, np.asarray(det.anomaly_maps(cell["test"]))


def summarise(cell: dict, scores: dict, maps: np.ndarray) -> dict:
    good = cell["group"] == ""
    out = {}
    for name, s in scores.items():
        for g in sorted(set(cell["group"]) - {""}):
            idx = np.flatnonzero(good | (cell["group"] == g))
            y = ~good[idx]
            out[f"{name}_{g}"] = {"value": round(auroc(s[idx], y), 4),
                                  "ci": [round(v, 4) for v in boot_ci(idx, lambda i: auroc(s[idx][i], y[i]), n=BOOT)]}
    local = np.flatnonzero(good | (cell["group"] == "local"))
    out["pixel_local"] = round(pixel_auroc(maps[local], cell["masks"][local]), 4)
    return out


def main(argv=None) -> None:
    from benchmarks.records import save_run
    from finetune.config import ADAPT_VAE_STEPS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=77, help="the families' seed (a diagnosis-only seed)")
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES + ADAPTED)
    ap.add_argument("--adapt-steps", type=int, default=ADAPT_VAE_STEPS, help="the autoencoder's steps (the finetuner's)")
    ap.add_argument("--work", default="/tmp/diffmine-bench/sources-adapted", help="the adapted autoencoders' cache")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffmine.core.models import load_bundle

    bundle = load_bundle("tiny").eval()  # the base every source reads, loaded once
    report, items = {}, []
    for name in args.cells:
        cell = load_cell(name, args.seed)
        report[name] = {}
        adapted = None  # (bundle, folder) of the cell's adapted model, trained at its first -adapted source
        for source in args.sources:
            if source.endswith("-adapted") and adapted is None:
                folder, seconds = adapted_model(cell, Path(args.work), args.adapt_steps)
                report[name]["adapt_seconds"] = round(seconds, 1)
                adapted = load_bundle(str(folder)).eval(), folder
            t0 = time.perf_counter()
            base, model = (adapted if source.endswith("-adapted") else (bundle, "tiny"))
            source_name = source.removesuffix("-adapted")
            scores, maps = (detector_rows(cell, DETECTOR_ROWS[source], model) if source in DETECTOR_ROWS
                            else patchcore(cell, SourceFeatures(source_name, base)))
            report[name][source] = {**summarise(cell, scores, maps), "seconds": round(time.perf_counter() - t0, 1)}
            print(name, source, json.dumps({k: (v["value"] if isinstance(v, dict) else v)
                                            for k, v in report[name][source].items()}), flush=True)
            items += [{"cell": name, "source": source, "index": i, "label": cell["label"][i],
                       **{f"score_{k}": f"{s[i]:.6g}" for k, s in scores.items()}} for i in range(len(cell["label"]))]
    save_run("anomaly_sources", {"cells": report}, items, protocol=vars(args))


if __name__ == "__main__":
    main()
