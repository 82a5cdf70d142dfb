"""Detector input: an array of images (N, H, W[, C]) or a list of image paths -> model-ready arrays.

Arrays of integers are read as 0..255, arrays of floats as 0..1 (anything else is refused, so a
0..16 or 0..65535 array does not pass silently). Grey images are repeated to RGB as the loader does.
The geometry (H, W, C) of the input is what a fitted detector remembers and checks.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from diffmine.core.errors import DataError
from diffmine.core.images import (IMAGE_SUFFIXES, dicom_size, is_dicom, load_rgb, resize_crop, to_rgb,
                                  to_tensor_array)

Geometry = tuple[int, int, int]  # (height, width, channels)


def is_path_list(X) -> bool:
    if isinstance(X, (str, Path)):
        return False
    if isinstance(X, np.ndarray):
        return X.dtype == object or X.dtype.kind in "US"
    return isinstance(X, (list, tuple)) and len(X) > 0 and all(isinstance(x, (str, Path)) for x in X)


def list_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """Every image under `folder` (recursively, sorted) and its id: the relative path without suffix."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"{root}: no images found")
    return files, [p.relative_to(root).with_suffix("").as_posix() for p in files]


def _file_geometry(path: Path) -> Geometry:
    """(H, W, C) from the file's header: a DICOM's rows, columns and samples per pixel, else Pillow's."""
    if is_dicom(path):
        from diffmine.core.images import _dicom_header

        width, height = dicom_size(path)  # checks one grey or RGB frame (DataError naming the file)
        return height, width, int(_dicom_header(path).get("SamplesPerPixel", 1) or 1)
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0], len(img.getbands())
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _array_to_uint8(X: np.ndarray) -> np.ndarray:
    if X.dtype == np.uint8:
        return X
    if X.dtype.kind in "iub":
        if X.size and (X.min() < 0 or X.max() > 255):
            raise DataError(f"integer images must be in 0..255, got values in {X.min()}..{X.max()}")
        return X.astype(np.uint8)
    if X.dtype.kind == "f":
        if not np.isfinite(X).all():
            raise DataError("images contain NaN or infinite values")
        if X.size and (X.min() < 0 or X.max() > 1):
            raise DataError(f"float images must be in [0, 1], got values in {X.min():.3g}..{X.max():.3g}")
        return np.round(X * 255).astype(np.uint8)
    raise DataError(f"images of dtype {X.dtype} are not supported (use uint8 0..255 or float 0..1)")


def array_geometry(X: np.ndarray) -> Geometry:
    if X.ndim == 3:
        return int(X.shape[1]), int(X.shape[2]), 1
    if X.ndim == 4 and X.shape[3] in (1, 3, 4):
        return int(X.shape[1]), int(X.shape[2]), int(X.shape[3])
    raise DataError(f"images must be an array (N, H, W) or (N, H, W, C) with C in 1, 3, 4, got shape {X.shape}")


class ImageInput:
    """A validated detector input: ids, geometry and a loader to model resolution."""

    def __init__(self, X, ids: Sequence[str] | None = None, skip_bad: bool = False):
        if isinstance(X, (str, Path)) and Path(X).is_dir():
            self.paths, self.ids = list_images(X)
            self.array = None
            if skip_bad:
                self._drop_unreadable()
        elif is_path_list(X):
            self.paths = [Path(p) for p in X]
            missing = [p for p in self.paths if not p.is_file()]
            if missing:
                raise DataError(f"{missing[0]}: image file does not exist")
            self.ids = [p.with_suffix("").as_posix() for p in self.paths]
            self.array = None
        else:
            if isinstance(X, (list, tuple)) and len(X) == 0:
                raise DataError("no images given (empty input)")
            self.array = _array_to_uint8(np.asarray(X))
            self.paths = None
            array_geometry(self.array)
            self.ids = [f"{i:06d}" for i in range(len(self.array))]
        if ids is not None:
            self.ids = list(ids)
        if len(self.ids) == 0:
            raise DataError("no images given (empty input)")
        if len(set(self.ids)) != len(self.ids):
            raise DataError("two images share an id")

    def _drop_unreadable(self) -> None:
        """--skip-bad: files whose header does not read are left out, all listed in one warning."""
        from diffmine.core.errors import SkippedInputs
        from diffmine.core.images import check_header

        keep, skipped = [], SkippedInputs(True, "bad image(s)")
        for k, p in enumerate(self.paths):
            try:
                check_header(p)
                keep.append(k)
            except DataError as exc:
                skipped.add(exc)
        skipped.warn(stacklevel=4)
        if not keep:
            raise DataError(f"{self.paths[0].parent}: no readable images")
        self.paths, self.ids = [self.paths[k] for k in keep], [self.ids[k] for k in keep]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def geometry(self) -> Geometry:
        """(H, W, C) shared by every image; mixed sizes are refused (a detector expects one kind of image)."""
        if self.array is not None:
            return array_geometry(self.array)
        first = _file_geometry(self.paths[0])
        for p in self.paths[1:]:
            g = _file_geometry(p)
            if g != first:
                raise DataError(f"{p}: image is {g[0]}x{g[1]} with {g[2]} channel(s), "
                                f"the others {first[0]}x{first[1]} with {first[2]}")
        return first

    def rgb(self, i: int) -> Image.Image:
        if self.array is None:
            return load_rgb(self.paths[i])
        a = self.array[i]
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        return to_rgb(Image.fromarray(a))

    def load(self, resolution: int, idx: Sequence[int] | None = None) -> np.ndarray:
        """(n, 3, R, R) float32 in [-1, 1], resized and centre-cropped as the training loader does."""
        idx = range(len(self)) if idx is None else idx
        if not hasattr(self, "_small"):
            from diffmine.core.images import SmallImages

            self._small = SmallImages()
        images = []
        for i in idx:
            image = self.rgb(i)
            self._small.check(self.paths[i] if self.paths is not None else f"image {self.ids[i]}", image, resolution)
            images.append(to_tensor_array(resize_crop(image, resolution)))
        self._small.warn(resolution)
        return np.stack(images)

    def thumbnail(self, i: int, resolution: int) -> np.ndarray:
        """(R, R, 3) uint8, the model's view of image i (for overlays)."""
        return np.asarray(resize_crop(self.rgb(i), resolution))


    def digest(self) -> str:
        """A key for the content (arrays) or the files (paths, sizes, times): repeated calls reuse scores."""
        h = hashlib.sha1()
        if self.array is not None:
            h.update(str(self.array.shape).encode())
            h.update(np.ascontiguousarray(self.array).tobytes())
        else:
            for p, i in zip(self.paths, self.ids):
                st = p.stat()
                h.update(f"{p.resolve()}|{i}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
