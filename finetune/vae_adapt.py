"""Giving the UNet latents that keep the user's images, before it learns them (`--adapt-vae`).

A latent diffusion model sees only what its VAE keeps. The shipped small base learned facades
only: on other images it reconstructs 10-20 dB, and a label's small elements are gone before the
UNet ever sees them. Further training of that VAE tops out near 22 dB on thin outlines within a
CPU budget (benchmarks/vae_adaptation.py): a million weights, one layer a level, a 4-channel
latent. So with `auto`, when the finetuner measures a small base below the guard's floor on the
user's images (diffmine.core.reconstruction), it trains a fresh fast autoencoder on them
(`diffmine.core.autoencoders.fast_autoencoder`: deep-compression design, 16-channel latent,
benchmarks/vae_adaptation.py) and gives the UNet input and output layers of that width
(`fit_unet`); the UNet is then finetuned on the new latents. The autoencoder is cached under a
key of the data and the settings, checkpointed while it trains (a killed run continues it) and
exported with the model, so every later command reads the same latents.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from diffmine.core.autoencoders import FAST_DOWNSAMPLINGS
from diffmine.core.files import output_folder
from diffmine.core.settings import ConfigError
from diffmine.core.seeds import stable_seed
from finetune.vae_train import train_vae

# `auto` adapts VAEs this small only: the tiny family trains in minutes on a CPU, while SD's
# 83M-parameter VAE rarely falls below the floor and would need a GPU run of its own.
SMALL_VAE_PARAMS = 10_000_000
# The fast autoencoder's peak rate (cosine decay), chosen on the broad corpus's generators (benchmarks/
# vae_adaptation.py --domains broad, 3000 steps): 30.3 dB against 29.5 at 1e-3; 3e-3 trailed at 1000 steps.
ADAPT_LR = 5e-4
DESIGN = "dc-16"  # names the autoencoder trained (part of the cache key: a new design never reuses an old one)
ADAPT_BATCH = 8  # small batches, more steps: on a CPU the step count buys more than the batch


def design(downsampling: int) -> str:
    """The cache key's name of the fast autoencoder downsampling by `downsampling` (the default factor keeps
    DESIGN, so the caches made before the factor was a setting stay valid)."""
    return DESIGN if downsampling == FAST_DOWNSAMPLINGS[0] else f"{DESIGN}-f{downsampling}"


def is_small(vae) -> bool:
    """A VAE of the tiny family's size (SMALL_VAE_PARAMS), not SD's."""
    return sum(p.numel() for p in vae.parameters()) <= SMALL_VAE_PARAMS


def wanted(mode: str, vae, figures: dict) -> bool:
    """Whether to adapt: always, never, or (auto) a small VAE measured below the guard's floor."""
    if mode != "auto":  # finetune.config.VAE_ADAPT_MODES
        return mode == "always"
    return is_small(vae) and figures["reconstruction_psnr_db"] < figures["reconstruction_floor_db"]


def starting_autoencoder(vae, seed: int, downsampling: int = FAST_DOWNSAMPLINGS[0]):
    """What --adapt-vae trains: a fresh fast autoencoder in place of a small VAE (the shipped base's, whose
    capacity is the limit; `downsampling` pixels per latent pixel), or a large VAE itself (SD's, with
    `always`: its latent layout is the UNet's)."""
    from diffmine.core.autoencoders import fast_autoencoder

    if is_small(vae):
        return fast_autoencoder(seed=seed, downsampling=downsampling)
    if downsampling != FAST_DOWNSAMPLINGS[0]:  # a large VAE is trained in its own layout: say so, not ignore it
        raise ConfigError("adapt_vae_downsampling", f"{downsampling} shapes the fast autoencoder of a small base "
                          "only; this base's VAE is adapted in its own layout: leave the option out")
    return vae


def adapt(vae, images: torch.Tensor, cache: Path, key: tuple, steps: int, seed: int,
          progress: bool = True, deadline: float | None = None, lr: float = ADAPT_LR, batch_size: int = ADAPT_BATCH,
          on_step=None):
    """`vae` trained `steps` more steps on `images`, or the cached result of the same adaptation.

    Returns (vae, seconds spent training now). Raises finetune.vae_train.VAEStopped at `deadline`
    (the checkpoint keeps the state for a rerun). `lr`, `batch_size`, `on_step`: for benchmarks."""
    done, checkpoint = _paths(cache, key)
    if (done / "config.json").exists():
        return load_adapted(cache, key), 0.0
    start = time.time()
    train_vae(vae, images, steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
              checkpoint=checkpoint, deadline=deadline, desc="training the autoencoder", on_step=on_step)
    with output_folder(done, owned=None) as tmp:  # a cache entry: replaced whole
        vae.save_pretrained(tmp)
    checkpoint.unlink(missing_ok=True)
    return vae, time.time() - start


def load_adapted(cache: Path, key: tuple):
    """The finished adaptation of `key` from the cache (the other processes of a launch read it)."""
    from diffmine.core.autoencoders import load_autoencoder

    return load_autoencoder(_paths(cache, key)[0], subfolder=None)


def fit_unet(unet, latent_channels: int, seed: int):
    """`unet` with input and output convolutions of `latent_channels` (fresh, seeded) when its own differ;
    the rest of its weights are kept. The UNet learns the new latents in the finetune that follows."""
    if unet.config.in_channels == latent_channels and unet.config.out_channels == latent_channels:
        return unet
    width = unet.config.block_out_channels[0]
    old_in, old_out = unet.conv_in, unet.conv_out
    with torch.random.fork_rng(devices=[]):  # module initialisers draw from the global RNG
        torch.manual_seed(seed)
        unet.conv_in = torch.nn.Conv2d(latent_channels, width, old_in.kernel_size, padding=old_in.padding)
        unet.conv_out = torch.nn.Conv2d(width, latent_channels, old_out.kernel_size, padding=old_out.padding)
    unet.conv_in.to(old_in.weight.device, old_in.weight.dtype)
    unet.conv_out.to(old_out.weight.device, old_out.weight.dtype)
    unet.register_to_config(in_channels=latent_channels, out_channels=latent_channels)
    return unet


def _paths(cache: Path, key: tuple) -> tuple[Path, Path]:
    """(the adapted VAE's folder, its training checkpoint) for the adaptation `key`."""
    tag = f"{stable_seed('adapt-vae', *key) % 10**12:012d}"
    return Path(cache, f"vae-adapted-{tag}"), Path(cache, f"vae-adapt-{tag}.pt")
