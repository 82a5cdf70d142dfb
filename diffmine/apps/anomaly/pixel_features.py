"""Raw pixel patches as patch features: PatchCore's memory bank on the pixels themselves.

Each cell of a tile is the `size` x `size` RGB square around it, flattened (3 x size^2 values in the
VAE's [-1, 1] range), one every `size // 2` px. The tile is reflect-padded by (size - stride) / 2 so
that a tile of R px gives R / stride cells centred on a regular grid, the layout `stitch` expects of
any feature map (cell i at (i + 1/2) x stride). No model sees them: they keep every high frequency a
learned encoder trained on other images may drop (a 2 px speckle on a texture the model never saw),
and they are not L2-normalised, so a brightness or colour change is kept too (detector.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_stride(size: int) -> int:
    """Pixels between pixel patches: half a patch (neighbouring patches overlap by half)."""
    return max(1, int(size) // 2)


def pixel_patch_features(images: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 3 x size^2, R / stride, R / stride) float32: the pixel patches of tiles (n, 3, R, R)."""
    stride = pixel_stride(size)
    x = images.float()
    pad = size - stride
    if pad:
        lo = pad // 2
        x = F.pad(x, (lo, pad - lo, lo, pad - lo), mode="reflect")
    n, _, h, w = x.shape
    cols = F.unfold(x, kernel_size=size, stride=stride)  # (n, 3 x size^2, cells)
    return cols.reshape(n, cols.shape[1], (h - size) // stride + 1, (w - size) // stride + 1)
