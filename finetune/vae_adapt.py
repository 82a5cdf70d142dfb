"""Adapting the base's VAE to the user's images before the UNet learns them (`--adapt-vae`).

A latent diffusion model sees only what its VAE keeps. The shipped small base learned facades
only: on other images it reconstructs 10-20 dB, and a label's small elements are gone before the
UNet ever sees them. With `auto`, the finetuner measures the base on a sample of the user's
images (the reconstruction guard, diffmine.core.reconstruction) and, below the guard's floor,
first trains the VAE on those images; the UNet is then finetuned on the new latents. The adapted
VAE is cached under a key of the data and the settings, checkpointed while it trains (a killed
run continues it) and exported with the model, so every later command reads the same latents.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from diffmine.core.files import output_folder
from diffmine.core.seeds import stable_seed
from finetune.vae_train import train_vae

# `auto` adapts VAEs this small only: the tiny family trains in minutes on a CPU, while SD's
# 83M-parameter VAE rarely falls below the floor and would need a GPU run of its own.
SMALL_VAE_PARAMS = 10_000_000
ADAPT_LR = 5e-4  # on shapes (400 user images): 16.1 dB at step 60 against 13.5 at 2e-3, 11.8 at 5e-3
ADAPT_BATCH = 8  # small batches, more steps: on a CPU the step count buys more than the batch


def wanted(mode: str, vae, figures: dict) -> bool:
    """Whether to adapt: always, never, or (auto) a small VAE measured below the guard's floor."""
    if mode != "auto":  # finetune.config.VAE_ADAPT_MODES
        return mode == "always"
    small = sum(p.numel() for p in vae.parameters()) <= SMALL_VAE_PARAMS
    return small and figures["reconstruction_psnr_db"] < figures["reconstruction_floor_db"]


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
              checkpoint=checkpoint, deadline=deadline, desc="adapting VAE", on_step=on_step)
    with output_folder(done, owned=None) as tmp:  # a cache entry: replaced whole
        vae.save_pretrained(tmp)
    checkpoint.unlink(missing_ok=True)
    return vae, time.time() - start


def load_adapted(cache: Path, key: tuple):
    """The finished adaptation of `key` from the cache (the other processes of a launch read it)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(_paths(cache, key)[0])


def _paths(cache: Path, key: tuple) -> tuple[Path, Path]:
    """(the adapted VAE's folder, its training checkpoint) for the adaptation `key`."""
    tag = f"{stable_seed('adapt-vae', *key) % 10**12:012d}"
    return Path(cache, f"vae-adapted-{tag}"), Path(cache, f"vae-adapt-{tag}.pt")
