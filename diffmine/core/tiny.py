"""A tiny Stable-Diffusion-architecture model, built offline with random weights.

Same diffusers/transformers classes as SD v1.5 (CLIPTokenizer with the real CLIP vocabulary,
CLIPTextModel, AutoencoderKL, UNet2DConditionModel, DDPM schedule), small enough to train on a
laptop CPU. Attention only at the two coarsest UNet levels: full-resolution attention costs
~4x on CPU for no gain at this size.
"""
from __future__ import annotations

import tempfile

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffmine.core.bundle import SDBundle
from diffmine.core.clip_vocab import write_clip_vocab


def tiny_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = write_clip_vocab(tmp)
        # transformers 5 takes the two paths positionally; keywords are silently ignored.
        return CLIPTokenizer(str(vocab), str(merges), pad_token="<|endoftext|>", model_max_length=77)


def build_tiny_bundle(resolution: int = 64, vae_factor: int = 4, width: int = 64,
                      unet_channels: tuple[int, ...] = (32, 64, 128), seed: int = 0,
                      latent_channels: int = 4) -> SDBundle:
    """Random-weight SD-architecture bundle for `resolution` px images (VAE downsamples by `vae_factor`;
    `latent_channels`: SD v1.5's 4, or wider, as SD3's and FLUX's 16; the UNet's in/out channels follow)."""
    if resolution % vae_factor or (vae_factor & (vae_factor - 1)):
        raise ValueError(f"resolution {resolution} must be a multiple of the power-of-two VAE factor {vae_factor}")
    n_vae_levels = vae_factor.bit_length()  # factor 4 -> 3 levels (2 downsamplings)
    torch.manual_seed(seed)  # the only place global RNG is used: module initialisers draw from it
    text_encoder = clip_text_encoder(width, layers=2, heads=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * n_vae_levels,
        up_block_types=("UpDecoderBlock2D",) * n_vae_levels,
        block_out_channels=(32,) + (64,) * (n_vae_levels - 1),
        layers_per_block=1, norm_num_groups=32, sample_size=resolution,
    )
    n = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=resolution // vae_factor, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=unet_channels, layers_per_block=1, cross_attention_dim=width,
        attention_head_dim=8, norm_num_groups=32,
    )
    return SDBundle(tiny_tokenizer(), text_encoder.eval(), vae, unet, sd15_scheduler())


def clip_text_encoder(width: int, layers: int, heads: int) -> CLIPTextModel:
    """A random-weight CLIP text encoder over the real CLIP vocabulary (its special-token ids)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=width,
    ))


def sd15_scheduler() -> DDPMScheduler:
    """SD v1.5's training schedule (docs/method.md §1): scaled-linear betas, 1000 steps, epsilon target."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         steps_offset=1)
