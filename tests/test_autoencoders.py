"""The autoencoder interface: either family saved, loaded and measured the same way; the UNet fitted to a new width."""
from __future__ import annotations

import json

import pytest
import torch

from diffmine.core import autoencoders
from diffmine.core.errors import DataError
from diffmine.core.tiny import build_tiny_bundle
from finetune.vae_adapt import fit_unet


def test_the_fast_autoencoder_starts_near_a_downsampled_copy_and_is_seeded():
    from diffmine.core.reconstruction import psnr_db, reconstruct

    a, b = autoencoders.fast_autoencoder(seed=3), autoencoders.fast_autoencoder(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    state = torch.random.get_rng_state()
    autoencoders.fast_autoencoder(seed=4)
    assert torch.equal(state, torch.random.get_rng_state())  # the global stream is left as it was
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mean, std = autoencoders.encode(a, x)
    assert mean.shape == (2, autoencoders.FAST_LATENT_CHANNELS, 16, 16) and std is None
    assert autoencoders.downsampling(a.config) == 4 == autoencoders.downsampling(build_tiny_bundle().vae.config)
    assert reconstruct(a, x).shape == x.shape and psnr_db(x.numpy(), reconstruct(a, x)).shape == (2,)


def test_either_family_is_read_back_from_its_folder(tmp_path):
    kl = build_tiny_bundle().vae
    dc = autoencoders.fast_autoencoder()
    kl.save_pretrained(tmp_path / "kl" / "vae")
    dc.save_pretrained(tmp_path / "dc" / "vae")
    assert type(autoencoders.load_autoencoder(tmp_path / "kl")) is type(kl)
    assert type(autoencoders.load_autoencoder(tmp_path / "dc")) is type(dc)
    assert type(autoencoders.load_autoencoder(tmp_path / "dc" / "vae", subfolder=None)) is type(dc)


def test_an_autoencoder_it_does_not_read_is_refused_in_one_line(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(DataError, match=r"vae/config\.json: autoencoder 'VQModel' is not one diffmine reads"):
        autoencoders.load_autoencoder(tmp_path)


def test_fit_unet_replaces_only_the_latent_layers_and_is_seeded():
    unet = build_tiny_bundle().unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    assert fit_unet(unet, 4, seed=0) is unet and all(torch.equal(before[k], v) for k, v in unet.state_dict().items())
    fit_unet(unet, 16, seed=0)
    assert (unet.config.in_channels, unet.config.out_channels) == (16, 16)
    after = unet.state_dict()
    changed = {k for k in after if k not in before or after[k].shape != before[k].shape or not torch.equal(after[k], before[k])}
    assert changed == {"conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias"}
    out = unet(torch.randn(1, 16, 16, 16), 10, encoder_hidden_states=torch.randn(1, 77, 64)).sample
    assert out.shape == (1, 16, 16, 16)
    twin = fit_unet(build_tiny_bundle().unet, 16, seed=0)
    assert torch.equal(twin.conv_in.weight, unet.conv_in.weight)


def test_the_placement_recorder_sees_either_familys_encoder_and_decoder():
    from diffmine.core.placement import record_forwards
    from diffmine.core.reconstruction import reconstruct

    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for vae in (build_tiny_bundle(resolution=32).vae, autoencoders.fast_autoencoder()):
        with record_forwards(("vae.encoder", "vae.decoder")) as seen:
            reconstruct(vae, x)
        assert [f.part for f in seen] == ["vae.encoder", "vae.decoder"], type(vae).__name__
    from diffusers.models.autoencoders import autoencoder_dc

    assert "spy" not in autoencoder_dc.Encoder.forward.__qualname__  # the originals are back


def test_adaptation_replaces_a_small_vae_and_keeps_training_a_large_one(monkeypatch):
    from diffusers import AutoencoderDC

    import finetune.vae_adapt as va

    small = build_tiny_bundle().vae
    assert isinstance(va.starting_autoencoder(small, seed=0), AutoencoderDC)
    monkeypatch.setattr(va, "SMALL_VAE_PARAMS", 1000)  # the tiny VAE counted as SD-sized: its own layout kept
    assert va.starting_autoencoder(small, seed=0) is small
