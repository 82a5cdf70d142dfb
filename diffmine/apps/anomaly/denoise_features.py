"""Denoising-error patch features: how well the model denoises each latent cell, per draw and channel.

The diffusion anomaly score (docs/method.md §5) averages the null prompt's squared denoising error
over draws and channels into one number per cell. For the `patches` memory bank the error is kept
as a vector instead: for each of the draws (the same timestep and noise for every tile, so a
component means the same thing in every patch) and each latent channel, log(error + FLOOR). The
bank then compares how a patch is denoised, not what it looks like (encoder_features.py, DIFT).
It is the comparison the denoising-error detectors (DDAD, DiffusionAD) suggest; on the defect
generator it ranks below the appearance features (benchmarks/anomaly_defects.py).
"""
from __future__ import annotations

import torch

from typicality.draws import Draws
from typicality.formula import noisy_latents, to_epsilon

FLOOR = 1e-4  # keeps log finite where the model denoises a cell almost exactly


@torch.inference_mode()
def denoising_error_features(est, images: torch.Tensor, draws: Draws, batch_size: int = 64) -> torch.Tensor:
    """(n, draws x C, h, w) float32 on the CPU: log squared null-prompt denoising errors of images (n, 3, R, R).

    `est` is a typicality.engine.TypicalityEstimator (its model, null prompt and latent encoding);
    `draws` the (timestep, noise) pairs every image shares; batch_size counts UNet rows.
    """
    unet, dev = est.bundle.unet, est.device
    null = est.embeddings([est.prompts.null_prompt])  # (1, tokens, width)
    z0 = est.encode(images, [""] * len(images))  # posterior mean (no per-image noise)
    d = len(draws)
    t = draws.timesteps.to(dev)
    eps = draws.noise.to(dev)
    alpha_bar = est.alphas_cumprod[draws.timesteps].to(dev)
    per_forward = max(1, int(batch_size) // d)  # whole images, all their draws in one forward
    out = []
    for i in range(0, len(z0), per_forward):
        z = z0[i:i + per_forward]
        n = len(z)
        eps_n, alpha_n = eps.repeat(n, 1, 1, 1), alpha_bar.repeat(n)  # rows: image-major, draws within
        z_t = noisy_latents(z.repeat_interleave(d, dim=0), eps_n, alpha_n)
        pred = unet(z_t.to(unet.dtype), t.repeat(n), encoder_hidden_states=null.expand(n * d, -1, -1),
                    return_dict=False)[0]
        err = (eps_n - to_epsilon(pred.float(), z_t, alpha_n, est.prediction_type)).square()  # (n * d, C, h, w)
        out.append(err.add_(FLOOR).log_().reshape(n, d * err.shape[1], *err.shape[2:]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)
