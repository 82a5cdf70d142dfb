"""The two autoencoder families a model folder's `vae/` may hold, behind one small interface.

- `AutoencoderKL`: Stable Diffusion's VAE (and the shipped small base's): a Gaussian posterior,
  encoded to its mean for every measurement.
- `AutoencoderDC`: the deep-compression autoencoder design (Chen et al. 2024, diffusers'
  `AutoencoderDC`), deterministic. Its space-to-channel shortcuts make a freshly initialised one
  start near a downsampled copy of the image, so it learns a new domain in minutes on a CPU where
  a fresh AutoencoderKL is still near 12 dB (benchmarks/vae_adaptation.py, family kl-fresh). `fast_autoencoder` builds
  the small one the finetuner trains on a user's images when the base cannot reconstruct them.

Everything that encodes, decodes or reads a VAE's geometry goes through here, so the rest of the
code does not care which family a folder holds. A folder with an `AutoencoderDC` is read by
diffmine (`SDBundle.from_pretrained`); diffusers' `StableDiffusionPipeline` expects a KL VAE.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderDC, AutoencoderKL

from diffmine.core.errors import DataError

FAMILIES = {"AutoencoderKL": AutoencoderKL, "AutoencoderDC": AutoencoderDC}
# The fast small design: no layers at full resolution, one residual block at 1/2 and 1/4 of the side,
# a 16-channel latent (SD3's and FLUX's width; 4 channels lose thin outlines at this size).
FAST_CHANNELS = (32, 64, 64)
FAST_LAYERS = (0, 1, 1)
FAST_LATENT_CHANNELS = 16
# pixels per latent pixel: 4 as the small base; 2 drops the last level (latents twice as fine, so an element
# of a dozen pixels spans six latent pixels, and the UNet's cross-attention levels see it; 4x its compute)
FAST_DOWNSAMPLINGS = (4, 2)


def fast_autoencoder(latent_channels: int = FAST_LATENT_CHANNELS, seed: int = 0,
                     downsampling: int = FAST_DOWNSAMPLINGS[0]) -> AutoencoderDC:
    """A random-weight small `AutoencoderDC` downsampling by `downsampling` (4: the small base's factor), seeded."""
    if downsampling not in FAST_DOWNSAMPLINGS:
        raise ValueError(f"downsampling must be one of {FAST_DOWNSAMPLINGS}, got {downsampling}")
    n = len(FAST_CHANNELS) - FAST_DOWNSAMPLINGS.index(downsampling)
    with torch.random.fork_rng(devices=[]):  # module initialisers draw from the global RNG
        torch.manual_seed(seed)
        return AutoencoderDC(
            in_channels=3, latent_channels=latent_channels, attention_head_dim=8,
            encoder_block_types="ResBlock", decoder_block_types="ResBlock",
            encoder_block_out_channels=FAST_CHANNELS[:n], decoder_block_out_channels=FAST_CHANNELS[:n],
            encoder_layers_per_block=FAST_LAYERS[:n], decoder_layers_per_block=FAST_LAYERS[:n],
            encoder_qkv_multiscales=((),) * n, decoder_qkv_multiscales=((),) * n,
            upsample_block_type="pixel_shuffle", downsample_block_type="pixel_unshuffle",
            decoder_norm_types="rms_norm", decoder_act_fns="silu")


def family_of(folder: str | Path, subfolder: str = "vae"):
    """The autoencoder class a saved `vae/` folder names (AutoencoderKL when it names none)."""
    path = Path(folder, subfolder, "config.json") if subfolder else Path(folder, "config.json")
    name = "AutoencoderKL"
    if path.is_file():
        name = json.loads(path.read_text(encoding="utf-8")).get("_class_name", name)
    if name not in FAMILIES:
        raise DataError(f"{path}: autoencoder {name!r} is not one diffmine reads ({', '.join(FAMILIES)})")
    return FAMILIES[name]


def load_autoencoder(src: str | Path, subfolder: str | None = "vae", **kwargs):
    """The VAE of a local folder or hub id, of whichever family its config names."""
    cls = family_of(src, subfolder or "") if Path(str(src)).exists() else AutoencoderKL
    return cls.from_pretrained(str(src), subfolder=subfolder, **kwargs)


def is_deterministic(vae) -> bool:
    return isinstance(vae, AutoencoderDC)


def encode(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(posterior mean, posterior std or None for a deterministic autoencoder), unscaled latents."""
    if is_deterministic(vae):
        return vae.encode(images).latent, None
    dist = vae.encode(images).latent_dist
    return dist.mean, dist.std


def encode_for_training(vae, images: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a posterior sample, the KL term to add to the loss; zero for a deterministic autoencoder)."""
    if is_deterministic(vae):
        return vae.encode(images).latent, images.new_zeros(())
    post = vae.encode(images).latent_dist
    noise = torch.randn(post.mean.shape, generator=generator).to(post.mean.device, post.mean.dtype)
    return post.mean + post.std * noise, post.kl().mean()


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images (not clamped)."""
    return vae.decode(latents).sample


def block_channels(config) -> list[int]:
    """The encoder's per-level widths from a VAE config (object or dict) of either family."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    return list(get("block_out_channels", None) or get("encoder_block_out_channels"))


def downsampling(config) -> int:
    """Pixels per latent pixel: every level after the first halves the side (8 for SD's VAE)."""
    return 2 ** (len(block_channels(config)) - 1)


def feature_module(vae) -> torch.nn.Module:
    """The encoder module whose output is its last feature map before the latent projection."""
    return vae.encoder.down_blocks[-1] if is_deterministic(vae) else vae.encoder.mid_block
