"""A PNG grid of generated samples, one row per label: the quickest check that a finetune worked."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageDraw

from diffmine.core.bundle import SDBundle
from diffmine.core.images import from_tensor_array
from diffmine.core.prompts import PromptTemplate


def sample_grid(bundle: SDBundle, prompts: PromptTemplate, labels: list[str], path: str | Path,
                per_label: int = 4, steps: int = 25, guidance: float = 3.0, seed: int = 0) -> Path:
    pipe = bundle.pipeline()
    pipe.scheduler = DDIMScheduler.from_config(bundle.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    res = bundle.resolution
    rows = []
    for i, label in enumerate(labels):
        g = torch.Generator().manual_seed(seed + i)
        # latents out, decoded here: the pipeline's own decoding knows KL autoencoders only
        out = pipe([prompts.prompt(label)] * per_label, negative_prompt=[prompts.null_prompt] * per_label,
                   num_inference_steps=steps, guidance_scale=guidance, height=res, width=res, generator=g,
                   output_type="latent")
        pixels = from_tensor_array(bundle.decode_latents(out.images).float().cpu().numpy())
        rows.append([Image.fromarray(p) for p in pixels])
    margin = 90
    grid = Image.new("RGB", (margin + per_label * res, len(labels) * res), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, images) in enumerate(zip(labels, rows)):
        draw.text((4, r * res + res // 2 - 6), label[:14], fill="black")
        for c, img in enumerate(images):
            grid.paste(img, (margin + c * res, r * res))
    path = Path(path)
    grid.save(path)
    return path
