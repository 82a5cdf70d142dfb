"""Ground-truth finding boxes: NIH ChestX-ray14's `BBox_List_2017.csv` or a plain CSV, matched to a data folder.

Two layouts are read:
* NIH, as distributed: header `Image Index,Finding Label,Bbox [x,y,w,h],,,` (unquoted, so a CSV
  reader sees the box title split over several cells), rows `name,finding,x,y,w,h` with possibly
  trailing empty cells;
* plain: header `file_name,label,x,y,w,h`.
Boxes are (x, y, w, h) in pixels of the original image. They are moved to the processing
resolution with the same resize + centre-crop geometry as the images (diffmine.evaluation.groundtruth,
built on diffmine.core.images.crop_geometry).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from diffmine.evaluation.groundtruth import image_size, transform_boxes
from diffmine.core.errors import DataError, SkippedInputs

# The one known spelling mismatch of the NIH files (docs/method.md §6): boxes say Infiltrate, labels Infiltration.
ALIASES = {"Infiltrate": "Infiltration"}
PLAIN_COLUMNS = ["file_name", "label", "x", "y", "w", "h"]


@dataclass(frozen=True)
class Box:
    row: int            # line number in the boxes file (header = 1)
    file_name: str      # as written in the file
    finding: str        # the model's label (after the alias table)
    xywh: tuple[float, float, float, float]  # original-image pixels


@dataclass(frozen=True)
class PlacedBox:
    """A box matched to its image, at processing resolution (x0, y0, x1, y1), x1/y1 exclusive."""
    box: Box
    image_id: str
    path: Path
    xyxy: tuple[float, float, float, float]

    @property
    def finding(self) -> str:
        return self.box.finding


def _layout(header: list[str], path: Path) -> str:
    cells = [c.strip() for c in header]
    if len(cells) >= 3 and cells[0] == "Image Index" and cells[1] == "Finding Label" and cells[2].startswith("Bbox"):
        return "nih"
    if cells[:6] == PLAIN_COLUMNS and not any(cells[6:]):
        return "plain"
    raise DataError(f"{path}: wrong columns ({','.join(header)}); expected the NIH header "
                    f"'Image Index,Finding Label,Bbox [x,y,w,h],,,' or '{','.join(PLAIN_COLUMNS)}'")


def _check(where: str, name: str, finding: str, numbers: Sequence[str]) -> tuple[float, float, float, float]:
    if not name or not finding:
        raise DataError(f"{where}: empty image name or finding")
    if len(numbers) != 4:
        raise DataError(f"{where}: expected 4 box numbers x,y,w,h, got {len(numbers)}")
    try:
        x, y, w, h = (float(v) for v in numbers)
    except ValueError:
        raise DataError(f"{where}: box numbers must be numeric, got {','.join(numbers)}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DataError(f"{where}: box numbers must be finite, got {','.join(numbers)}")
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box has zero or negative size (w={w:g}, h={h:g})")
    return x, y, w, h


def read_boxes(path: str | Path, labels: Sequence[str], skip_bad: bool = False) -> list[Box]:
    """The boxes of `path`, findings mapped through ALIASES and checked against the model's `labels`.

    A bad row raises DataError naming file and row; with skip_bad it is left out, and one warning
    lists every such row. A finding that is not a model label always stops the run.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: boxes file does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{path}: boxes file is empty")
    _layout(rows[0], path)  # checks the header; both layouts carry the same fields in the same order
    known = set(labels)
    boxes, skipped = [], SkippedInputs(skip_bad, "bad box row(s)")
    for n, cells in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in cells]
        while cells and not cells[-1]:  # NIH rows may end in empty cells
            cells.pop()
        if not cells:
            continue
        where = f"{path} row {n}"
        name, written = (cells + ["", ""])[:2]
        finding = written if written in known else ALIASES.get(written, written)
        if finding and finding not in known:
            alias = f" (read as '{finding}')" if finding != written else ""
            raise DataError(f"{where}: finding '{written}'{alias} is not a label of the model "
                            f"(labels: {', '.join(sorted(known))})")
        try:
            boxes.append(Box(n, name, finding, _check(where, name, finding, cells[2:])))
        except DataError as exc:
            skipped.add(exc)
    skipped.warn()
    if not boxes:
        raise DataError(f"{path}: no boxes")
    return boxes


def place_boxes(boxes: Sequence[Box], dataset, resolution: int, boxes_path: str | Path = "boxes",
                skip_bad: bool = False) -> tuple[list[PlacedBox], list[PlacedBox]]:
    """Match boxes to the records of a LabeledImages and move them to processing resolution.

    Returns (inside, outside): boxes that fall entirely outside the centre crop cannot be scored
    and come back separately, so the caller reports them. Names are matched as relative paths
    under the data folder, else by file name when that is unique (NIH lists bare names).
    """
    by_rel = {r.path.relative_to(dataset.root).as_posix(): r for r in dataset}
    by_name: dict[str, list] = {}
    for r in dataset:
        by_name.setdefault(r.path.name, []).append(r)
    sizes: dict[Path, tuple[int, int]] = {}
    inside, outside, skipped = [], [], SkippedInputs(skip_bad, "box row(s) without a usable image")
    for b in boxes:
        where = f"{boxes_path} row {b.row}"
        rec = by_rel.get(b.file_name) or (by_name[b.file_name][0] if len(by_name.get(b.file_name, [])) == 1 else None)
        try:
            if rec is None:
                if len(by_name.get(b.file_name, [])) > 1:
                    raise DataError(f"{where}: image name '{b.file_name}' is ambiguous in {dataset.root}")
                on_disk = Path(dataset.root, b.file_name)
                if on_disk.is_file():
                    raise DataError(f"{where}: image '{b.file_name}' is in {dataset.root} but not in its data set "
                                    "(not listed in its metadata, or skipped as unreadable)")
                raise DataError(f"{where}: image '{b.file_name}' does not exist in {dataset.root}")
            if rec.path not in sizes:
                try:
                    sizes[rec.path] = image_size(rec.path)
                except DataError:
                    raise
                except Exception as exc:
                    raise DataError(f"{where}: cannot read image '{b.file_name}' ({type(exc).__name__}: {exc})") \
                        from None
        except DataError as exc:
            skipped.add(exc)
            continue
        w, h = sizes[rec.path]
        x, y, bw, bh = b.xywh
        xyxy = tuple(float(v) for v in transform_boxes([[x, y, x + bw, y + bh]], w, h, resolution)[0])
        placed = PlacedBox(b, rec.image_id, rec.path, xyxy)
        clipped = np.clip(np.array(xyxy), 0, resolution)
        (inside if clipped[2] > clipped[0] and clipped[3] > clipped[1] else outside).append(placed)
    skipped.warn()
    return inside, outside
