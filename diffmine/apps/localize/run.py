"""`diffmine localize`: typicality maps of each boxed finding's prompt, scored against the boxes.

    LOC_DIR/metrics.json       per finding and overall: auc_pr, iobb_0.1/0.25/0.5, pointing_game,
                               n_boxes (and base_* with a base model); boxes outside the crop
    LOC_DIR/per_image.csv      one row per scored box
    LOC_DIR/report.html        overlays ranked best to worst, a section per finding
    LOC_DIR/typicality/        the maps: a typicality store (typicality.store.TypicalityStore)
    LOC_DIR/typicality_base/   the base model's maps (with base_model)
    LOC_DIR/config.json

Maps come from the typicality stage (`typicality.engine.run_typicality`): per boxed image, one
single-label condition per boxed finding, each scored with the finding's own prompt against the
null prompt (docs/method.md §5), over the full t range by default. The stage sees the boxed images
through LOC_DIR/.images/ (links to the data files at their own relative paths, so image ids and
hence draws are the data set's, and a metadata.csv naming each image's boxed findings); it splits
them over the processes of `accelerate launch`, keeps every finished group in its store as it
ends, and a killed run resumes its stores. Once the stores are complete the main process scores
the boxes and writes the tables and report, swapped in whole (the job engine, `core.job`). Input
errors found before any map is computed leave no LOC_DIR.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from diffmine.evaluation.groundtruth import rasterize_boxes
from diffmine.evaluation.localization import DEFAULT_MAP_THRESHOLD, score_map, summarize
from diffmine.core.files import json_ready, write_json, write_text
from diffmine.core.job import Job, run_job
from diffmine.core.settings import resume_keys, to_dict
from diffmine.core.errors import DataError

from diffmine.apps.localize.boxes import PlacedBox, place_boxes, read_boxes
from diffmine.apps.localize.config import FULL_T_RANGE, LocalizeConfig

OUTPUTS = ("metrics.json", "per_image.csv", "report.html", "overlays", "config.json")  # swapped in whole
VIEW = ".images"  # the boxed images as the typicality stage reads them (removed once the maps are scored)
STORES = {"model": "typicality", "base_model": "typicality_base"}


def model_labels(model: str | Path) -> list[str]:
    """The labels a model was finetuned on (`diffmine_train.json`)."""
    from diffmine.core.models import model_labels as labels_of, resolve_model

    labels = labels_of(resolve_model(model))
    if labels is None:
        raise DataError(f"{model}: no diffmine_train.json with labels, so the model's labels are unknown "
                        "(localisation needs a model finetuned by `diffmine finetune`)")
    return labels


# -- maps ----------------------------------------------------------------------------------
def compute_maps(bundle, images: np.ndarray, image_ids: Sequence[str], findings: Sequence[Sequence[str]], out,
                 prompts=None, t_range=FULL_T_RANGE, draws: int | None = None, seed: int = 0, batch_size: int = 64,
                 progress: bool = True, desc: str = "typicality", runtime=None):
    """Typicality store at `out` with, per image, one map per finding (each its own prompt vs null).

    For images already in memory and a bundle built in memory (benchmarks, notebooks). The maps are
    computed on `runtime`'s device in its dtype (default: the runtime of `--device auto --dtype auto`,
    one process): the bundle is placed there first. `run_localize` uses the typicality stage instead."""
    from tqdm.auto import tqdm

    from diffmine.core.prompts import PromptTemplate
    from diffmine.core.runtime import Runtime
    from typicality.engine import DEFAULT_DRAWS, TypicalityEstimator
    from typicality.store import ShardWriter, TypicalityStore, merge_manifests

    runtime = runtime or Runtime.one_process()
    bundle = runtime.place(bundle.eval())
    prompts = prompts or PromptTemplate()
    est = TypicalityEstimator(bundle, prompts, draws=draws or DEFAULT_DRAWS, t_range=tuple(t_range), seed=seed,
                              batch_size=batch_size)
    res = images.shape[-1]
    latent = res // bundle.vae_scale_factor
    meta = {"model": "in-memory",
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
def localization_table(store, boxes: Sequence[PlacedBox], threshold: float = DEFAULT_MAP_THRESHOLD) -> tuple[dict, list[dict]]:
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
    from diffmine.core.models import resolve_model

    resolve_model(cfg.model, "model")  # 'tiny', a folder or a hub id; one line naming a bad one
    if cfg.base_model is not None:
        resolve_model(cfg.base_model, "base model")
    if not Path(cfg.data).is_dir():
        raise DataError(f"{cfg.data}: data folder does not exist")
    if not Path(cfg.boxes).is_file():
        raise DataError(f"{cfg.boxes}: boxes file does not exist")


def _write_view(view: Path, dataset, records, findings: Sequence[Sequence[str]]) -> None:
    """`view`: links to `records`' files at their paths relative to the data folder (the same image
    ids), and a metadata.csv giving each image its boxed findings (the typicality stage's labels)."""
    from diffmine.core.dataset import MULTI_LABEL_SEP

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file_name", "label"])
    for r, fs in zip(records, findings):
        rel = Path(r.path).relative_to(dataset.root)
        link = view / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() or link.exists()):
            tmp = link.with_name(f".{link.name}.{os.getpid()}")
            try:
                os.symlink(os.path.abspath(r.path), tmp)
            except OSError:  # no symlinks here (some Windows setups): a copy reads the same
                shutil.copyfile(r.path, tmp)
            os.replace(tmp, link)
        w.writerow([rel.as_posix(), MULTI_LABEL_SEP.join(fs)])
    write_text(view / "metadata.csv", buf.getvalue())


def _typicality_config(cfg: LocalizeConfig, model: str, view: Path, store: Path, res: int, force: bool):
    from typicality.config import TypicalityConfig

    # shard_seconds=0: a shard at every group's end, so a kill keeps every finished group, in the first minute too
    # (the finished store is compacted all the same);
    # labels="own": each image is scored for its own findings, whatever typicality's default (not a default)
    kw = dict(model=model, data=str(view), out=str(store), labels="own", t_range=tuple(cfg.t_range), seed=cfg.seed,
              batch_size=cfg.batch_size, group=cfg.group, shard_seconds=0, resolution=res, force=force,
              device=cfg.device, dtype=cfg.dtype, process_index=cfg.process_index, num_processes=cfg.num_processes)
    if cfg.draws is not None:
        kw["draws"] = cfg.draws
    return TypicalityConfig(**kw)


def _stale(tcfg, store: Path) -> bool:
    """True when `store` holds maps of other settings (or of the older layout): recomputed, as before."""
    from typicality.config import TypicalityConfig
    from typicality.fingerprints import data_fingerprint, model_fingerprint
    from typicality.store import read_manifests

    if not store.exists():
        return False
    try:
        found = json.loads((store / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return True
    want = json.loads(json.dumps(to_dict(tcfg), default=list))
    if any(found.get(k) != want.get(k) for k in (*resume_keys(TypicalityConfig), "model")):
        return True
    manifests = read_manifests(store)
    if manifests is None:
        return False
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.models import resolve_model

    view = LabeledImages(tcfg.data, check_images=False)  # other boxes, other images: other maps
    return (manifests[0].get("data_fingerprint") != data_fingerprint(view.records, view.root)
            or manifests[0].get("model_fingerprint") != model_fingerprint(resolve_model(tcfg.model)))


class LocalizeJob(Job):
    """`diffmine localize` on the job engine: the maps are the typicality stage's stores (each its own
    job, resumed group by group), then the main process scores the boxes and writes the tables."""

    owned = (*OUTPUTS, VIEW)  # the view of the boxed images goes once the maps are scored

    def check(self) -> None:
        _check_paths(self.config)

    def load(self, rt) -> None:
        """The boxes placed on the images, and the images (the stage shows its own progress)."""
        from diffmine.core.dataset import LabeledImages

        from diffmine.core.models import model_resolution

        cfg = self.config
        labels = model_labels(cfg.model)
        res = model_resolution(cfg.model)  # from the configs: the stage loads the weights
        if res is None:  # not a folder with configs (a model built in memory): its resolution as loaded
            res = int(rt.load(cfg.model).bundle.resolution)
        self.res = res
        self.dataset = dataset = LabeledImages(cfg.data, cfg.label_column, cfg.skip_bad)
        boxes = read_boxes(cfg.boxes, labels, cfg.skip_bad)
        inside, self.outside = place_boxes(boxes, dataset, res, cfg.boxes, cfg.skip_bad)
        if self.outside and rt.is_main:
            warnings.warn(f"{len(self.outside)} box(es) fall outside the {res} px centre crop and cannot be scored: "
                          + "; ".join(f"{cfg.boxes} row {b.box.row} ({b.box.file_name}, {b.finding})"
                                      for b in self.outside), stacklevel=2)
        wanted = {b.image_id for b in inside}
        records = [r for r in dataset if r.image_id in wanted]
        if not records:
            raise DataError(f"{cfg.boxes}: no box can be scored (none inside the images' centre crops)")
        self.records, self.images = dataset.load_arrays(res, records, progress=self.progress and rt.is_main)
        loaded_ids = {r.image_id for r in self.records}
        self.dropped = [b for b in inside if b.image_id not in loaded_ids]  # unreadable images, with skip_bad
        self.inside = [b for b in inside if b.image_id in loaded_ids]
        self.findings = [sorted({b.finding for b in self.inside if b.image_id == r.image_id}) for r in self.records]
        self.tcfgs = {name: _typicality_config(cfg, getattr(cfg, name), self.out / VIEW, self.out / folder, res,
                                               force=name == "base_model")
                      for name, folder in STORES.items() if getattr(cfg, name)}

    def work(self, rt, bar, on_group=None) -> dict | None:
        """The maps: the view of the boxed images, then one typicality store per model."""
        from typicality.engine import run_typicality

        out, view = self.out, self.out / VIEW
        created = not out.exists()
        try:
            if rt.is_main:
                _write_view(view, self.dataset, self.records, self.findings)
                for tcfg in self.tcfgs.values():
                    if _stale(tcfg, Path(tcfg.out)):
                        shutil.rmtree(tcfg.out)
            rt.wait()
            if not rt.is_main and rt.state is None:  # a simulated split: the view is this call's to write
                _write_view(view, self.dataset, self.records, self.findings)
            for tcfg in self.tcfgs.values():
                run_typicality(tcfg, progress=self.progress)  # merged on the main process of a launch
        except BaseException:
            if rt.is_main and created and not any(Path(t.out).exists() for t in self.tcfgs.values()):
                shutil.rmtree(out, ignore_errors=True)  # nothing computed: leave nothing behind
            raise
        return {} if rt.is_main and rt.launched else None  # the main process scores the stores

    def write(self, results, folder: Path) -> dict:
        from typicality.store import TypicalityStore

        cfg, inside, out = self.config, self.inside, self.out
        store = TypicalityStore.open(out / STORES["model"])
        table, rows = localization_table(store, inside, cfg.threshold)
        base_store = None
        if cfg.base_model:
            base_store = TypicalityStore.open(out / STORES["base_model"])
            base_table, base_rows = localization_table(base_store, inside, cfg.threshold)
            for name, v in base_table.items():
                table[name].update({f"base_{k}": x for k, x in v.items() if k != "n_boxes"})
            for r, br in zip(rows, base_rows):
                r.update({f"base_{k}": br[k] for k in ("auc_pr", "iobb", "pred_box", "pointing")})
        overall = table.pop("overall")
        metrics = json_ready({
            "findings": table, "overall": overall,
            "outside_crop": [{"row": b.box.row, "file_name": b.box.file_name, "finding": b.finding}
                             for b in self.outside],
            "unreadable": [{"row": b.box.row, "file_name": b.box.file_name, "finding": b.finding}
                           for b in self.dropped],
            "iobb_box": f"tight box of the connected region (8-connectivity) holding the map's maximum, among pixels "
                        f">= {cfg.threshold:g} of the min-max normalised map",
            "resolution": self.res, "t_range": list(cfg.t_range), "draws": store.meta["draws"],
        })
        write_json(folder / "metrics.json", metrics)
        write_text(folder / "per_image.csv", _per_image_csv(rows, self.records))
        from diffmine.apps.localize.report import write_report

        write_report(folder, metrics, rows, self.records, self.images, store, base_store, cfg.show)
        return metrics


def run_localize(config: LocalizeConfig, progress: bool = True) -> dict | None:
    """Localise every boxed finding; write LOC_DIR (see module doc) and return the metrics dict.

    Under `accelerate launch` every process computes its share of the maps and only the main
    process scores them (the others return None); with a simulated split (process_index) each
    call computes its share and returns None, and a later one-process run scores the stores."""
    metrics = run_job(LocalizeJob(config, progress))
    if metrics is not None and progress:
        outside = metrics["outside_crop"]
        print("scored boxes per finding: " + ", ".join(f"{k} {v['n_boxes']}" for k, v in metrics["findings"].items())
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
