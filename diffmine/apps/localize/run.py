"""`diffmine localize`: typicality maps of each boxed finding's prompt, scored against the boxes.

    LOC_DIR/metrics.json       per finding and overall: auc_pr, iobb_0.1/0.25/0.5, pointing_game,
                               n_boxes (and base_* with a base model); boxes outside the crop
    LOC_DIR/per_image.csv      one row per scored box
    LOC_DIR/report.html        overlays ranked best to worst, a section per finding
    LOC_DIR/typicality/        the maps: a typicality store (typicality.store.TypicalityStore)
    LOC_DIR/typicality_base/   the base model's maps (with base_model)
    LOC_DIR/config.json

Maps come from the typicality engine: per image, one single-label condition per boxed finding,
each scored with the finding's own prompt against the null prompt (METHOD.md §5), over the full
t range by default. The whole folder is built beside LOC_DIR and moved into place at the end,
so a failed run leaves nothing behind.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffmine.evaluation.groundtruth import rasterize_boxes
from diffmine.evaluation.localization import IOBB_THRESHOLDS, score_map, summarize
from diffmine.core.files import replace_dir, write_json, write_text
from diffmine.core.settings import save_config
from diffmine.core.errors import DataError

from diffmine.apps.localize.boxes import PlacedBox, place_boxes, read_boxes
from diffmine.apps.localize.config import LocalizeConfig

METRIC_KEYS = ("auc_pr",) + tuple(f"iobb_{t:g}" for t in IOBB_THRESHOLDS) + ("pointing_game", "n_boxes")


def model_labels(model: str | Path) -> list[str]:
    """The labels a model was finetuned on (`diffmine_train.json`)."""
    from diffmine.core.models import model_labels as labels_of

    labels = labels_of(model)
    if labels is None:
        raise DataError(f"{model}: no diffmine_train.json with labels, so the model's labels are unknown "
                        "(localisation needs a model finetuned by `diffmine finetune`)")
    return labels


# -- maps ----------------------------------------------------------------------------------
def compute_maps(model, images: np.ndarray, image_ids: Sequence[str], findings: Sequence[Sequence[str]], out,
                 prompts=None, t_range=(0.0, 1.0), draws: int | None = None, seed: int = 0, batch_size: int = 64,
                 progress: bool = True, desc: str = "typicality"):
    """Typicality store at `out` with, per image, one map per finding (each its own prompt vs null)."""
    from tqdm.auto import tqdm

    from diffmine.core.bundle import SDBundle
    from diffmine.core.prompts import PromptTemplate
    from typicality.engine import DEFAULT_DRAWS, TypicalityEstimator
    from typicality.store import ShardWriter, TypicalityStore, merge_manifests

    from typicality.engine import resolve_dtype

    bundle = model if isinstance(model, SDBundle) else SDBundle.from_pretrained(model)
    bundle = bundle.eval()
    if torch.cuda.is_available():  # the engine runs where the model is: an accelerator when there is one
        device = torch.device("cuda")
        bundle = bundle.to(device, resolve_dtype("auto", device))
    if prompts is None:
        prompts = PromptTemplate.load(model) if not isinstance(model, SDBundle) else PromptTemplate()
    est = TypicalityEstimator(bundle, prompts, draws=draws or DEFAULT_DRAWS, t_range=tuple(t_range), seed=seed,
                              batch_size=batch_size)
    res = images.shape[-1]
    latent = res // bundle.vae_scale_factor
    meta = {"model": os.path.abspath(model) if not isinstance(model, SDBundle) else "in-memory",
            "resolution": res, "latent_size": [latent, latent], "draws": est.draws,
            "t_range": [float(x) for x in t_range], "schedule": est.schedule, "antithetic": est.antithetic,
            "seed": int(seed), "labels_mode": "boxes", "sample_latents": False, "template": prompts.template,
            "null_prompt": prompts.null_prompt, "prediction_type": est.prediction_type,
            "dtype": str(bundle.unet.dtype).replace("torch.", ""), "num_train_timesteps": est.num_train_timesteps}
    store_labels = sorted({f for fs in findings for f in fs})
    writer = ShardWriter(out, meta, store_labels)
    conditions = [[(f,) for f in fs] for fs in findings]
    chunk = 16
    chunks = ((list(image_ids[i:i + chunk]), torch.from_numpy(images[i:i + chunk]), conditions[i:i + chunk])
              for i in range(0, len(image_ids), chunk))
    bar = tqdm(total=len(image_ids), unit="img", desc=f"{desc} ({est.draws} draws/map)", disable=not progress)
    for result in est.run(chunks):
        writer.add(result)
        bar.update(1)
    bar.close()
    writer.close()
    merge_manifests(out)
    return TypicalityStore.open(out)


# -- metrics ---------------------------------------------------------------------------------
def localization_table(store, boxes: Sequence[PlacedBox], threshold: float = 0.5) -> tuple[dict, list[dict]]:
    """Metrics per finding and `overall` of a store's maps against placed boxes, and one row per box.

    `store`: a TypicalityStore or its folder; each box is scored against the map of (its image,
    its finding) at the store's processing resolution.
    """
    from typicality.store import TypicalityStore

    if not hasattr(store, "map"):
        store = TypicalityStore.open(store)
    res = int(store.meta["resolution"])
    rows = []
    for b in boxes:
        typ_map = store.map(b.image_id, b.finding, res)
        mask = rasterize_boxes([b.xyxy], res)[0]
        s = score_map(typ_map, mask, threshold)
        rows.append({"image_id": b.image_id, "finding": b.finding, "box_row": b.box.row, "box": b.xyxy, **s})
    by_finding: dict[str, list[dict]] = {}
    for r in rows:
        by_finding.setdefault(r["finding"], []).append(r)
    table = {f: summarize(rs) for f, rs in sorted(by_finding.items())}
    table["overall"] = summarize(rows)
    return table, rows


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj


def format_table(metrics: dict) -> str:
    """The per-finding table as text (finetuned, and base where present)."""
    has_base = any("base_auc_pr" in v for v in metrics["findings"].values())
    head = f"{'finding':<14}{'n':>5}{'AUC-PR':>9}{'IoBB.1':>8}{'IoBB.25':>9}{'IoBB.5':>8}{'point':>7}"
    if has_base:
        head += f"{'base AUC-PR':>13}{'base IoBB.1':>13}{'base point':>12}"
    lines = [head]
    for name, v in list(metrics["findings"].items()) + [("overall", metrics["overall"])]:
        f = lambda x: "   -" if x is None else f"{x:.3f}"  # noqa: E731
        line = (f"{name:<14}{v['n_boxes']:>5}{f(v['auc_pr']):>9}{f(v['iobb_0.1']):>8}{f(v['iobb_0.25']):>9}"
                f"{f(v['iobb_0.5']):>8}{f(v['pointing_game']):>7}")
        if has_base:
            line += f"{f(v.get('base_auc_pr')):>13}{f(v.get('base_iobb_0.1')):>13}{f(v.get('base_pointing_game')):>12}"
        lines.append(line)
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------
def _check_paths(cfg: LocalizeConfig) -> None:
    for name in ("model", "data", "base_model"):
        value = getattr(cfg, name)
        if value is not None and not Path(value).is_dir():
            raise DataError(f"{value}: {name.replace('_', ' ')} folder does not exist")
    if not Path(cfg.boxes).is_file():
        raise DataError(f"{cfg.boxes}: boxes file does not exist")


def run_localize(config: LocalizeConfig, progress: bool = True) -> dict:
    """Localise every boxed finding; write LOC_DIR (see module doc) and return the metrics dict."""
    from diffmine.core.bundle import SDBundle
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.prompts import PromptTemplate

    cfg = config
    cfg.validate()
    _check_paths(cfg)
    labels = model_labels(cfg.model)
    dataset = LabeledImages(cfg.data, cfg.label_column, cfg.skip_bad)
    boxes = read_boxes(cfg.boxes, labels, cfg.skip_bad)
    bundle = SDBundle.from_pretrained(cfg.model).eval()
    res = bundle.resolution
    inside, outside = place_boxes(boxes, dataset, res, cfg.boxes, cfg.skip_bad)
    if outside:
        warnings.warn(f"{len(outside)} box(es) fall outside the {res} px centre crop and cannot be scored: "
                      + "; ".join(f"{cfg.boxes} row {b.box.row} ({b.box.file_name}, {b.finding})" for b in outside),
                      stacklevel=2)
    wanted = {b.image_id for b in inside}
    records = [r for r in dataset if r.image_id in wanted]
    if not records:
        raise DataError(f"{cfg.boxes}: no box can be scored (none inside the images' centre crops)")
    records, images = dataset.load_arrays(res, records, progress=progress)
    loaded = {r.image_id for r in records}
    dropped = [b for b in inside if b.image_id not in loaded]  # unreadable images, with skip_bad
    inside = [b for b in inside if b.image_id in loaded]
    findings = [sorted({b.finding for b in inside if b.image_id == r.image_id}) for r in records]
    ids = [r.image_id for r in records]
    prompts = PromptTemplate.load(cfg.model)

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        kw = dict(prompts=prompts, t_range=cfg.t_range, draws=cfg.draws, seed=cfg.seed, batch_size=cfg.batch_size,
                  progress=progress)
        store = compute_maps(bundle, images, ids, findings, tmp / "typicality", desc="typicality (finetuned)", **kw)
        table, rows = localization_table(store, inside, cfg.threshold)
        base_store = None
        if cfg.base_model:
            base_store = compute_maps(SDBundle.from_pretrained(cfg.base_model), images, ids, findings,
                                      tmp / "typicality_base", desc="typicality (base)", **kw)
            base_table, base_rows = localization_table(base_store, inside, cfg.threshold)
            for name, v in base_table.items():
                table[name].update({f"base_{k}": x for k, x in v.items() if k != "n_boxes"})
            for r, br in zip(rows, base_rows):
                r.update({f"base_{k}": br[k] for k in ("auc_pr", "iobb", "pred_box", "pointing")})
        overall = table.pop("overall")
        metrics = _json_safe({
            "findings": table, "overall": overall,
            "outside_crop": [{"row": b.box.row, "file_name": b.box.file_name, "finding": b.finding} for b in outside],
            "unreadable": [{"row": b.box.row, "file_name": b.box.file_name, "finding": b.finding} for b in dropped],
            "iobb_box": f"tight box of the connected region (8-connectivity) holding the map's maximum, among pixels "
                        f">= {cfg.threshold:g} of the min-max normalised map",
            "resolution": res, "t_range": list(cfg.t_range), "draws": store.meta["draws"],
        })
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "per_image.csv", _per_image_csv(rows, records))
        from diffmine.apps.localize.report import write_report

        write_report(tmp, metrics, rows, records, images, store, base_store, cfg.show)
        save_config(cfg, tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print("scored boxes per finding: " + ", ".join(f"{k} {v['n_boxes']}" for k, v in table.items())
              + (f"; {len(outside)} outside the crop" if outside else ""))
        print(format_table(metrics))
    return metrics


def _per_image_csv(rows: list[dict], records) -> str:
    files = {r.image_id: r.path.name for r in records}
    base = "base_auc_pr" in (rows[0] if rows else {})
    cols = ["image_id", "file_name", "box_row", "finding", "auc_pr", "iobb", "pointing", "pred_x0", "pred_y0",
            "pred_x1", "pred_y1"] + (["base_auc_pr", "base_iobb", "base_pointing"] if base else [])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        line = [r["image_id"], files[r["image_id"]], r["box_row"], r["finding"], f"{r['auc_pr']:.6g}",
                f"{r['iobb']:.6g}", int(r["pointing"]), *r["pred_box"]]
        if base:
            line += [f"{r['base_auc_pr']:.6g}", f"{r['base_iobb']:.6g}", int(r["base_pointing"])]
        w.writerow(line)
    return buf.getvalue()
