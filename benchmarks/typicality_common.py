"""Shared set-up of the typicality benchmarks: model and images, the published-code baseline,
precise maps, and the accuracy measure.

Model: --model, else --random-sd15 RES (SD v1.5's architecture at full size with random weights,
for timing on a GPU: nothing to download), else the shipped tiny model assets/tiny-towns-model
with assets/towns/test (regenerated in a temporary folder when absent), else a tiny random-weight
SD bundle (32 px, 8x8 latents) and generated colour images.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from finetune.prompts import PromptTemplate
from typicality.draws import Draws, timestep_bounds
from typicality.engine import TypicalityEstimator

ROOT = Path(__file__).resolve().parents[1]
PRECISE_DRAWS = 1000      # the "precise map": N = 1000 stratified draws
PRECISE_SEED = 1_000_003  # independent of the draws being evaluated (seed 0)
REFERENCE_DRAWS, REFERENCE_MINIBATCH = 100, 10  # METHOD.md §2; the published loop's mini-batch


def parse_args(description: str, extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="diffusers SD folder (default: shipped tiny model, else random tiny)")
    p.add_argument("--data", default=None, help="image folder for --model (default: its test split, else generated)")
    p.add_argument("--random-sd15", type=int, default=None, metavar="RES",
                   help="SD v1.5 architecture with random weights at RES px (GPU timing; no download)")
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--precise-draws", type=int, default=PRECISE_DRAWS,
                   help="stratified draws of the precise maps (the issue's 1000; fewer to fit a time limit)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if extra:
        extra(p)
    return p.parse_args()


def _generated_images(n: int, size: int, seed: int = 0) -> tuple[list[str], torch.Tensor, list[str]]:
    """Colour squares on noise, as the test fixtures draw them: the label is the square's colour."""
    rng = np.random.default_rng(seed)
    colors = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    ids, arrays, labels = [], [], []
    for i in range(n):
        label = list(colors)[i % 3]
        img = rng.integers(90, 160, (size, size, 3)).astype(np.float32)
        x, y = rng.integers(0, size // 2, 2)
        img[y:y + size // 2, x:x + size // 2] = colors[label]
        ids.append(f"{label}/img_{i:03d}")
        arrays.append(img.transpose(2, 0, 1) / 127.5 - 1)
        labels.append(label)
    return ids, torch.from_numpy(np.stack(arrays)), labels


def random_sd15_bundle(resolution: int, device):
    """SD v1.5's UNet (its config verbatim), VAE and CLIP text encoder sizes, random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from finetune.bundle import SDBundle
    from finetune.tiny import sd15_scheduler, tiny_tokenizer
    from gpu_unet import SD15_UNET_CONFIG

    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: fast for 860 M parameters
        unet = UNet2DConditionModel(**dict(SD15_UNET_CONFIG, sample_size=resolution // 8))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                            sample_size=resolution, scaling_factor=0.18215)
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407, projection_dim=768))
    return SDBundle(tiny_tokenizer(), text.eval(), vae, unet, sd15_scheduler())


def load_setup(args) -> tuple:
    """(bundle, prompts, image ids, images (n, 3, H, W), labels, description)."""
    from finetune.bundle import SDBundle

    model = args.model
    if model is None and args.random_sd15:
        bundle = random_sd15_bundle(args.random_sd15, args.device).eval()
        ids, images, labels = _generated_images(args.images, args.random_sd15)
        return (bundle, PromptTemplate(), ids, images, labels,
                f"SD v1.5 architecture, random weights, {args.random_sd15} px; {len(ids)} images; device {args.device}")
    shipped = ROOT / "assets" / "tiny-towns-model"
    if model is None and shipped.is_dir():
        model, args.data = shipped, args.data or ROOT / "assets" / "towns" / "test"
        if not Path(args.data).is_dir():  # the test split is regenerated byte-identically from its seed
            from finetune.towns import generate_towns
            args.data = generate_towns(Path(tempfile.gettempdir()) / "diffmine_towns", n_train=1, n_test=40) / "test"
    if model is None:
        from finetune.tiny import build_tiny_bundle
        bundle, prompts = build_tiny_bundle(resolution=32), PromptTemplate()
        ids, images, labels = _generated_images(args.images, bundle.resolution)
        what = "tiny random-weight SD bundle (32 px), generated images"
    else:
        from finetune.dataset import LabeledImages
        bundle, prompts = SDBundle.from_pretrained(model), PromptTemplate.load(model)
        data = LabeledImages(args.data)
        records = data.records[:: max(1, len(data) // args.images)][: args.images]  # spread over labels
        records, arrays = data.load_arrays(bundle.resolution, records)
        ids, images, labels = [r.image_id for r in records], torch.from_numpy(arrays), [r.labels for r in records]
        what = f"{model} on {args.data}"
    bundle.eval().to(args.device)
    return bundle, prompts, ids, images, labels, f"{what}; {len(ids)} images; device {args.device}"


# -- the published code's behaviour, as a baseline ------------------------------------------------
def reference_draws(latent_shape, seed: int = 0, n: int = REFERENCE_DRAWS, minibatch: int = REFERENCE_MINIBATCH,
                    t_range=(0.1, 0.7), num_train_timesteps: int = 1000) -> Draws:
    """The published loop's draws: a generator re-seeded per image (so every image gets the same
    draws), then per mini-batch t uniform in the range and eps ~ N(0, I)."""
    lo, hi = timestep_bounds(t_range, num_train_timesteps)
    g = torch.Generator().manual_seed(seed)
    ts, eps = [], []
    for _ in range(n // minibatch):
        ts.append(torch.randint(lo, hi, (minibatch,), generator=g))
        eps.append(torch.randn((minibatch, *latent_shape), generator=g))
    return Draws(torch.cat(ts), torch.cat(eps))


@torch.no_grad()
def reference_maps(bundle, prompts: PromptTemplate, ids, images, labels, n: int = REFERENCE_DRAWS,
                   minibatch: int = REFERENCE_MINIBATCH, seed: int = 0) -> tuple[np.ndarray, float]:
    """What the published code does, one image at a time: encode the image (once) and the two
    prompts; for each mini-batch of draws, one UNet forward with both prompts; every per-draw
    loss map pair written to its own file; the map is the mean of the files read back.
    (The published code samples the VAE posterior unseeded; the posterior mean is used here so
    that the engine, given the same draws, must give the same maps.) Returns (maps, images/s)."""
    unet, sched, dev = bundle.unet, bundle.scheduler, bundle.device
    work = Path(tempfile.mkdtemp(prefix="typicality_reference_"))
    maps = []
    start = time.perf_counter()
    try:
        for image_id, image, label in zip(ids, images, labels):
            z0 = bundle.encode_images(image[None])
            emb = bundle.encode_prompts([prompts.null_prompt, prompts.prompt(label)])
            draws = reference_draws(tuple(z0.shape[1:]), seed, n, minibatch)
            folder = work / image_id.replace("/", "_")
            folder.mkdir()
            for b in range(0, n, minibatch):
                t = draws.timesteps[b:b + minibatch].to(dev)
                eps = draws.noise[b:b + minibatch].to(dev)
                z_t = sched.add_noise(z0.expand(len(t), -1, -1, -1), eps, t)
                cond = torch.cat([emb[:1].expand(len(t), -1, -1), emb[1:].expand(len(t), -1, -1)])
                pred = unet(torch.cat([z_t, z_t]), torch.cat([t, t]), encoder_hidden_states=cond).sample
                loss = (pred - torch.cat([eps, eps])).square().mean(1).cpu().numpy()  # (2m, h, w)
                for j in range(len(t)):
                    np.save(folder / f"draw_{b + j:04d}.npy", loss[[j, len(t) + j]])
            per_draw = np.stack([np.load(f) for f in sorted(folder.glob("draw_*.npy"))])
            maps.append((per_draw[:, 0] - per_draw[:, 1]).mean(0))
        elapsed = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return np.stack(maps), len(ids) / elapsed


# -- the engine -----------------------------------------------------------------------------------
def engine_maps(bundle, prompts, ids, images, labels, **kw) -> tuple[np.ndarray, float]:
    """(maps (n, h, w), images/s) of TypicalityEstimator(**kw) on preloaded images (VAE included)."""
    est = TypicalityEstimator(bundle, prompts, **kw)
    start = time.perf_counter()
    results = est.estimate(images, ids, [[lab if isinstance(lab, str) else tuple(lab)] for lab in labels])
    elapsed = time.perf_counter() - start
    return np.stack([r.diff[0] for r in results]), len(ids) / elapsed


def precise_maps(bundle, prompts, ids, images, labels, draws: int = PRECISE_DRAWS) -> np.ndarray:
    return engine_maps(bundle, prompts, ids, images, labels, draws=draws, schedule="stratified",
                       antithetic=False, seed=PRECISE_SEED)[0]


def mean_correlation(maps: np.ndarray, truth: np.ndarray) -> float:
    """Mean over images of the Pearson correlation of the latent maps with the precise ones."""
    a = maps.reshape(len(maps), -1) - maps.reshape(len(maps), -1).mean(1, keepdims=True)
    b = truth.reshape(len(truth), -1) - truth.reshape(len(truth), -1).mean(1, keepdims=True)
    return float(np.mean((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))))


def warm_up(bundle, prompts, ids, images, labels) -> None:
    """One small pass of each path, so neither timing pays for first-call set-up."""
    reference_maps(bundle, prompts, ids[:1], images[:1], labels[:1], n=REFERENCE_MINIBATCH)
    engine_maps(bundle, prompts, ids[:2], images[:2], labels[:2], draws=8)
