"""Patch descriptors: DIFT features from the diffusion model itself, or CLIP image features.

DIFT (docs/method.md §4): the output of UNet `up_blocks[block]` at timestep t for the noised
latent, conditioned on the image's label prompt, averaged over 8 seeded noise draws. It is
computed ONCE per image (all draws in one batched forward, the UNet stopped right after the
hooked block) and every patch of that image is then mean-pooled from the same feature map
(`pool_boxes`, a summed-area table: no loop over patches) and L2-normalised.

The reference recomputed the full-image features for every patch and left the noise unseeded;
here the draws come from one seeded generator and are the same for every image, so a
feature does not depend on batching or on which other images are processed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from diffmine.core.embeddings import PromptEmbeddings
from diffmine.core.errors import DataError

from mining.config import DIFT_BLOCK, DIFT_DRAWS, DIFT_T  # noqa: F401 - the defaults, written once in the config


class StopForward(Exception):
    """Raised by a forward hook once it has the output it needs: the layers after it do not run."""


def l2_normalize(x: np.ndarray | torch.Tensor, eps: float = 1e-12):
    if isinstance(x, torch.Tensor):
        return F.normalize(x, dim=-1, eps=eps)
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def feature_boxes(boxes: np.ndarray, image_size: int | tuple[int, int], fmap_size: tuple[int, int]) -> np.ndarray:
    """Pixel boxes (x0, y0, x1, y1; exclusive ends) -> the feature-map cells they cover.

    Coordinates are scaled by fmap/image size; every cell a box touches is included
    (floor of the start, ceil of the end), and at least one cell is always covered.
    """
    ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
    fh, fw = fmap_size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = fw / iw, fh / ih
    eps = 1e-9
    x0 = np.clip(np.floor(b[:, 0] * sx + eps), 0, fw - 1)
    y0 = np.clip(np.floor(b[:, 1] * sy + eps), 0, fh - 1)
    x1 = np.clip(np.ceil(b[:, 2] * sx - eps), x0 + 1, fw)
    y1 = np.clip(np.ceil(b[:, 3] * sy - eps), y0 + 1, fh)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def pool_boxes(fmaps: torch.Tensor, image: np.ndarray, boxes: np.ndarray, image_size: int | tuple[int, int],
               normalize: bool = True) -> torch.Tensor:
    """Mean-pool feature maps inside pixel boxes.

    fmaps: (n, C, h, w) feature maps; image: (M,) index into fmaps; boxes: (M, 4) pixel boxes
    at `image_size`. Returns (M, C) float32, L2-normalised unless `normalize=False`.
    """
    fmaps = torch.as_tensor(fmaps)
    n, c, h, w = fmaps.shape
    image = torch.as_tensor(np.asarray(image, dtype=np.int64))
    fb = torch.as_tensor(feature_boxes(boxes, image_size, (h, w)))
    if len(image) == 0:
        return torch.zeros((0, c), dtype=torch.float32)
    s = torch.zeros((n, c, h + 1, w + 1), dtype=torch.float64)
    s[:, :, 1:, 1:] = fmaps.to(torch.float64).cumsum(2).cumsum(3)
    x0, y0, x1, y1 = fb.unbind(1)
    total = s[image, :, y1, x1] - s[image, :, y0, x1] - s[image, :, y1, x0] + s[image, :, y0, x0]
    out = (total / ((x1 - x0) * (y1 - y0)).to(torch.float64)[:, None]).to(torch.float32)
    return l2_normalize(out) if normalize else out


class DiftExtractor:
    """Per-image DIFT feature maps from an SDBundle.

    `__call__(images, prompts)`: images (n, 3, R, R) in [-1, 1], one prompt per image ->
    (n, C, h, w) float32 feature maps, the mean over `draws` seeded noise draws.
    """

    def __init__(self, bundle, t: int = DIFT_T, block: int = DIFT_BLOCK, draws: int = DIFT_DRAWS, seed: int = 0,
                 batch_size: int = 4):
        n_blocks = len(bundle.unet.up_blocks)
        if not 0 <= block < n_blocks:
            raise DataError(f"--dift-block {block}: the UNet has up_blocks 0..{n_blocks - 1}")
        n_t = bundle.scheduler.config.num_train_timesteps
        if not 0 <= t < n_t:
            raise DataError(f"--dift-t {t}: timestep must be in [0, {n_t})")
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        self.bundle, self.t, self.block, self.draws, self.seed = bundle, int(t), int(block), int(draws), int(seed)
        self.batch_size = max(1, int(batch_size))
        self.embeddings = PromptEmbeddings(bundle)
        self._noise: torch.Tensor | None = None

    def _draws(self, latent_shape) -> torch.Tensor:
        """The same `draws` noise tensors for every image, from one seeded generator."""
        if self._noise is None or self._noise.shape[1:] != latent_shape:
            g = torch.Generator().manual_seed(self.seed)
            self._noise = torch.randn((self.draws, *latent_shape), generator=g)
        return self._noise

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> torch.Tensor:
        images = torch.as_tensor(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out = [self._batch(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
               for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def _batch(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        b = self.bundle
        unet = b.unet
        dev, dtype = unet.device, unet.dtype
        z0 = b.encode_images(images).float().cpu()  # posterior mean: deterministic
        n = len(z0)
        eps = self._draws(tuple(z0.shape[1:]))  # (D, 4, h, w)
        t = torch.full((n * self.draws,), self.t, dtype=torch.long)
        z0r = z0.repeat_interleave(self.draws, dim=0)
        epsr = eps.repeat(n, 1, 1, 1)
        zt = b.scheduler.add_noise(z0r, epsr, t)
        cond = self.embeddings(list(prompts)).repeat_interleave(self.draws, dim=0)
        captured = {}

        def hook(_module, _args, output):
            captured["x"] = output[0] if isinstance(output, (tuple, list)) else output
            raise StopForward  # nothing after the hooked block is needed

        handle = unet.up_blocks[self.block].register_forward_hook(hook)
        try:
            unet(zt.to(dev, dtype), t.to(dev), encoder_hidden_states=cond.to(dev, dtype))
        except StopForward:
            pass
        finally:
            handle.remove()
        x = captured["x"].float().cpu()
        return x.view(n, self.draws, *x.shape[1:]).mean(dim=1)


# -- CLIP alternative -------------------------------------------------------------------------
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _import_open_clip():
    try:
        import open_clip  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise DataError(
            f"--feature clip needs open_clip_torch and torchvision (missing module '{exc.name}'); "
            "install them (pip install open_clip_torch torchvision) or use --feature dift") from None
    return open_clip


def load_clip(spec: str | Path):
    """A local open_clip model: a folder with open_clip_config.json + weights, or 'ARCH:/path/to/weights'."""
    if spec is None:
        raise DataError("--feature clip needs --clip-model: a local open_clip folder or ARCH:/path/to/weights")
    spec = str(spec)
    open_clip = _import_open_clip()
    if Path(spec).is_dir():
        model = open_clip.create_model(f"local-dir:{spec}")
    else:
        arch, sep, weights = spec.partition(":")
        if not sep or not Path(weights).is_file():
            raise DataError(f"--clip-model {spec!r}: expected a local open_clip folder or ARCH:/path/to/weights")
        model = open_clip.create_model(arch, pretrained=weights)
    return model.eval().requires_grad_(False)


class ClipPatchFeatures:
    """CLIP image embeddings of patch crops (each patch resized to the model's input size).

    Not exercised by the test suite: importing open_clip needs torchvision, which this
    environment lacks; the error then says so.
    """

    def __init__(self, spec: str | Path, batch_size: int = 64):
        self.model = load_clip(spec)
        size = getattr(self.model.visual, "image_size", 224)
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        self.mean = torch.tensor(cfg.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", OPENAI_STD)).view(1, 3, 1, 1)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, image: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        """images (n, 3, R, R) in [-1, 1]; (M,) image indices and (M, 4) boxes -> (M, D) normalised."""
        images = torch.as_tensor(images)
        crops = [images[i, :, y0:y1, x0:x1] for i, (x0, y0, x1, y1) in zip(image, np.asarray(boxes))]
        out = []
        for s in range(0, len(crops), self.batch_size):
            batch = torch.stack([F.interpolate(c[None], size=self.size, mode="bicubic", align_corners=False)[0]
                                 for c in crops[s:s + self.batch_size]])
            batch = ((batch.clamp(-1, 1) + 1) / 2 - self.mean) / self.std
            out.append(self.model.encode_image(batch).float())
        return l2_normalize(torch.cat(out)) if out else torch.zeros((0, 1))
