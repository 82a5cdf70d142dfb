"""Typicality as tensor math (docs/method.md §2), no I/O and no model:

    T(x | c) = E_{t, eps} [ ||eps - eps(z_t, t, null)||^2 - ||eps - eps(z_t, t, c)||^2 ]

per latent pixel (mean over latent channels), bilinearly upsampled to the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def noisy_latents(z0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps, a_t = alpha_bar per sample (n,)."""
    a = alpha_bar.reshape(-1, *([1] * (z0.dim() - 1)))
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def to_epsilon(pred: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor,
               prediction_type: str = "epsilon") -> torch.Tensor:
    """The model's noise estimate, whatever it was trained to predict (SD 1.x: epsilon; SD 2.x: v)."""
    if prediction_type == "epsilon":
        return pred
    a = alpha_bar.reshape(-1, *([1] * (z_t.dim() - 1)))
    if prediction_type == "v_prediction":
        return a.sqrt() * pred + (1 - a).sqrt() * z_t
    if prediction_type == "sample":
        return (z_t - a.sqrt() * pred) / (1 - a).sqrt()
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def error_map(eps: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) noise and estimate -> (n, h, w) squared error, mean over channels, in float32."""
    return (eps.float() - pred.float()).square().mean(dim=1)


def upsample(latent_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) or (n, h, w) map -> (H, W) / (n, H, W), bilinear, align_corners=False (any aspect ratio)."""
    x = latent_map.float()
    squeeze = x.dim() == 2
    x = x[None, None] if squeeze else x[:, None]
    y = F.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return y[0, 0] if squeeze else y[:, 0]
