"""The main job on the embedded default: the towns dataset, the shipped tiny model, the whole pipeline.

`build_assets` is how the shipped model was made (`make assets`); `run_demo` is `make demo`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
MODEL_NAME = "tiny-towns-model"
# The embedded dataset (finetune/towns.py): 4 towns, 64 px, per town 500 training and 40 held-out images.
TOWNS = dict(n_train=500, n_test=40, size=64, seed=0)
# The shipped model's recipe. From scratch, so a higher constant lr than METHOD.md's finetuning 1e-4,
# EMA, and 10 % null prompts (the faces preset's rate) so the unconditional branch learns well too.
RECIPE = dict(resolution=64, batch_size=256, lr=3e-4, vae_steps=3000, max_steps=4116, ema=True,
              checkpoint_every=1000)
PROMPT = ("A facade in {label}.", "A facade.", 0.10)
MODEL_FILES = ("model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae",
               "diffmine_prompts.json", "diffmine_train.json", "samples.png", "train_log.jsonl")


def towns_data(root: str | Path) -> Path:
    """Generate (or reuse) the embedded dataset under `root`; returns the folder with train/ and test/."""
    from finetune.towns import generate_towns

    return generate_towns(Path(root), progress=True, **TOWNS)


def build_assets(out: str | Path = ASSETS, minutes: float | None = None, work: str | Path = "runs/assets-train",
                 **overrides) -> Path:
    """Retrain the shipped model from scratch with the finetuner; copy the diffusers folder into `out`."""
    from finetune.prompts import PromptTemplate
    from finetune.train import TrainConfig, train

    out, work = Path(out), Path(work)
    data = towns_data(out / "towns")
    recipe = {**RECIPE, **overrides}
    start = time.time()
    train(TrainConfig(data=str(data / "train"), out=str(work), base="tiny", prompts=PromptTemplate(*PROMPT),
                      max_minutes=minutes, resume=True, **recipe))
    model = out / MODEL_NAME
    tmp = out / f".{MODEL_NAME}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in MODEL_FILES:
        src = work / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)
    shutil.rmtree(model, ignore_errors=True)
    tmp.rename(model)
    print(f"shipped model written to {model} ({(time.time() - start) / 60:.1f} min)")
    return model
