"""How well a base's VAE reconstructs a user's images: measured once per command, warned when low.

Every latent-diffusion result starts from the VAE's latent: detail the VAE cannot reconstruct
is invisible to the UNet, so nothing mined, scored or translated from it can be trusted. The
commands that VAE-encode a user's images (finetune, typicality, anomaly fit, translate) call
`check_reconstruction` before their own work:

    recon = check_reconstruction(vae, load, n_images, resolution, what=data_folder)
    meta.update(recon)      # {"reconstruction_psnr_db": 27.4, ...} in the run's output JSON

It reconstructs a seeded sample (SAMPLE_SIZE images, posterior mean, at the command's
resolution, on the VAE's own device and dtype), records the mean PSNR and warns in one line
below FLOOR_DB. The sample is picked with its own generator and the posterior mean draws
nothing, so a command's own random draws are untouched.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from diffmine.core import autoencoders

FLOOR_DB = 24.0   # below it, small elements are visibly lost (a 64 px tiny model on facades: ~27 dB)
SAMPLE_SIZE = 32  # images: enough for a mean within ~1 dB, cheap next to any command
SAMPLE_SEED = 0
BATCH = 8
# A spatial frequency is "lost" when the reconstruction error carries at least this fraction
# of the image's own power at that frequency (signal-to-error ratio below 2).
LOST_POWER = 0.5


def sample_indices(n_images: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> list[int]:
    """A seeded sample of image indices, sorted; from a local generator (no global RNG touched)."""
    if n_images <= size:
        return list(range(n_images))
    return sorted(np.random.default_rng(seed).choice(n_images, size, replace=False).tolist())


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor | np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Images (n, 3, H, W) in [-1, 1] -> their VAE reconstructions from the posterior mean, float32 [-1, 1]."""
    images = torch.as_tensor(images)
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(vae.device, vae.dtype)
        out.append(autoencoders.decode(vae, autoencoders.encode(vae, x)[0]).float().clamp(-1, 1).cpu())
    return torch.cat(out).numpy()


def psnr_db(images: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of reconstructions in [-1, 1] (peak-to-peak range 2, i.e. 255 on 0..255)."""
    from skimage.metrics import peak_signal_noise_ratio

    return np.array([peak_signal_noise_ratio(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=2.0)
                     for a, b in zip(images, recon)])


def smallest_kept_px(images: np.ndarray, recon: np.ndarray) -> float:
    """About the smallest element (px) the reconstruction keeps: half the period of the lowest
    spatial frequency whose error power reaches LOST_POWER of the images' own power."""
    h, w = images.shape[-2:]
    spec = lambda a: np.abs(np.fft.fft2(a - a.mean(axis=(-2, -1), keepdims=True))) ** 2  # noqa: E731
    signal, error = spec(np.asarray(images, np.float64)), spec(np.asarray(recon, np.float64) - images)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.sqrt(fx ** 2 + fy ** 2)  # cycles per pixel, 0 .. ~0.7
    edges = np.arange(1, min(h, w) // 2 + 1) / min(h, w)  # one band per cycle-per-image
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (radius >= lo) & (radius < hi)
        s, e = signal[..., band].sum(), error[..., band].sum()
        if s > 0 and e >= LOST_POWER * s:
            return round(float(1.0 / (2.0 * lo)), 1)
    return 2.0  # every band up to the Nyquist frequency survives: 2 px is the pixel grid's own limit


def measure(vae, load: Callable[[Sequence[int]], np.ndarray], n_images: int, resolution: int,
            size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> dict:
    """Reconstruct a seeded sample of the images; the figures a run records (JSON-ready)."""
    idx = sample_indices(n_images, size, seed)
    images = np.asarray(load(idx), np.float32)
    was_training = vae.training
    vae.eval()
    try:
        recon = reconstruct(vae, images)
    finally:
        vae.train(was_training)
    psnr = psnr_db(images, recon)
    return {"reconstruction_psnr_db": round(float(psnr.mean()), 2),
            "reconstruction_psnr_min_db": round(float(psnr.min()), 2),
            "reconstruction_smallest_kept_px": smallest_kept_px(images, recon),
            "reconstruction_images": len(idx), "reconstruction_resolution": int(resolution),
            "reconstruction_floor_db": FLOOR_DB}


def warning_text(figures: dict, what: str = "") -> str | None:
    """The one-line warning for figures below the floor, or None."""
    if figures["reconstruction_psnr_db"] >= figures["reconstruction_floor_db"]:
        return None
    where = f"{what}: " if what else ""
    return (f"{where}the model reconstructs these images at {figures['reconstruction_psnr_db']:.1f} dB "
            f"(floor {figures['reconstruction_floor_db']:g} dB, {figures['reconstruction_images']} images at "
            f"{figures['reconstruction_resolution']} px): elements smaller than about "
            f"{figures['reconstruction_smallest_kept_px']:g} px are lost; finetuning a small base on them trains "
            "a fast autoencoder on them first (--adapt-vae), or use a larger base")


class ReconstructionWarning(UserWarning):
    """The base's VAE reconstructs the user's images below the floor."""


def check_reconstruction(vae, load: Callable[[Sequence[int]], np.ndarray], n_images: int, resolution: int,
                         what: str = "", warn: bool = True) -> dict:
    """`measure`, then one ReconstructionWarning line when the PSNR is below FLOOR_DB (if `warn`)."""
    figures = measure(vae, load, n_images, resolution)
    if warn:
        warn_if_low(figures, what, stacklevel=3)
    return figures


def warn_if_low(figures: dict, what: str = "", stacklevel: int = 2) -> None:
    """One ReconstructionWarning line when measured figures are below the floor (a caller that
    measured with warn=False and decided what to do first)."""
    text = warning_text(figures, what)
    if text:
        warnings.warn(text, ReconstructionWarning, stacklevel=stacklevel + 1)


def dataset_loader(dataset, resolution: int) -> Callable[[Sequence[int]], np.ndarray]:
    """`load` for a LabeledImages: images by index, decoded as the commands decode them."""
    return lambda idx: dataset.load_arrays(resolution, [dataset[i] for i in idx])[1]
