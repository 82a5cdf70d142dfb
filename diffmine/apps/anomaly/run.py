"""`diffmine anomaly fit` and `diffmine anomaly score`: the detector from and to a folder.

Both run on the job engine (`diffmine.core.job`). `fit` is one piece of work written straight into
the new detector folder. `score` computes its images in the detector's fixed groups
(`DiffusionDetector.groups`), keeps each finished group in `.<csv name>.partial/<key>/` beside the
CSV, and writes the CSV (and the maps) from the stored groups once all are in: under `accelerate
launch` each process scores its share and the main process writes; a killed run, started again
with the same settings, scores only the groups it had not stored. The files are the same bit for bit.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from diffmine.core.files import output_folder, write_json, write_text
from diffmine.core.errors import DataError
from diffmine.core.inputs import ImageInput
from diffmine.core.job import Job, run_job
from diffmine.core.partial import fixed_groups
from diffmine.core.reconstruction import check_reconstruction
from diffmine.core.settings import save_config

from diffmine.apps.anomaly.config import AnomalyFitConfig, AnomalyScoreConfig
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.folder import DETECTOR_FILE, DETECTOR_OUTPUTS, load_detector, save_detector


class FitJob(Job):
    """`diffmine anomaly fit` on the job engine: one piece of work (finetune, score the normal images,
    set the threshold), written straight into the new detector folder."""

    owned = DETECTOR_OUTPUTS

    def check(self) -> None:
        self.inp = ImageInput(self.config.data, skip_bad=self.config.skip_bad)  # missing or empty: one line
        out = self.out
        if out.exists() and any(out.iterdir()) and not self.config.force:
            raise DataError(f"{out}: already holds a detector (or other files); pass --force to replace it, "
                            "or choose another --out")

    def load(self, rt) -> None:
        """Nothing to load here: the detector loads its model on its own runtime (`device`, `dtype`)."""

    def work(self, rt, bar, on_group=None) -> dict:
        return {}  # the fit writes its work (the finetuned model) into the new folder itself: `write`

    def write(self, results, folder: Path) -> DiffusionDetector:
        config, inp = self.config, self.inp
        # every hyper-parameter the command and the detector share, under the same name (config.py)
        params = {k: getattr(config, k) for k in DiffusionDetector().get_params() if hasattr(config, k)}
        det = DiffusionDetector(**{**params, "t_range": tuple(config.t_range), "work_dir": str(folder),
                                   "progress": self.progress})
        det.fit(inp.paths)
        shutil.rmtree(folder / "data", ignore_errors=True)  # the normal images as the finetuner read them
        save_detector(det, folder)
        # with --base the finetuner has measured (and warned about) the same images already
        recon = check_reconstruction(det.loaded().bundle.vae, lambda idx: inp.load(det.resolution_, idx),
                                     len(inp), det.resolution_, what=config.data, warn=det.base is None)
        write_json(folder / DETECTOR_FILE, {**json.loads((folder / DETECTOR_FILE).read_text()), **recon})
        return det


def fit_detector(config: AnomalyFitConfig, progress: bool = True) -> DiffusionDetector:
    """Fit on the normal images of `config.data`; write the detector folder `config.out` (all or nothing).

    The CLI can print: f"detector ({det.score}) fitted on {len(det.decision_scores_)} images, "
    f"threshold {det.threshold_:.4g}, written to {config.out}".
    """
    det = run_job(FitJob(config, progress))
    if det.base is not None:
        det.model_path_ = str((Path(config.out) / "model").resolve())
        det.unload()
    return det


def score_key(det: DiffusionDetector, detector_folder: Path, inp: ImageInput, rt) -> dict:
    """What the scores depend on: the detector (its file), its model's weights, the images, where it runs."""
    from typicality.fingerprints import model_fingerprint

    return {"command": "anomaly score",
            "detector": hashlib.sha256((detector_folder / DETECTOR_FILE).read_bytes()).hexdigest()[:16],
            "model": model_fingerprint(det.model_path_), "data": inp.digest(), "group_size": det.group_size(),
            "device": rt.device.type, "dtype": str(rt.dtype)}


class ScoreJob(Job):
    """`diffmine anomaly score` on the job engine: scores and maps per image in the detector's fixed
    groups, kept beside the CSV until it is written."""

    def load(self, rt) -> None:
        self.det = load_detector(self.config.detector)
        self.det.progress = False
        self.det.use_runtime(rt)
        self.inp = ImageInput(self.config.data, skip_bad=self.config.skip_bad)
        self.det.check_geometry(self.inp)
        self.ids, self.phase = list(self.inp.ids), f"anomaly scores ({self.det.score})"
        self.index = {image_id: k for k, image_id in enumerate(self.ids)}

    def key(self, rt) -> dict:
        return score_key(self.det, Path(self.config.detector), self.inp, rt)

    def groups(self) -> list[list[str]]:
        return fixed_groups(self.ids, self.det.group_size())

    def store_folder(self, digest: str) -> Path:
        return self.out.parent / f".{self.out.name}.partial" / digest  # beside the CSV

    def compute(self, group):
        scores, maps = self.det.score_group(self.inp, [self.index[i] for i in group])
        return {i: {"score": np.asarray(scores[n : n + 1], np.float64), "map": maps[n].float().numpy()}
                for n, i in enumerate(group)}

    def publish(self, stored) -> dict:
        """The CSV (a file among the user's), the maps folder and the settings beside them."""
        config, det, inp, out = self.config, self.det, self.inp, self.out
        paths = [str(p) for p in inp.paths]
        scores = np.array([float(stored[i]["score"][0]) for i in inp.ids])
        det.remember(ImageInput(paths), scores, torch.from_numpy(np.stack([stored[i]["map"] for i in inp.ids])))
        outlier = (scores > det.threshold_).astype(int)
        proba = det.predict_proba(paths, method="linear")[:, 1]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image_id", "path", "score", "outlier", "probability"])
        for i, image_id in enumerate(inp.ids):
            w.writerow([image_id, paths[i], f"{scores[i]:.6g}", int(outlier[i]), f"{proba[i]:.4f}"])
        out.parent.mkdir(parents=True, exist_ok=True)
        maps_dir = None
        if config.maps:
            maps_dir = write_maps(det, inp, paths, Path(config.maps))
        write_text(out, buf.getvalue())
        save_config(config, out.parent, name=f"{out.stem}.config.json")
        self.store.remove()
        return {"csv": out, "images": len(inp), "outliers": int(outlier.sum()), "threshold": float(det.threshold_),
                "maps": maps_dir}


def score_images(config: AnomalyScoreConfig, progress: bool = True,
                 on_group: Callable[[int], None] | None = None) -> dict | None:
    """Score every image of `config.data` with the detector folder; write the CSV (and map overlays).

    Returns {"csv", "images", "outliers", "threshold", "maps"} from the process that wrote the files
    (None from the others, and from a simulated process share); the CLI can print
    f"{outliers} of {images} images above the threshold {threshold:.4g}; scores in {csv}".
    on_group(n) is called as this process stores its n-th group.
    """
    return run_job(ScoreJob(config, progress), on_group)


def write_maps(det: DiffusionDetector, inp: ImageInput, paths: list[str], folder: Path) -> Path:
    """One PNG per image: the model's view of it beside the anomaly map overlay (written as a whole folder)."""
    from diffmine.report.pictures import safe_name, save_heatmap_pair

    maps = det.anomaly_maps(paths)
    res = det.resolution_
    # a maps folder holds maps: earlier runs' PNGs are this command's; anything else in it is kept
    with output_folder(folder, owned=tuple(p.name for p in folder.glob("*.png"))) as tmp:
        for i, image_id in enumerate(inp.ids):
            # patches: the stitched map is at the image's own size, shown over the image itself
            picture = np.asarray(inp.rgb(i)) if det.kind.maps_at_image_size else inp.thumbnail(i, res)
            save_heatmap_pair(picture, maps[i], tmp / f"{safe_name(image_id)}.png")
    return folder
