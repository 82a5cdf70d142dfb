"""The detector folder `diffmine anomaly fit` writes and `score` reads.

    DET_DIR/detector.json   format + version, hyper-parameters, threshold, training scores,
                            image geometry, model reference (and labels the model knows)
    DET_DIR/model/          the finetuned model, when fitted with --base (else the reference
                            points to the --model folder, absolute)
    DET_DIR/config.json     the settings of the fit
    DET_DIR/features.npy    score features: the normal images' DIFT features (the kNN reference)
    DET_DIR/patches.npy     score patches: the memory bank's patch features (float32, rows by
                            normal image); DET_DIR/patch_owners.npy the normal image of each row
A folder of another format version is refused rather than half-read.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from diffmine.core.files import write_bytes, write_json
from diffmine.core.errors import DataError

from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.kinds.features import FEATURES_FILE
from diffmine.apps.anomaly.kinds.patches import PATCH_OWNERS_FILE, PATCHES_FILE

FORMAT = "diffmine-anomaly-detector"
VERSION = 1
DETECTOR_FILE = "detector.json"
# what `anomaly fit --force` replaces in DET_DIR (data/: the normal images as the finetuner read them)
DETECTOR_OUTPUTS = (DETECTOR_FILE, "model", "config.json", FEATURES_FILE, PATCHES_FILE, PATCH_OWNERS_FILE, "data")


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def save_detector(det: DiffusionDetector, folder: str | Path) -> Path:
    """Write a fitted detector into `folder` (created); a --base model is copied into folder/model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = Path(det.model_path_)
    if det.base is not None:  # the finetuned model lives in the folder: it moves with it
        if model.resolve() != (folder / "model").resolve():
            from diffmine.core.files import output_folder

            with output_folder(folder / "model", owned=None) as tmp:  # the copy of diffmine's own model
                shutil.copytree(model, tmp, dirs_exist_ok=True)
        model_ref = "model"
    else:
        model_ref = str(model.resolve())
    for name, attribute in det.kind.saved.items():  # the kind's fitted arrays (features.npy, patches.npy, ...)
        write_bytes(folder / name, _npy_bytes(getattr(det, attribute)))
    params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in det.get_params().items()}
    for where in ("work_dir", "device", "dtype"):  # where it ran, not what was fitted: `score` picks its own
        params.pop(where, None)
    write_json(folder / DETECTOR_FILE, {
        "format": FORMAT, "version": VERSION, "params": params, "model": model_ref,
        "model_labels": det.labels_known_, "geometry": list(det.geometry_),
        "threshold": float(det.threshold_), "decision_scores": [float(s) for s in det.decision_scores_],
        "classes": int(det._classes)})
    return folder


def load_detector(folder: str | Path) -> DiffusionDetector:
    """A fitted detector from `folder`, or DataError with one line saying why not."""
    folder = Path(folder)
    path = folder / DETECTOR_FILE
    if not path.is_file():
        raise DataError(f"{folder}: not a detector folder (no {DETECTOR_FILE}; run `diffmine anomaly fit` first)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable detector file ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataError(f"{path}: not a diffmine anomaly detector")
    if info.get("version") != VERSION:
        raise DataError(f"{path}: detector format version {info.get('version')}, this diffmine reads version "
                        f"{VERSION}; fit it again")
    params = dict(info["params"])
    params["t_range"] = tuple(params["t_range"])
    det = DiffusionDetector(**params)
    model = Path(info["model"]) if Path(info["model"]).is_absolute() else folder / info["model"]
    if not model.is_dir():
        raise DataError(f"{path}: its model folder {model} does not exist")
    det.model_path_ = str(model.resolve())
    det.labels_known_ = list(info["model_labels"])
    det.geometry_ = tuple(info["geometry"])
    det.decision_scores_ = np.asarray(info["decision_scores"], dtype=np.float64)
    det._classes = int(info["classes"])
    kind = det.kind
    missing = [name for name in kind.saved if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder}: a {det.score} detector without its {missing[0]}; fit it again")
    for name, attribute in kind.saved.items():
        setattr(det, attribute, np.load(folder / name))
    kind.restore()
    det._process_decision_scores()  # threshold_, labels_, _mu, _sigma: PyOD's rule from the saved scores
    det.threshold_ = float(info["threshold"])
    return det
