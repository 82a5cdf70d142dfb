"""Co-typicality (docs/method.md §5): how typical a patch stays of EVERY label an image is translated to.

For an image translated to labels c_1..c_m, patch co-typicality is the median over the targets
of the patch mean of T(x_{src->c} | c): a patch scores high only where most translations put
something typical of their own target there -- a place where the image changes consistently
with the label. Pure tensor math: maps in, window scores and patches out.
"""
from __future__ import annotations

import numpy as np
import torch

from mining.patches import Patches, patch_scores, select_patches


def cotypicality_scores(maps, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """maps: (m, H, W) typicality of one image's m translations, each under its target ->
    (each target's window means (m, H-k+1, W-k+1), their median over targets (H-k+1, W-k+1));
    the mean of the two middle values for even m."""
    each = patch_scores(maps, k)
    return each, torch.from_numpy(np.median(each.double().numpy(), axis=0).astype(np.float32))


def cotypical_patches(maps_per_image, k: int, per_image: int) -> Patches:
    """The `per_image` most co-typical non-overlapping patches of every image (rows image by image)."""
    scores = torch.stack([cotypicality_scores(m, k)[1] for m in maps_per_image])
    return select_patches(scores, k, per_image, "top")
