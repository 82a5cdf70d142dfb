"""`diffmine anomaly fit` and `diffmine anomaly score`: the detector from and to a folder."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path


from diffmine.core.files import replace_dir, write_text
from diffmine.core.settings import save_config

from diffmine.apps.anomaly.config import AnomalyFitConfig, AnomalyScoreConfig
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.folder import load_detector, save_detector
from diffmine.core.inputs import ImageInput


def fit_detector(config: AnomalyFitConfig, progress: bool = True) -> DiffusionDetector:
    """Fit on the normal images of `config.data`; write the detector folder `config.out` (all or nothing).

    The CLI can print: f"detector ({det.score}) fitted on {len(det.decision_scores_)} images, "
    f"threshold {det.threshold_:.4g}, written to {config.out}".
    """
    config.validate()
    inp = ImageInput(config.data)  # missing or empty folder: one line, before any work
    out = Path(config.out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        det = DiffusionDetector(
            model=config.model, base=config.base, score=config.score, contamination=config.contamination,
            normal_label=config.normal_label, draws=config.draws, t_range=tuple(config.t_range),
            trajectory_start=config.trajectory_start, trajectory_steps=config.trajectory_steps,
            finetune_steps=config.finetune_steps, finetune_lr=config.finetune_lr,
            finetune_batch=config.finetune_batch, resolution=config.resolution, batch_size=config.batch_size,
            seed=config.seed, work_dir=str(tmp), progress=progress, n_neighbors=config.n_neighbors)
        det.fit(inp.paths)
        shutil.rmtree(tmp / "data", ignore_errors=True)  # the normal images as the finetuner read them
        save_detector(det, tmp)
        save_config(config, tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if det.base is not None:
        det.model_path_ = str((out / "model").resolve())
        det._runtime = None
    return det


def score_images(config: AnomalyScoreConfig, progress: bool = True) -> dict:
    """Score every image of `config.data` with the detector folder; write the CSV (and map overlays).

    Returns {"csv", "images", "outliers", "threshold", "maps"}; the CLI can print
    f"{outliers} of {images} images above the threshold {threshold:.4g}; scores in {csv}".
    """
    config.validate()
    det = load_detector(config.detector)
    det.progress = progress
    inp = ImageInput(config.data)
    det._check_geometry(inp)
    paths = [str(p) for p in inp.paths]
    scores = det.decision_function(paths)
    outlier = (scores > det.threshold_).astype(int)
    proba = det.predict_proba(paths, method="linear")[:, 1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "path", "score", "outlier", "probability"])
    for i, image_id in enumerate(inp.ids):
        w.writerow([image_id, paths[i], f"{scores[i]:.6g}", int(outlier[i]), f"{proba[i]:.4f}"])
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    maps_dir = None
    if config.maps:
        maps_dir = write_maps(det, inp, paths, Path(config.maps))
    write_text(out, buf.getvalue())
    save_config(config, out.parent, name=f"{out.stem}.config.json")
    return {"csv": out, "images": len(inp), "outliers": int(outlier.sum()), "threshold": float(det.threshold_),
            "maps": maps_dir}


def write_maps(det: DiffusionDetector, inp: ImageInput, paths: list[str], folder: Path) -> Path:
    """One PNG per image: the model's view of it beside the anomaly map overlay (written as a whole folder)."""
    from diffmine.report.pictures import safe_name, save_heatmap_pair

    maps = det.anomaly_maps(paths)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    res = det.resolution_
    for i, image_id in enumerate(inp.ids):
        save_heatmap_pair(inp.thumbnail(i, res), maps[i], tmp / f"{safe_name(image_id)}.png")
    replace_dir(tmp, folder)
    return folder

