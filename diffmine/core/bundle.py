"""The Stable Diffusion components diffmine works with, loaded and saved the diffusers way.

`SDBundle.from_pretrained` takes a local diffusers SD folder (`unet/ vae/ text_encoder/
tokenizer/ scheduler/`) or a hub id; `save_pretrained` writes a folder that
`StableDiffusionPipeline.from_pretrained` loads. Which model a user's name means ("tiny", a
folder, a hub id) is decided by `models.load_bundle`, not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from diffmine.core import autoencoders
from diffmine.core.errors import DataError


def scale_latents(vae, z: torch.Tensor) -> torch.Tensor:
    """The VAE's latents -> the UNet's (shifted, then scaled to unit variance by the VAE's config)."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (z - shift) * vae.config.scaling_factor


def unscale_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """The inverse of `scale_latents`: the UNet's latents -> what the VAE decodes."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


def image_size(unet_sample_size, vae_config) -> int:
    """The image size a UNet of that latent `sample_size` was built for, under a VAE of that config."""
    size = unet_sample_size[0] if isinstance(unet_sample_size, (list, tuple)) else unet_sample_size
    return int(size) * autoencoders.downsampling(vae_config)


@dataclass
class SDBundle:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL  # or an AutoencoderDC (diffmine.core.autoencoders)
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler

    # -- loading / saving ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, text_encoder: str | None = None,
                        torch_dtype: torch.dtype | None = None, **kwargs) -> "SDBundle":
        """Load every component; `text_encoder` swaps in another CLIP text tower (hub id or folder)."""
        src = str(name_or_path)
        local = Path(src).exists()
        if local:
            missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not Path(src, s).is_dir()]
            if missing:
                raise DataError(f"{src}: not a diffusers Stable Diffusion folder (missing {', '.join(missing)}/)")
        kw = dict(torch_dtype=torch_dtype, **kwargs) if torch_dtype is not None else dict(kwargs)
        if text_encoder:
            tok = CLIPTokenizer.from_pretrained(text_encoder)
            enc = CLIPTextModel.from_pretrained(text_encoder, **kw)
        else:
            tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
            enc = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **kw)
        bundle = cls(
            tokenizer=tok,
            text_encoder=enc,
            vae=autoencoders.load_autoencoder(src, "vae", **kw),
            unet=UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw),
            # SD v1.5 ships a PNDM config; its betas are the DDPM training schedule (docs/method.md §1).
            scheduler=DDPMScheduler.from_pretrained(src, subfolder="scheduler"),
        )
        bundle.check()
        return bundle

    def check(self) -> None:
        width = self.text_encoder.config.hidden_size
        if self.unet.config.cross_attention_dim != width:
            raise DataError(f"text encoder width {width} does not match the UNet's cross_attention_dim "
                            f"{self.unet.config.cross_attention_dim}")

    def pipeline(self) -> StableDiffusionPipeline:
        """The components as a diffusers pipeline (for saving and sampling; with an AutoencoderDC,
        sample with output_type="latent" and `decode_latents`: the pipeline decodes KL VAEs only)."""
        kl = not autoencoders.is_deterministic(self.vae)
        pipe = StableDiffusionPipeline(
            vae=self.vae if kl else None, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        if not kl:  # the pipeline reads KL-only config keys when built with the VAE
            from diffusers.image_processor import VaeImageProcessor

            pipe.register_modules(vae=self.vae)
            pipe.vae_scale_factor = self.vae_scale_factor
            pipe.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        return pipe

    def save_pretrained(self, folder: str | Path) -> None:
        self.pipeline().save_pretrained(str(folder), safe_serialization=True)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "SDBundle":
        for m in (self.text_encoder, self.vae, self.unet):
            m.to(device=device, dtype=dtype)
        return self

    def eval(self) -> "SDBundle":
        for m in (self.text_encoder, self.vae, self.unet):
            m.eval().requires_grad_(False)
        return self

    # -- geometry -----------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel, from the VAE config (8 for SD, not assumed)."""
        return autoencoders.downsampling(self.vae.config)

    @property
    def resolution(self) -> int:
        """The image size the UNet was built for."""
        return image_size(self.unet.config.sample_size, self.vae.config)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # -- encoding -----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (n, tokens, width) hidden states, the UNet's cross-attention input."""
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None,
                      sample: bool = False) -> torch.Tensor:
        """Images in [-1, 1] (n, 3, H, W) -> scaled latents; posterior mean unless `sample`."""
        images = images.to(self.vae.device, self.vae.dtype)
        if sample and not autoencoders.is_deterministic(self.vae):  # a deterministic one has no posterior
            return scale_latents(self.vae, self.vae.encode(images).latent_dist.sample(generator))
        return scale_latents(self.vae, autoencoders.encode(self.vae, images)[0])

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (the inverse of `encode_images`)."""
        return autoencoders.decode(self.vae, unscale_latents(self.vae, latents)).clamp(-1, 1)
