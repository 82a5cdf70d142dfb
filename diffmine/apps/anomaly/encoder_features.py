"""The VAE encoder's last feature map: per-cell appearance features at the latent's resolution.

The output of `vae.encoder.mid_block`, the map the encoder projects to the latent's mean and
variance (64 channels for the shipped tiny model, 512 for SD v1.5, at 1/4 and 1/8 of the image
side). It is a convolutional description of each cell's neighbourhood taken before the 4-channel
bottleneck, with no noise added, so a defect a few pixels wide still changes it; the `patches`
score's memory bank compares these cells (detector.py).
"""
from __future__ import annotations

import torch

from diffmine.core.autoencoders import feature_module


@torch.no_grad()
def vae_encoder_features(vae, images: torch.Tensor, batch_size: int = 64, module=None) -> torch.Tensor:
    """(n, C, h, w) float32 on the CPU: the encoder's last feature map (`vae.encoder.mid_block`'s output for
    SD's VAE, the last down block's for an AutoencoderDC), or `module`'s output (a shallower block of the
    encoder: benchmarks/anomaly_sources.py), for images (n, 3, R, R) in [-1, 1]."""
    from mining.features import StopForward

    captured: list[torch.Tensor] = []

    def hook(_module, _args, out):
        captured.append(out.float().cpu())
        raise StopForward  # the encoder's output layers are not needed

    handle = (feature_module(vae) if module is None else module).register_forward_hook(hook)
    try:
        for i in range(0, len(images), max(1, int(batch_size))):
            try:
                vae.encoder(images[i:i + batch_size].to(vae.device, vae.dtype))
            except StopForward:
                pass
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.zeros(0)
