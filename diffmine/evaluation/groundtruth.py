"""Ground-truth elements of an image, read from its metadata row and put at processing resolution.

Convention (metadata.csv / metadata.jsonl, read by diffmine.core.dataset.LabeledImages):

* column `elements`: a list (in CSV a JSON string) of objects
      {"kind": str, "box": [x0, y0, x1, y1], "label": str | null}
  boxes in pixels of the original image, x1/y1 exclusive; "label" is the label the element
  is characteristic of, null for an element shared by all labels.
* optional column `mask_file`: a PNG (mode L or I) relative to the data root whose pixel value
  k > 0 marks elements[k-1] with its exact shape; without it the boxes serve as masks.

Maps live at the processing resolution R (short side resized to R, then centre-cropped, as
diffmine.core.images.resize_crop does), so boxes and masks go through the same geometry here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from diffmine.core.errors import DataError
from diffmine.core.images import crop_geometry, dicom_size, is_dicom

ELEMENTS_COLUMN = "elements"
MASK_COLUMN = "mask_file"
_EXIF_ORIENTATION = 0x0112


@dataclass
class Elements:
    """The ground-truth elements of one image at processing resolution."""

    kinds: list[str]
    labels: list[str | None]  # the label each element is characteristic of; None = shared
    masks: np.ndarray  # (E, R, R) bool

    def characteristic(self, labels) -> np.ndarray:
        """Indices of the elements characteristic of any of `labels`."""
        labels = {labels} if isinstance(labels, str) else set(labels)
        return np.array([i for i, lab in enumerate(self.labels) if lab is not None and lab in labels], dtype=np.int64)

    def shared(self) -> np.ndarray:
        return np.array([i for i, lab in enumerate(self.labels) if lab is None], dtype=np.int64)

    def union(self, idx) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            return np.zeros(self.masks.shape[1:], dtype=bool)
        return self.masks[idx].any(axis=0)


def has_ground_truth(records) -> bool:
    return any(r.row and r.row.get(ELEMENTS_COLUMN) not in (None, "", "[]", []) for r in records)


def parse_elements(value, where: str = "") -> list[dict]:
    """The `elements` cell (a list, or its JSON text) -> validated list of element dicts."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: column '{ELEMENTS_COLUMN}' is not valid JSON ({exc.msg})") from None
    if not isinstance(value, list):
        raise DataError(f"{where}: column '{ELEMENTS_COLUMN}' must be a list of objects")
    out = []
    for i, el in enumerate(value):
        if not isinstance(el, dict) or "kind" not in el or "box" not in el:
            raise DataError(f"{where}: element {i} must be an object with 'kind' and 'box'")
        box = el["box"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(f"{where}: element {i} box must be [x0, y0, x1, y1], got {box!r}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(f"{where}: element {i} box {box} is empty (x1 <= x0 or y1 <= y0)")
        label = el.get("label")
        out.append({"kind": str(el["kind"]), "box": [float(v) for v in box],
                    "label": None if label is None else str(label)})
    return out


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    if is_dicom(path):
        return dicom_size(path)
    with Image.open(path) as img:
        w, h = img.size
        try:
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
        except Exception:  # malformed EXIF: keep the stored size
            pass
    return w, h


def transform_boxes(boxes, width: int, height: int, resolution: int) -> np.ndarray:
    """Original-image pixel boxes (n, 4) -> float boxes at processing resolution (may leave the crop)."""
    nw, nh, left, top = crop_geometry(width, height, resolution)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = nw / width, nh / height
    return np.stack([b[:, 0] * sx - left, b[:, 1] * sy - top, b[:, 2] * sx - left, b[:, 3] * sy - top], axis=1)


def rasterize_boxes(boxes, resolution: int) -> np.ndarray:
    """Float boxes at resolution R -> (n, R, R) bool masks of the pixels whose centres they contain.

    A box too thin to contain a pixel centre still marks the pixel holding its centre.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    c = np.arange(resolution) + 0.5
    cols = (c[None, :] >= b[:, 0:1]) & (c[None, :] < b[:, 2:3])
    rows = (c[None, :] >= b[:, 1:2]) & (c[None, :] < b[:, 3:4])
    for axis_mask, lo, hi in ((cols, b[:, 0], b[:, 2]), (rows, b[:, 1], b[:, 3])):
        centre = np.floor((lo + hi) / 2).astype(np.int64)
        thin = ~axis_mask.any(axis=1) & (centre >= 0) & (centre < resolution)
        axis_mask[np.flatnonzero(thin), centre[thin]] = True
    return rows[:, :, None] & cols[:, None, :]


def load_element_mask(path: str | Path, n_elements: int, width: int, height: int, resolution: int,
                      where: str = "") -> np.ndarray:
    """Label-image PNG (value k marks element k-1) -> (n_elements, R, R) bool at processing resolution."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "I", "I;16", "I;16L", "I;16B", "P"):
                raise DataError(f"{where}: mask {path} must be a PNG of mode L or I, got mode {img.mode}")
            if img.size != (width, height):
                raise DataError(f"{where}: mask {path} is {img.size[0]}x{img.size[1]}, "
                                f"the image is {width}x{height}")
            img = img.convert("I") if img.mode != "L" else img
            nw, nh, left, top = crop_geometry(width, height, resolution)
            arr = np.asarray(img.resize((nw, nh), Image.NEAREST).crop((left, top, left + resolution, top + resolution)))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{where}: cannot read mask {path} ({type(exc).__name__}: {exc})") from None
    arr = arr.astype(np.int64)
    if arr.max(initial=0) > n_elements:
        raise DataError(f"{where}: mask {path} has value {arr.max()} but only {n_elements} elements")
    return arr[None] == np.arange(1, n_elements + 1)[:, None, None]


def record_elements(record, resolution: int, root: str | Path) -> Elements | None:
    """The ground truth of one LabeledImages record, or None when its row carries none."""
    row = record.row or {}
    where = f"{record.image_id}"
    elements = parse_elements(row.get(ELEMENTS_COLUMN), where)
    if not elements:
        return None
    w, h = image_size(record.path)
    mask_file = row.get(MASK_COLUMN)
    if mask_file not in (None, ""):
        masks = load_element_mask(Path(root) / str(mask_file), len(elements), w, h, resolution, where)
    else:
        masks = rasterize_boxes(transform_boxes([e["box"] for e in elements], w, h, resolution), resolution)
    return Elements([e["kind"] for e in elements], [e["label"] for e in elements], masks)
