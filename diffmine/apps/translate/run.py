"""`diffmine translate`: every image of a data folder to a target label (or to every other label).

    TR_DIR/translations/<image>/<target>.png   one PNG per (image, target), written atomically
    TR_DIR/grids/<image>.png                   the source, then each target, labeled
    TR_DIR/translations.csv                    image_id, source_label, target, method, file
    TR_DIR/index.html                          the grids
    TR_DIR/config.json, translate.json         the settings; the model's fingerprint and labels

Resume: a killed run continues with what is not done (a run with other settings into the same
folder is refused). Images are translated in fixed groups (consecutive images, at most
`batch_size` translations); under `accelerate launch` process i takes groups i::n. A group
with a missing file is redone whole, so every output comes from the same batch however many
processes ran and however often the run was interrupted: the files are identical bit for bit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from diffmine.core.lock import writer_lock
from diffmine.core.files import write_json
from diffmine.core.settings import ConfigError, resume_keys, save_config, to_dict
from diffmine.core.errors import DataError
from diffmine.core.reconstruction import check_reconstruction, dataset_loader

from diffmine.apps.translate.config import TranslateConfig
from diffmine.core.models import model_labels, resolve_model
from typicality.fingerprints import model_fingerprint
from diffmine.apps.translate.outputs import grid_file, labeled_row, translation_file, write_csv, write_index
from diffmine.core.images import from_tensor_array
from diffmine.report.pictures import save_png

from diffmine.core.handoffs import TRANSLATIONS_META as META


def _targets(cfg: TranslateConfig, dataset, labels: list[str]) -> dict[str, list[str]]:
    """Each image's target labels; validates `to` against the model's labels."""
    if cfg.to == "all":
        if len(labels) < 2:
            raise ConfigError("to", f"all needs at least two labels; the model has only {', '.join(labels)}")
    elif cfg.to not in labels:
        raise ConfigError("to", f"'{cfg.to}' is not a label of the model; its labels: {', '.join(labels)}")
    out = {}
    for r in dataset:
        if len(r.labels) != 1:
            raise DataError(f"{r.path}: translation needs one label per image, this one has {'|'.join(r.labels)}")
        src = r.labels[0]
        if src not in labels:
            raise DataError(f"{r.path}: label '{src}' is not a label of the model ({', '.join(labels)})")
        out[r.image_id] = [lab for lab in labels if lab != src] if cfg.to == "all" else \
            ([cfg.to] if cfg.to != src else [])
    if not any(out.values()):
        raise ConfigError("to", f"'{cfg.to}' is the label of every image: nothing to translate")
    return out


def _check_resumable(out: Path, cfg: TranslateConfig) -> None:
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{path}: unreadable; remove {out} or choose another --out") from None
    new = to_dict(cfg)
    for k in ("model", "data", "layers"):  # paths compare resolved ("tiny" as the shipped folder)
        for d in (old, new):
            v = resolve_model(d[k]) if k == "model" and d.get(k) else d.get(k)
            d[k] = os.path.abspath(v) if v and Path(v).exists() else v
    diff = [k for k in resume_keys(TranslateConfig) if old.get(k) != new.get(k)]
    if diff:
        raise DataError(f"{out}: holds translations made with other settings ({', '.join(diff)}); "
                        "use another --out or the same settings to resume")


def run_translate(config: TranslateConfig, progress: bool = True) -> Path:
    """Translate (or resume translating) every image of `config.data`; returns the output folder."""
    from diffmine.core.dataset import LabeledImages
    from diffmine.core.runtime import Runtime

    from diffmine.apps.translate.translator import Translator

    cfg = config
    cfg.validate()
    model_path = resolve_model(cfg.model)  # a bad name fails before the data is scanned
    dataset = LabeledImages(cfg.data, cfg.label_column, cfg.skip_bad)
    labels = model_labels(model_path) or list(dataset.labels)
    targets = _targets(cfg, dataset, labels)
    out = Path(cfg.out)
    _check_resumable(out, cfg)

    rt = Runtime.start(cfg)
    with writer_lock(cfg.out, rt):  # one writer per folder (all processes of a launch are one)
        rank, world = rt.rank, rt.world
        loaded = rt.load(model_path)
        bundle, prompts = loaded.bundle, loaded.prompts
        translator = Translator(bundle, prompts, method=cfg.method, steps=cfg.steps, guidance=cfg.guidance,
                                inversion_steps=cfg.inversion_steps, strength=cfg.strength,
                                residual_injection=cfg.residual_injection, attention_injection=cfg.attention_injection,
                                layers=cfg.layers, seed=cfg.seed)  # bad steps/layers fail here, before any work
        res = bundle.resolution
        recon = check_reconstruction(bundle.vae, dataset_loader(dataset, res), len(dataset), res, what=cfg.data,
                                     warn=rank == 0)
        out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            save_config(cfg, out)
            write_json(out / META, {"model": os.path.abspath(model_path),
                                    "model_fingerprint": model_fingerprint(model_path),
                                    "labels": labels, "resolution": res, "template": prompts.template,
                                    "null_prompt": prompts.null_prompt,
                                    "layers": translator.layers.name if translator.layers else None,
                                    "residual_injection": translator.residual_injection,
                                    "attention_injection": translator.attention_injection, **recon})

        # Fixed groups of whole images (consecutive in id order, at most batch_size translations), shared
        # out i::n and redone whole when any of their files is missing: every output then comes from the
        # same batch whatever the process count or interruptions, so the files are the same bit for bit.
        groups = list(_groups([(r, targets[r.image_id]) for r in dataset if targets[r.image_id]], cfg.batch_size))
        mine = groups[rank::world]
        todo = [g for g in mine
                if any(not (out / translation_file(r.image_id, t)).is_file() for r, tg in g for t in tg)]
        bar = tqdm(total=sum(len(t) for g in todo for _, t in g), unit="img", desc=f"translate ({cfg.method})",
                   disable=not progress or rank != 0)
        for group in todo:
            recs, arrays = dataset.load_arrays(res, [r for r, _ in group])
            kept = {r.image_id for r in recs}
            group = [(r, t) for r, t in group if r.image_id in kept]  # skip_bad dropped an image
            results = translator.translate(torch.from_numpy(arrays), [r.image_id for r, _ in group],
                                           [r.labels[0] for r, _ in group], [t for _, t in group])
            for (r, tg), imgs in zip(group, results):
                for t, img in zip(tg, imgs):
                    path = out / translation_file(r.image_id, t)
                    if not path.is_file():  # a finished file is left as it is
                        save_png(path, from_tensor_array(img))
                bar.update(len(tg))
        bar.close()

        # grids for this process's images (from the files, so a resumed run draws them too)
        for r in tqdm([r for g in mine for r, _ in g], desc="grids", unit="img", disable=not progress or rank != 0):
            files = [out / translation_file(r.image_id, t) for t in targets[r.image_id]]
            if not files or (out / grid_file(r.image_id)).is_file() or not all(f.is_file() for f in files):
                continue
            try:
                _, src = dataset.load_arrays(res, [r])
            except DataError:
                continue
            tiles = [from_tensor_array(src[0])] + [np.asarray(_read_png(f)) for f in files]
            caps = [f"source: {r.labels[0]}"] + [f"to {t}" for t in targets[r.image_id]]
            save_png(out / grid_file(r.image_id), labeled_row(tiles, caps))
        rt.wait()
        if rt.is_main:
            _write_tables(out, cfg, translator, dataset, targets, labels)
        return out


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _groups(todo, batch_size: int):
    """Whole images, as many as keep the translations of a group within batch_size (at least one image)."""
    group, n = [], 0
    for r, t in todo:
        if group and n + len(t) > batch_size:
            yield group
            group, n = [], 0
        group.append((r, t))
        n += len(t)
    if group:
        yield group


def _write_tables(out: Path, cfg: TranslateConfig, translator, dataset, targets, labels) -> None:
    rows, grids = [], []
    for r in dataset:
        for t in targets[r.image_id]:
            f = translation_file(r.image_id, t)
            if (out / f).is_file():
                rows.append({"image_id": r.image_id, "source_label": r.labels[0], "target": t,
                             "method": cfg.method, "file": f})
        if (out / grid_file(r.image_id)).is_file():
            grids.append((r.image_id, r.labels[0], grid_file(r.image_id)))
    write_csv(out / "translations.csv", rows)
    summary = {"method": cfg.method, "to": cfg.to, "labels": ", ".join(labels), "translations": len(rows),
               "images": len(grids), "steps": cfg.steps, "guidance": cfg.guidance}
    if cfg.method == "pnp":
        summary.update({"inversion steps": cfg.inversion_steps, "layers": translator.layers.name,
                        "residual injection": translator.residual_injection,
                        "attention injection": translator.attention_injection})
    else:
        summary["strength"] = cfg.strength
    write_index(out / "index.html", grids, summary)
