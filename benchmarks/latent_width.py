"""Widening a trained VAE's latent (4 -> C channels) without changing what it computes at first (a benchmark design).

A 4-channel latent at a quarter of the side keeps 1/12 of a 64 px image's values: enough for
facades, too few for thin outlines and fine textures. Widening keeps every trained weight: the new
mean channels start near zero and the decoder's weights for them at zero, so the widened VAE
reconstructs exactly as before, and training then has room to use the new channels.
"""
from __future__ import annotations

import torch
from torch import nn

NEW_CHANNEL_INIT = 1e-3  # std of the encoder's new output rows: small, so the new latents start near 0
# log variance of the new channels at first: a sample's noise (std 0.018) must not drown their small
# means, or the decoder learns to ignore them (KL weight 1e-6 leaves it free to stay low)
NEW_LOGVAR = -8.0


def _conv_like(old: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, old.kernel_size, old.stride, old.padding,
                     bias=old.bias is not None).to(old.weight.device, old.weight.dtype)


@torch.no_grad()
def widen_latents(vae, channels: int, seed: int = 0):
    """`vae` (a diffusers AutoencoderKL) with `channels` latent channels; its output is unchanged."""
    old = int(vae.config.latent_channels)
    if channels == old:
        return vae
    if channels < old:
        raise ValueError(f"latent channels can only grow: {old} -> {channels}")
    g = torch.Generator().manual_seed(seed)
    # The encoder writes (mean, logvar) stacked: old row k of the mean stays k, of the logvar goes to channels + k.
    rows = list(range(old)) + [channels + k for k in range(old)]
    enc = vae.encoder.conv_out
    new_enc = _conv_like(enc, enc.in_channels, 2 * channels)
    new_enc.weight.copy_(torch.randn(new_enc.weight.shape, generator=g) * NEW_CHANNEL_INIT)
    new_enc.bias.zero_()
    new_enc.weight[rows] = enc.weight
    new_enc.bias[rows] = enc.bias
    logvar_rows = slice(channels + old, 2 * channels)
    new_enc.weight[logvar_rows] = 0
    new_enc.bias[logvar_rows] = NEW_LOGVAR
    vae.encoder.conv_out = new_enc

    if vae.quant_conv is not None:  # 1x1 mixes of (mean, logvar): old block kept, identity on the new rows
        q = vae.quant_conv
        new_q = _conv_like(q, 2 * channels, 2 * channels)
        new_q.weight.zero_()
        new_q.bias.zero_()
        for c in range(2 * channels):
            new_q.weight[c, c] = 1.0
        idx = torch.tensor(rows)
        new_q.weight[idx[:, None], idx[None, :]] = q.weight
        new_q.bias[idx] = q.bias
        vae.quant_conv = new_q
    if vae.post_quant_conv is not None:
        pq = vae.post_quant_conv
        new_pq = _conv_like(pq, channels, channels)
        new_pq.weight.zero_()
        new_pq.bias.zero_()
        for c in range(channels):
            new_pq.weight[c, c] = 1.0
        new_pq.weight[:old, :old] = pq.weight
        new_pq.bias[:old] = pq.bias
        vae.post_quant_conv = new_pq
    dec = vae.decoder.conv_in
    new_dec = _conv_like(dec, channels, dec.out_channels)
    new_dec.weight.zero_()  # the new channels reach the decoder with weight 0: the output is unchanged
    new_dec.weight[:, :old] = dec.weight
    new_dec.bias.copy_(dec.bias)
    vae.decoder.conv_in = new_dec
    vae.register_to_config(latent_channels=channels)
    return vae
