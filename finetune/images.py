"""Decode any Pillow image to RGB, and resize + crop it to a square training resolution."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a high-bit-depth array by its real range: 12-bit X-rays in 16-bit PNGs use ~1/16 of it."""
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) / (hi - lo) * 255.0).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of an image of any mode; transparency is composited over white."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_stretch_to_uint8(np.asarray(img))).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Fully decode `path` to RGB or raise DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def check_header(path: str | Path) -> None:
    """Cheap validity check (header only) used while scanning a dataset."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def crop_geometry(width: int, height: int, resolution: int,
                  offset: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of `resize_crop` for an image of this size."""
    scale = resolution / min(width, height)
    nw, nh = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    return nw, nh, round((nw - resolution) * offset[0]), round((nh - resolution) * offset[1])


def resize_crop(img: Image.Image, resolution: int, offset: tuple[float, float] = (0.5, 0.5)) -> Image.Image:
    """Resize the short side to `resolution`, then crop a square; offset (0..1, 0..1) picks where (0.5 = centre)."""
    nw, nh, left, top = crop_geometry(*img.size, resolution, offset)
    img = img.resize((nw, nh), Image.BICUBIC)
    return img.crop((left, top, left + resolution, top + resolution))


def to_tensor_array(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 image -> 3xHxW float32 in [-1, 1], the range the VAE expects."""
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1).copy()
