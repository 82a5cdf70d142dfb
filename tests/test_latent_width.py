"""Widening the small VAE's latent keeps what it reconstructs, and gives the new channels room."""
import torch
from diffusers import AutoencoderKL

from benchmarks.latent_width import widen_latents
from diffmine.core.models import resolve_model


def test_a_widened_vae_reconstructs_as_before():
    vae = AutoencoderKL.from_pretrained(resolve_model("tiny"), subfolder="vae").eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x).latent_dist.mean).sample
        widen_latents(vae, 8)
        post = vae.encode(x).latent_dist
        after = vae.decode(post.mean).sample
    assert post.mean.shape[1] == 8 and vae.config.latent_channels == 8
    assert torch.equal(before, after)
    assert post.std[:, 4:].max() < 0.05  # the new channels start nearly deterministic
