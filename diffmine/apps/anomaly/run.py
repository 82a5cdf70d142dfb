"""`diffmine anomaly fit` and `diffmine anomaly score`: the detector from and to a folder.

`score` computes its images in the detector's fixed groups (`DiffusionDetector.groups`), keeps
each finished group in `.<csv name>.partial/<key>/` beside the CSV (`diffmine.core.partial`), and
writes the CSV (and the maps) from the stored groups once all are in: under `accelerate launch`
each process scores its share and the main process writes; a killed run, started again with the
same settings, scores only the groups it had not stored. The files are the same bit for bit.
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

from diffmine.core.lock import writer_lock
from diffmine.core.files import output_folder, write_json, write_text
from diffmine.core.errors import DataError
from diffmine.core.inputs import ImageInput
from diffmine.core.reconstruction import check_reconstruction
from diffmine.core.settings import save_config

from diffmine.apps.anomaly.config import AnomalyFitConfig, AnomalyScoreConfig
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.folder import DETECTOR_FILE, DETECTOR_OUTPUTS, load_detector, save_detector


def fit_detector(config: AnomalyFitConfig, progress: bool = True) -> DiffusionDetector:
    """Fit on the normal images of `config.data`; write the detector folder `config.out` (all or nothing).

    The CLI can print: f"detector ({det.score}) fitted on {len(det.decision_scores_)} images, "
    f"threshold {det.threshold_:.4g}, written to {config.out}".
    """
    from diffmine.core.runtime import Runtime

    config.validate()
    inp = ImageInput(config.data, skip_bad=config.skip_bad)  # missing or empty folder: one line, before any work
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.force:
        raise DataError(f"{out}: already holds a detector (or other files); pass --force to replace it, "
                        "or choose another --out")
    with writer_lock(out, Runtime.start(config)), output_folder(out, owned=DETECTOR_OUTPUTS) as tmp:
        det = DiffusionDetector(
            model=config.model, base=config.base, score=config.score, contamination=config.contamination,
            normal_label=config.normal_label, draws=config.draws, t_range=tuple(config.t_range),
            trajectory_start=config.trajectory_start, trajectory_steps=config.trajectory_steps,
            finetune_steps=config.finetune_steps, finetune_lr=config.finetune_lr,
            finetune_batch=config.finetune_batch, resolution=config.resolution, batch_size=config.batch_size,
            seed=config.seed, work_dir=str(tmp), progress=progress, n_neighbors=config.n_neighbors,
            device=config.device, dtype=config.dtype, tile_stride=config.tile_stride,
            patch_features=config.patch_features, patch_size=config.patch_size, patch_pool=config.patch_pool, patch_block=config.patch_block,
            patch_t=config.patch_t, patch_draws=config.patch_draws, top_k=config.top_k, coreset=config.coreset,
            coreset_ratio=config.coreset_ratio, bank_size=config.bank_size)
        det.fit(inp.paths)
        shutil.rmtree(tmp / "data", ignore_errors=True)  # the normal images as the finetuner read them
        save_detector(det, tmp)
        # with --base the finetuner has measured (and warned about) the same images already
        recon = check_reconstruction(det.loaded().bundle.vae, lambda idx: inp.load(det.resolution_, idx),
                                     len(inp), det.resolution_, what=config.data, warn=det.base is None)
        write_json(tmp / DETECTOR_FILE, {**json.loads((tmp / DETECTOR_FILE).read_text()), **recon})
        save_config(config, tmp)
    if det.base is not None:
        det.model_path_ = str((out / "model").resolve())
        det.unload()
    return det


def score_key(det: DiffusionDetector, detector_folder: Path, inp: ImageInput, rt) -> dict:
    """What the scores depend on: the detector (its file), its model's weights, the images, where it runs."""
    from typicality.fingerprints import model_fingerprint

    return {"command": "anomaly score",
            "detector": hashlib.sha256((detector_folder / DETECTOR_FILE).read_bytes()).hexdigest()[:16],
            "model": model_fingerprint(det.model_path_), "data": inp.digest(), "group_size": det.group_size(),
            "device": rt.device.type, "dtype": str(rt.dtype)}


def score_images(config: AnomalyScoreConfig, progress: bool = True,
                 on_group: Callable[[int], None] | None = None) -> dict | None:
    """Score every image of `config.data` with the detector folder; write the CSV (and map overlays).

    Returns {"csv", "images", "outliers", "threshold", "maps"} from the process that wrote the files
    (None from the others, and from a simulated process share); the CLI can print
    f"{outliers} of {images} images above the threshold {threshold:.4g}; scores in {csv}".
    on_group(n) is called as this process stores its n-th group.
    """
    from tqdm.auto import tqdm

    from diffmine.core.partial import PartialResults, collect, fixed_groups, key_digest, run_groups
    from diffmine.core.runtime import Runtime

    config.validate()
    rt = Runtime.start(config)
    with writer_lock(config.out, rt):  # one writer per CSV (all processes of a launch are one)
        det = load_detector(config.detector)
        det.progress = False
        det.use_runtime(rt)
        inp = ImageInput(config.data, skip_bad=config.skip_bad)
        det.check_geometry(inp)
        paths = [str(p) for p in inp.paths]
        out = Path(config.out)
        key = score_key(det, Path(config.detector), inp, rt)
        partial_root = out.parent / f".{out.name}.partial"
        store = PartialResults(partial_root / key_digest(key), key, rt.rank)
        index = {image_id: k for k, image_id in enumerate(inp.ids)}

        def compute(group):
            scores, maps = det.score_group(inp, [index[i] for i in group])
            return {i: {"score": np.asarray(scores[n : n + 1], np.float64), "map": maps[n].float().numpy()}
                    for n, i in enumerate(group)}

        bar = tqdm(total=len(inp), unit="img", desc=f"anomaly scores ({det.score})",
                   disable=not progress or not rt.is_main, dynamic_ncols=True)
        with bar:
            run_groups(fixed_groups(inp.ids, det.group_size()), compute, store, rt, bar, on_group)
        stored = collect(store, inp.ids, rt)
        if stored is None:
            return None  # not the main process, or a simulated share: a later single-process run writes the files
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
        store.remove()
        try:
            partial_root.rmdir()  # only when no other computation's partial results are left in it
        except OSError:
            pass
        return {"csv": out, "images": len(inp), "outliers": int(outlier.sum()), "threshold": float(det.threshold_),
                "maps": maps_dir}


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
