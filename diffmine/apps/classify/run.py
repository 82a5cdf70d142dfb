"""`diffmine classify`: each image's label is the argmax over labels of T(x | c) (diffusion classifier view).

T(x | c) = E[err_null - err_c] differs between labels only by -E[err_c] (the null term is shared
per draw), so the argmax of T is the label whose prompt denoises x best (Li et al. 2023).

Pruning (`prune adaptive`, as the diffusion classifier does): a first round of `first_draws`
draws scores every label; the `keep` best labels get `draws` more draws (other seeds); the best
finalist, by the draw-weighted mean of both rounds, is the prediction. Cost per image in UNet
rows: first_draws x (1 + L) + draws x (1 + keep), against draws x (1 + L) for `prune off`.

Split and resume (the job engine, `diffmine.core.job`): images are scored in fixed groups
(`group_size`: about one UNet batch of the first round), each finished group kept in
`OUT/.partial/<key>/`; under `accelerate launch` each process scores its share, and the main
process writes the outputs from the stored groups. Draws are seeded per image and the prompts embedded once in a fixed order, so
the files are the same bit for bit for any process count, and after a killed run is started again
(it scores only the groups it had not stored). Timing is in the returned dict and the CLI's line,
not in the files.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffmine.core.errors import DataError
from diffmine.core.files import write_json, write_text
from diffmine.core.inputs import ImageInput
from diffmine.core.job import Job, run_job
from diffmine.core.partial import fixed_groups

from diffmine.apps.classify.config import ClassifyConfig

# what a run replaces in --out (the rest is the user's and stays); its stored groups go once it is complete
OUTPUTS = ("predictions.csv", "classification.json", "config.json", "audit.csv", "audit.html", "audit", ".partial")


def load_data(data: str, label_column: str, skip_bad: bool = False) -> tuple[ImageInput, list[str] | None]:
    """Images and their true labels when the folder has them (label folders or metadata), else None."""
    from diffmine.core.dataset import METADATA_NAMES, LabeledImages

    root = Path(data)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    labeled = any((root / n).exists() for n in METADATA_NAMES) or any(
        p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if not labeled:
        return ImageInput(root, skip_bad=skip_bad), None
    ds = LabeledImages(root, label_column, skip_bad)
    multi = [r.image_id for r in ds if len(r.labels) != 1]
    if multi:
        raise DataError(f"{root}: image '{multi[0]}' has {len(ds[ds.index(multi[0])].labels)} labels; "
                        "classify expects one label per image")
    return ImageInput([r.path for r in ds], ids=[r.image_id for r in ds]), [r.labels[0] for r in ds]


class LabelScorer:
    """T(x | c) for chosen labels per image, accumulated over rounds of draws (draw-weighted means)."""

    def __init__(self, bundle, prompts, labels: list[str], t_range, seed: int, batch_size: int):
        self.bundle, self.prompts, self.labels = bundle, prompts, labels
        self.t_range, self.seed, self.batch_size = tuple(t_range), int(seed), int(batch_size)
        self.rows = 0  # UNet rows spent
        self._estimators: dict[tuple[int, int], object] = {}

    def estimator(self, draws: int, seed: int):
        """One estimator per (draws, seed), every label's prompt embedded at once in label order
        (the same table in every process, whichever labels its images reach)."""
        from typicality.engine import TypicalityEstimator

        key = (int(draws), int(seed))
        if key not in self._estimators:
            est = TypicalityEstimator(self.bundle, self.prompts, draws=draws, t_range=self.t_range, seed=seed,
                                      batch_size=self.batch_size)
            est.embed([self.prompts.prompt(c) for c in self.labels])
            self._estimators[key] = est
        return self._estimators[key]

    def round(self, images: torch.Tensor, ids: list[str], candidates: list[list[int]], draws: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """(n, L) scores (NaN where not a candidate) and (n, L, h, w) maps from `draws` new draws."""
        est = self.estimator(draws, seed)
        conds = [[self.labels[j] for j in c] for c in candidates]
        results = est.estimate(images, ids, conds)
        h, w = results[0].diff.shape[1:]
        scores = np.full((len(ids), len(self.labels)), np.nan)
        maps = np.zeros((len(ids), len(self.labels), h, w), np.float32)
        for i, (r, c) in enumerate(zip(results, candidates)):
            scores[i, c] = r.diff.astype(np.float64).mean(axis=(1, 2))
            maps[i, c] = r.diff
            self.rows += draws * (1 + len(c))
        return scores, maps


def classify_arrays(scorer: LabelScorer, images: torch.Tensor, ids: list[str], cfg: ClassifyConfig
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (n, L), draws per score (n, L), maps (n, L, h, w)) for one chunk of images."""
    L = len(scorer.labels)
    everyone = [list(range(L))] * len(ids)
    if cfg.prune == "off" or cfg.keep >= L:
        s, m = scorer.round(images, ids, everyone, cfg.draws, cfg.seed)
        return s, np.full(s.shape, cfg.draws), m
    s1, m1 = scorer.round(images, ids, everyone, cfg.first_draws, cfg.seed)
    finalists = [list(np.argsort(-row)[:cfg.keep]) for row in s1]
    s2, m2 = scorer.round(images, ids, finalists, cfg.draws, cfg.seed + 1)  # other seed: new draws
    n1, n2 = cfg.first_draws, cfg.draws
    final = ~np.isnan(s2)
    scores = np.where(final, (n1 * s1 + n2 * np.nan_to_num(s2)) / (n1 + n2), s1)
    maps = np.where(final[..., None, None], (n1 * m1 + n2 * m2) / (n1 + n2), m1)
    return scores, np.where(final, n1 + n2, n1), maps


def predictions(scores: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax among the labels with the most draws (the finalists), and its margin over the runner-up."""
    finalist = counts == counts.max(axis=1, keepdims=True)
    masked = np.where(finalist, scores, -np.inf)
    pred = masked.argmax(axis=1)
    second = np.sort(masked, axis=1)[:, -2]  # L >= 2 (run_classify checks)
    second = np.where(np.isfinite(second), second, np.sort(scores, axis=1)[:, -2])  # a single finalist
    margin = masked.max(axis=1) - second
    return pred, margin


def group_size(cfg: ClassifyConfig, labels: int) -> int:
    """Images per fixed group: as many as one UNet batch of the first round holds (at least one)."""
    first = cfg.draws if cfg.prune == "off" or cfg.keep >= labels else cfg.first_draws
    return max(1, cfg.batch_size // (first * (1 + labels)))


def classify_key(cfg: ClassifyConfig, loaded, inp: ImageInput, rt) -> dict:
    """What the scores depend on: the settings that change them, the model's weights and prompts, the images."""
    from typicality.fingerprints import model_fingerprint

    settings = {k: getattr(cfg, k) for k in ("draws", "prune", "first_draws", "keep", "t_range", "batch_size", "seed")}
    return {"command": "classify", **settings, "model": model_fingerprint(loaded.path), "labels": loaded.labels,
            "prompt": loaded.prompts.template, "null_prompt": loaded.prompts.null_prompt, "data": inp.digest(),
            "device": rt.device.type, "dtype": str(rt.dtype)}


class ClassifyJob(Job):
    """`diffmine classify` on the job engine: scores per image in fixed groups, then the tables."""

    owned = OUTPUTS

    def load(self, rt) -> None:
        cfg = self.config
        self.loaded = rt.load(cfg.model)  # "tiny", a folder or a hub id; a missing folder: one line
        self.labels = list(self.loaded.labels or [])
        if len(self.labels) < 2:
            raise DataError(f"{cfg.model}: the model knows {len(self.labels)} label(s) (diffmine_train.json); "
                            "classify needs 2 or more")
        self.inp, self.truth = load_data(cfg.data, cfg.label_column, cfg.skip_bad)
        if self.truth is not None:
            unknown = sorted(set(self.truth) - set(self.labels))
            if unknown:
                raise DataError(f"{cfg.data}: label '{unknown[0]}' is not one the model knows ({', '.join(self.labels)})")
        self.scorer = LabelScorer(self.loaded.bundle, self.loaded.prompts, self.labels, cfg.t_range, cfg.seed,
                                  cfg.batch_size)
        self.ids, self.phase = list(self.inp.ids), f"classify ({cfg.prune})"
        self.index = {image_id: k for k, image_id in enumerate(self.ids)}
        self.seconds = 0.0  # this process's scoring time

    def key(self, rt) -> dict:
        return classify_key(self.config, self.loaded, self.inp, rt)

    def groups(self) -> list[list[str]]:
        return fixed_groups(self.ids, group_size(self.config, len(self.labels)))

    def compute(self, group):
        start, before = time.time(), self.scorer.rows
        images = torch.from_numpy(self.inp.load(self.loaded.bundle.resolution, [self.index[i] for i in group]))
        s, c, m = classify_arrays(self.scorer, images, list(group), self.config)
        rows = (self.scorer.rows - before) // len(group)  # the same for every image of a group
        self.seconds += time.time() - start
        return {i: {"scores": s[n], "counts": c[n].astype(np.int64), "maps": m[n],
                    "rows": np.array([rows], np.int64)} for n, i in enumerate(group)}

    def write(self, stored, folder: Path) -> dict:
        cfg, inp, labels, truth = self.config, self.inp, self.labels, self.truth
        scores = np.stack([stored[i]["scores"] for i in inp.ids])
        counts = np.stack([stored[i]["counts"] for i in inp.ids])
        maps = np.stack([stored[i]["maps"] for i in inp.ids])
        unet_rows = int(sum(int(stored[i]["rows"][0]) for i in inp.ids))
        pred, margin = predictions(scores, counts)
        result = {"labels": labels, "images": len(inp), "prune": cfg.prune, "draws": cfg.draws,
                  "first_draws": cfg.first_draws if cfg.prune == "adaptive" else None,
                  "keep": cfg.keep if cfg.prune == "adaptive" else None, "unet_rows": unet_rows,
                  "unet_rows_per_image": unet_rows / len(inp), "accuracy": None, "confusion": None}
        if truth is not None:
            t = np.array([labels.index(x) for x in truth])
            conf = np.zeros((len(labels), len(labels)), int)
            np.add.at(conf, (t, pred), 1)
            result["accuracy"] = float((t == pred).mean())
            result["confusion"] = {"rows": "true label", "columns": "predicted label", "labels": labels,
                                   "matrix": conf.tolist()}
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image_id", "label", "predicted", "margin"] + [f"T_{c}" for c in labels])
        for i, image_id in enumerate(inp.ids):
            w.writerow([image_id, truth[i] if truth else "", labels[pred[i]], f"{margin[i]:.6g}"]
                       + [f"{v:.6g}" for v in scores[i]])
        write_text(folder / "predictions.csv", buf.getvalue())
        if truth is not None and cfg.audit:
            from diffmine.apps.classify.audit import write_audit

            result["audit"] = write_audit(folder, inp, truth, labels, scores, maps, self.loaded.bundle.resolution,
                                          cfg.audit_top)
        write_json(folder / "classification.json", result)
        seconds = max(self.seconds, 1e-9)
        return {**result, "seconds": round(seconds, 2), "images_per_s": round(len(inp) / seconds, 4)}


def run_classify(config: ClassifyConfig, progress: bool = True,
                 on_group: Callable[[int], None] | None = None) -> dict | None:
    """Classify every image of `config.data`; write predictions.csv, classification.json (and the audit).

    Returns the classification.json content plus "seconds" and "images_per_s" (this process's
    scoring time), from the process that wrote the files (None from the others, and from a
    simulated process share); the CLI can print
    f"{n} images, accuracy {accuracy:.3f}, {images_per_s:.2f} images/s; written to {out}".
    on_group(n) is called as this process stores its n-th group.
    """
    return run_job(ClassifyJob(config, progress), on_group)
