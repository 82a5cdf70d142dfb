"""A model whose latent has other than SD v1.5's 4 channels, from either autoencoder family (SD's KL, the
fast deep-compression one the finetuner trains on foreign images), runs every command that encodes images."""
from __future__ import annotations

import json

import numpy as np
import pytest

from diffmine.cli import main

RES = 32


@pytest.fixture(scope="module", params=[("kl", 8), ("dc", 16)], ids=["kl-8", "dc-16"])
def wide_model(request, tmp_path_factory):
    from diffmine.core.autoencoders import fast_autoencoder
    from diffmine.core.tiny import build_tiny_bundle
    from finetune.vae_adapt import fit_unet

    family, channels = request.param
    out = tmp_path_factory.mktemp(f"wide-{family}") / "model"
    if family == "kl":
        build_tiny_bundle(resolution=RES, latent_channels=channels).save_pretrained(out)
    else:
        bundle = build_tiny_bundle(resolution=RES)
        bundle.vae, bundle.unet = fast_autoencoder(channels), fit_unet(bundle.unet, channels, seed=0)
        bundle.save_pretrained(out)
    return out, family, channels


def test_a_wide_latent_runs_finetune_typicality_mine_and_anomaly(wide_model, color_dataset, tmp_path):
    from diffusers import UNet2DConditionModel

    from diffmine.core.autoencoders import load_autoencoder
    from typicality.store import TypicalityStore

    wide_model, family, channels = wide_model
    assert type(load_autoencoder(wide_model)).__name__ == {"kl": "AutoencoderKL", "dc": "AutoencoderDC"}[family]

    model = tmp_path / "finetuned"
    assert main(["finetune", "--base", str(wide_model), "--data", str(color_dataset), "--out", str(model),
                 "--max-steps", "2", "--batch-size", "4", "--resolution", str(RES), "--adapt-vae", "never",
                 "--samples-per-label", "1"]) == 0
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    assert (unet.config.in_channels, unet.config.out_channels) == (channels, channels)
    from PIL import Image

    assert Image.open(model / "samples.png").size == (90 + RES, 2 * RES)  # one decoded sample per label
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
