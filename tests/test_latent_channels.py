"""A model whose latent has other than SD v1.5's 4 channels runs every command that encodes images."""
from __future__ import annotations

import json

import numpy as np
import pytest

from diffmine.cli import main

RES = 32


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    from diffmine.core.tiny import build_tiny_bundle

    out = tmp_path_factory.mktemp("wide") / "model"
    build_tiny_bundle(resolution=RES, latent_channels=8).save_pretrained(out)
    return out


def test_an_eight_channel_latent_runs_finetune_typicality_mine_and_anomaly(wide_model, color_dataset, tmp_path):
    from diffusers import UNet2DConditionModel

    from typicality.store import TypicalityStore

    model = tmp_path / "finetuned"
    assert main(["finetune", "--base", str(wide_model), "--data", str(color_dataset), "--out", str(model),
                 "--max-steps", "2", "--batch-size", "4", "--resolution", str(RES), "--adapt-vae", "never"]) == 0
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    assert (unet.config.in_channels, unet.config.out_channels) == (8, 8)
    typ = tmp_path / "typ"
    assert main(["typicality", "--model", str(model), "--data", str(color_dataset), "--out", str(typ),
                 "--draws", "2"]) == 0
    store = TypicalityStore.open(typ)
    assert len(store.pairs()) == 12  # each of the 12 images with its own label
    latent = store.latent_map(*store.pairs()[0])
    assert tuple(latent.shape[-2:]) == (RES // 4, RES // 4) and np.isfinite(np.asarray(latent)).all()
    mined = tmp_path / "mine"
    assert main(["mine", "--model", str(model), "--data", str(color_dataset), "--typicality", str(typ),
                 "--out", str(mined), "--per-image", "2", "--clusters", "2", "--min-images", "1"]) == 0
    assert (mined / "report.html").is_file()
    for score in ("reconstruction", "patches"):  # denoising errors of 8-channel draws; the VAE's cells
        det = tmp_path / f"det-{score}"
        assert main(["anomaly", "fit", "--model", str(model), "--data", str(color_dataset / "red"),
                     "--out", str(det), "--score", score, "--draws", "2"]) == 0
        scores = np.asarray(json.loads((det / "detector.json").read_text())["decision_scores"])
        assert len(scores) == 6 and np.isfinite(scores).all() and scores.std() > 0, score
