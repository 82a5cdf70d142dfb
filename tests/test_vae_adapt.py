"""--adapt-vae: a fast autoencoder is trained on the user's images when the small base cannot reconstruct them,
and the UNet learns its latents."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderDC
from safetensors.torch import load_file

from conftest import make_digits_folder
from diffmine.core.models import SMALL_BASE_DIR
from diffmine.core.reconstruction import FLOOR_DB
from diffmine.core.settings import ConfigError
from finetune.config import TrainConfig
from finetune.train import train

LABELS = ("ashford", "brill")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits_folder(tmp_path_factory.mktemp("digits"), LABELS, n_per_label=8)


@pytest.fixture(scope="module")
def towns(tmp_path_factory):
    from diffmine.datasets.towns import generate_towns

    return generate_towns(tmp_path_factory.mktemp("towns") / "t", n_train=1, n_test=3) / "test"


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), base="tiny", batch_size=4, max_steps=1, samples_per_label=0,
                prompt="A facade in {label}.", vae_steps=12)
    base.update(kw)
    return TrainConfig(**base)


def _vae(folder):
    return load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_adapts_a_foreign_folder_and_says_so(digits, tmp_path, capsys):
    out = train(_cfg(digits, tmp_path / "ft"))
    info = json.loads((out / "diffmine_train.json").read_text())
    before, after = info["reconstruction_before_adapt_psnr_db"], info["reconstruction_psnr_db"]
    assert before < FLOOR_DB  # the facade VAE on digits: the reason to adapt
    assert after > before + 1.0  # 12 steps already help; the exported model carries the adapted VAE
    assert info["vae_adapted_steps"] == 12
    assert not _same(_vae(out), load_file(str(SMALL_BASE_DIR / "vae" / "diffusion_pytorch_model.safetensors")))
    said = capsys.readouterr().out
    assert "training a fast autoencoder on them first (12 steps" in said and f"VAE adapted: {before:.1f} dB ->" in said
    assert "the UNet learns its 16-channel latents" in said
    # the exported folder's VAE is the one the run measured, and its UNet reads and predicts those latents
    vae = AutoencoderDC.from_pretrained(out, subfolder="vae")
    assert vae.config.scaling_factor != 1.0 and vae.config.latent_channels == 16
    unet = json.loads((out / "unet" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == 16


def test_a_finer_autoencoder_gives_the_unet_latents_of_half_the_side_and_typicality_maps(digits, tmp_path):
    """--adapt-vae-downsampling 2: 32 x 32 latents at 64 px; the exported model runs typicality to full-size maps."""
    from diffmine.core.autoencoders import downsampling
    from typicality.engine import run_typicality
    from typicality.store import TypicalityStore

    out = train(_cfg(digits, tmp_path / "ft", adapt_vae_downsampling=2))
    vae = AutoencoderDC.from_pretrained(out, subfolder="vae")
    assert downsampling(vae.config) == 2 and vae.config.latent_channels == 16
    assert json.loads((out / "unet" / "config.json").read_text())["sample_size"] == 32
    store = TypicalityStore.open(run_typicality(model=str(out), data=str(digits), draws=1, out=str(tmp_path / "typ")))
    image = store.image_ids[0]
    assert store.map(image, LABELS[0], 64).shape == (64, 64) and store.latent_map(image, LABELS[0]).shape == (32, 32)
    with pytest.raises(ConfigError, match="^adapt_vae_downsampling"):  # a resumed run keeps its latents
        train(_cfg(digits, tmp_path / "ft", max_steps=2, resume=True))


def test_a_large_vae_refuses_a_finer_factor_instead_of_ignoring_it(monkeypatch):
    """SD's VAE is adapted in its own layout: --adapt-vae-downsampling 2 on it is an error naming the flag."""
    from diffmine.core.tiny import build_tiny_bundle
    from finetune import vae_adapt

    vae = build_tiny_bundle().vae
    monkeypatch.setattr(vae_adapt, "SMALL_VAE_PARAMS", 0)  # the tiny VAE stands in for a large one
    assert vae_adapt.starting_autoencoder(vae, seed=0) is vae
    with pytest.raises(ConfigError, match="^adapt_vae_downsampling.*small base only"):
        vae_adapt.starting_autoencoder(vae, seed=0, downsampling=2)


def test_the_config_offers_the_factors_the_autoencoder_builds():
    """finetune.config writes the factors out (it must not import torch); they stay those of the autoencoder."""
    from diffmine.core.autoencoders import FAST_DOWNSAMPLINGS
    from finetune.config import ADAPT_VAE_DOWNSAMPLINGS

    assert ADAPT_VAE_DOWNSAMPLINGS == FAST_DOWNSAMPLINGS
    assert TrainConfig(data="d", out="o").adapt_vae_downsampling == FAST_DOWNSAMPLINGS[0]


def test_auto_keeps_the_base_on_its_own_domain_and_never_keeps_it_anywhere(digits, towns, tmp_path):
    shipped = load_file(str(SMALL_BASE_DIR / "vae" / "diffusion_pytorch_model.safetensors"))
    on_towns = train(_cfg(towns, tmp_path / "towns"), progress=False)
    assert _same(_vae(on_towns), shipped)
    assert "vae_adapted_steps" not in json.loads((on_towns / "diffmine_train.json").read_text())
    never = train(_cfg(digits, tmp_path / "never", adapt_vae="never", vae_steps=None), progress=False)
    assert _same(_vae(never), shipped)


def test_a_killed_adaptation_continues_to_the_same_vae(digits, tmp_path):
    whole = train(_cfg(digits, tmp_path / "whole"), progress=False)
    part = tmp_path / "part"
    train(_cfg(digits, part, max_minutes=1e-6), progress=False)  # stops after its first VAE step
    assert not (part / "model_index.json").exists() and list(part.glob("cache/vae-adapt-*.pt"))
    train(_cfg(digits, part), progress=False)  # the same command again continues the checkpoint
    assert _same(_vae(whole), _vae(part))
    assert not list(part.glob("cache/vae-adapt-*.pt"))  # the finished adaptation replaced its checkpoint


def test_vae_steps_without_any_vae_training_is_refused(digits, tmp_path):
    from diffmine.core.settings import ConfigError

    with pytest.raises(ConfigError, match="^vae_steps only applies"):
        train(_cfg(digits, tmp_path / "x", adapt_vae="never"), progress=False)


def test_a_failure_after_adaptation_keeps_the_adapted_vae(digits, tmp_path, monkeypatch):
    import finetune.train as ft

    def fail(*args, **kwargs):
        raise RuntimeError("a failure after the VAE adapted")

    monkeypatch.setattr(ft, "_cache", fail)
    with pytest.raises(RuntimeError, match="after the VAE adapted"):
        train(_cfg(digits, tmp_path / "x"), progress=False)
    assert list((tmp_path / "x").glob("cache/vae-adapted-*/config.json"))  # minutes of work not thrown away
