"""Decode any Pillow image or single-frame DICOM to RGB, and resize + crop it to a square training resolution."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from diffmine.core.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"} | DICOM_SUFFIXES


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


def is_dicom(path: str | Path) -> bool:
    return Path(path).suffix.lower() in DICOM_SUFFIXES


def _dicom_header(path: str | Path):
    """The DICOM dataset without pixels, checked to hold one grayscale or RGB frame; DataError otherwise."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, struct errors...
        raise DataError(f"{path}: cannot read DICOM ({type(exc).__name__}: {exc})") from None
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        modality = ds.get("Modality", "?")
        raise DataError(f"{path}: DICOM holds no image (modality {modality}, no pixel data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); one image per file is supported")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB"):
        raise DataError(f"{path}: DICOM photometric interpretation {photometric or 'missing'} is not supported "
                        "(MONOCHROME1, MONOCHROME2, RGB)")
    return ds


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a DICOM image from its header."""
    ds = _dicom_header(path)
    return int(ds.Columns), int(ds.Rows)


def load_dicom(path: str | Path) -> Image.Image:
    """One DICOM image as 8-bit RGB, displayed as a radiologist's viewer would show it.

    Stored values -> modality values (rescale slope/intercept or modality LUT), then the file's
    VOI LUT or first window when present, scaled over that LUT/window's output range; without a
    VOI, the image's own full range. MONOCHROME1 (bright = low values) is inverted. All
    conversions are pydicom's own (`pydicom.pixels.apply_modality_lut` / `apply_voi_lut`).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _dicom_header(path)
    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except Exception as exc:
        raise DataError(f"{path}: cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if ds.PhotometricInterpretation == "RGB":
        return Image.fromarray(_stretch_to_uint8(raw) if raw.dtype != np.uint8 else raw).convert("RGB")
    arr = apply_modality_lut(raw, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        arr = apply_voi_lut(arr, ds).astype(np.float64)  # pydicom prefers the LUT over the window
        if "VOILUTSequence" in ds:  # output range: the LUT's own values
            lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
            lo, hi = float(lut.min()), float(lut.max())
        else:  # output range of the window: what the two extremes of any input map to
            lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e12, 1e12]), ds))
    else:
        lo, hi = float(arr.min()), float(arr.max())
    gray = np.zeros(arr.shape, np.uint8) if hi <= lo else \
        np.round(np.clip((arr - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray).convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Fully decode `path` (any Pillow image, or DICOM) to RGB or raise DataError naming the file."""
    if is_dicom(path):
        return load_dicom(path)
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


class SmallImages:
    """Images much smaller than the model's resolution (under a tenth of it) are upscaled into
    blur: one warning names the first few, once per collection (`warn` after each batch)."""
    SHOWN = 5

    def __init__(self):
        self.found: list[str] = []
        self.warned = False

    def check(self, name, image, resolution: int) -> None:
        if min(image.size) * 10 < resolution:
            self.found.append(f"{name} ({image.size[0]}x{image.size[1]})")

    def warn(self, resolution: int, stacklevel: int = 2) -> None:
        if self.found and not self.warned:
            import warnings

            more = f" and {len(self.found) - self.SHOWN} more" if len(self.found) > self.SHOWN else ""
            warnings.warn(f"{len(self.found)} image(s) smaller than a tenth of the model's {resolution} px are "
                          f"upscaled to it: {', '.join(self.found[:self.SHOWN])}{more}", stacklevel=stacklevel + 1)
            self.warned = True


def check_header(path: str | Path) -> None:
    """Cheap validity check (header only) used while scanning a dataset."""
    if is_dicom(path):
        _dicom_header(path)
        return
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


def from_tensor_array(arr) -> np.ndarray:
    """to_tensor_array's inverse: (..., 3, H, W) in [-1, 1] (one image or a batch) -> (..., H, W, 3) uint8,
    rounded, values outside the range clipped (a decoder can overshoot it)."""
    a = np.moveaxis(np.asarray(arr, dtype=np.float32), -3, -1)
    return np.round((a + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
