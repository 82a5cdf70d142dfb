"""The main job on the embedded default: the towns dataset, the shipped tiny model, the whole pipeline.

`build_assets` is how the shipped model was made (`make assets`, recipe in
assets/tiny-towns-recipe.json; `--recipe broad` follows assets/tiny-broad-recipe.json and writes
assets/tiny-broad-model); `run_demo` is `make demo` (settings in diffmine/apps/demo/demo.json).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from diffmine.core.settings import load_config, option
from diffmine.core.models import ASSETS, SMALL_BASE_DIR

RECIPES = ("towns", "broad")  # assets/tiny-<name>-recipe.json -> assets/tiny-<name>-model
DEMO_FILE = Path(__file__).with_name("demo.json")
MODEL_FILES = ("model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae",
               "diffmine_prompts.json", "diffmine_train.json", "samples.png", "train_log.jsonl")


def _settings(path: Path) -> dict:
    """A settings file without its prose ('about', 'why...' keys)."""
    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items()
                if k != "about" and not k.startswith("why")}
    return strip(json.loads(path.read_text(encoding="utf-8")))


def recipe(name: str = "towns") -> dict:
    return _settings(ASSETS / f"tiny-{name}-recipe.json")


def demo_settings() -> dict:
    return _settings(DEMO_FILE)


@dataclass
class DemoConfig:
    out: str = option("runs/demo", "output folder: data/, typicality/, report.html, metrics.json")
    model: str | None = option(None, "model folder (default: the shipped tiny model)")
    fast: bool = option(False, "reduced settings (tests)")


@dataclass
class AssetsConfig:
    out: str = option(str(ASSETS), "folder to write the towns data and the retrained model into")
    minutes: float | None = option(None, "stop after this many minutes (run again to resume)")
    work: str | None = option(None, "training folder, checkpoints resumed when run again (default: "
                              "runs/assets-train, runs/assets-train-broad for --recipe broad)")
    recipe: str = option("towns", "which recipe to follow: towns (the shipped model) or broad (the broad "
                         "small base, assets/tiny-broad-recipe.json)", choices=RECIPES)


def towns_data(root: str | Path, **params) -> Path:
    """Generate (or reuse) the embedded dataset under `root`; returns the folder with train/ and test/."""
    from diffmine.datasets.towns import generate_towns

    return generate_towns(Path(root), progress=True, **{**recipe()["towns"], **params})


def broad_data(root: str | Path, **params) -> Path:
    """Generate (or reuse) the broad corpus under `root`; returns the folder with train/."""
    from diffmine.datasets.broad import generate_broad

    return generate_broad(Path(root), progress=True, **{**recipe("broad")["broad"], **params})


def build_assets(config: AssetsConfig | None = None, towns: dict | None = None, progress: bool = True,
                 data: dict | None = None, **overrides) -> Path | None:
    """Retrain a small model with the finetuner, following its recipe; copy it into `out`.

    `data` (or `towns`, the towns recipe's name for it) overrides the recipe's dataset parameters
    (tests). Returns None when `minutes` ran out before the model existed (still training its VAE)."""
    from diffmine.core.files import output_folder
    from finetune.train import train
    from finetune.config import TrainConfig

    cfg = config or AssetsConfig()
    name = cfg.recipe
    out = Path(cfg.out)
    work = Path(cfg.work or ("runs/assets-train" if name == "towns" else f"runs/assets-train-{name}"))
    params = data if data is not None else (towns or {})
    folder = towns_data(out / "towns", **params) if name == "towns" else broad_data(out / name, **params)
    start = time.time()
    train(TrainConfig(data=str(folder / "train"), out=str(work), max_minutes=cfg.minutes, resume=work.exists(),
                      **{**recipe(name)["train"], **overrides}), progress=progress,
          again="run the same command again to continue")  # assets resumes by itself: it has no --resume
    if not (work / "model_index.json").is_file():
        print(f"stopped after {cfg.minutes} min before the model exists (its VAE is still training); "
              f"run the same command again to resume from {work}")
        return None
    model = out / f"tiny-{name}-model"
    with output_folder(model, owned=MODEL_FILES) as tmp:
        for file in MODEL_FILES:
            src = work / file
            if file == "samples.png" and not src.exists():  # samples_per_label 0 draws none
                continue
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / file)
    print(f"{name} model written to {model} ({(time.time() - start) / 60:.1f} min)")
    return model


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def target_check(metrics: dict, key: str, op: str, threshold: float) -> dict:
    """A target on the point value, and whether the figure's whole 95 % interval meets it too."""
    value, (lo, hi) = metrics.get(key), metrics.get(f"{key}_ci") or [None, None]
    above = op == ">="
    met = value is not None and (value >= threshold if above else value < threshold)
    bound = lo if above else hi
    clears = met and bound is not None and (bound >= threshold if above else bound < threshold)
    return {"target": f"{op} {threshold}", "value": value, "ci": [lo, hi], "met": met, "interval_clears": clears}


def run_demo(config: DemoConfig | None = None, progress: bool = True, data: dict | None = None) -> dict:
    """Embedded dataset -> typicality on the held-out split -> mining -> report.html + metrics.json.

    `data` overrides the towns recipe's dataset parameters (a benchmark's fresh seed)."""
    from diffmine.core.files import write_json
    from diffmine.core.errors import DataError
    from typicality.config import TypicalityConfig
    from typicality.engine import run_typicality

    from mining.config import MineConfig
    from mining.mine import run_mining

    cfg = config or DemoConfig()
    start = time.time()
    out = Path(cfg.out)
    model = Path(cfg.model) if cfg.model else SMALL_BASE_DIR
    if not (model / "model_index.json").exists():
        raise DataError(f"{model}: no shipped model here (run `make assets` to rebuild it)")
    settings = demo_settings()
    typ_settings, mine_settings = dict(settings["typicality"]), dict(settings["mine"])
    if cfg.fast:  # tests: the same pipeline on fewer draws, features and clusters
        typ_settings.update(settings["fast"]["typicality"])
        mine_settings.update(settings["fast"]["mine"])
    test = towns_data(out / "data", **(data or {})) / "test"
    typ = run_typicality(load_config(TypicalityConfig, None, model=str(model), data=str(test),
                                     out=str(out / "typicality"), **typ_settings), progress=progress)
    run_mining(MineConfig(model=str(model), data=str(test), typicality=str(typ), out=str(out), **mine_settings),
               progress=progress)
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["wall_s"] = round(time.time() - start, 1)
    metrics["settings"] = {"typicality": typ_settings, "mine": mine_settings, "model": str(model)}
    metrics["targets"] = {k: target_check(metrics, k, op, v) for k, (op, v) in settings["targets"].items()}
    write_json(metrics_path, metrics)
    print(f"\nreport:  {(out / 'report.html').resolve()}\nmetrics: {metrics_path.resolve()}")
    for k, t in metrics["targets"].items():
        verdict = "met" if t["met"] else "NOT met"
        if t["met"] and not t["interval_clears"]:
            verdict += ", but not by the whole 95 % interval"
        print(f"  {k:32s} {_fmt(t['value']):>7}  [{_fmt(t['ci'][0])}, {_fmt(t['ci'][1])}]  "
              f"target {t['target']:8s} {verdict}")
    cvs = "characteristic_vs_shared_auroc"
    print(f"  {cvs:32s} {_fmt(metrics.get(cvs)):>7}  [{_fmt(metrics[cvs + '_ci'][0])}, "
          f"{_fmt(metrics[cvs + '_ci'][1])}]  (0.5: a detector blind to labels)")
    print(f"  wall time {metrics['wall_s']} s")
    return metrics
