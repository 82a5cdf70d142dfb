"""Labeled image collections in the two layouts people already use.

* folder per label:   DATA/<label>/<any/sub/path>.png
* metadata table:     DATA/metadata.csv or DATA/metadata.jsonl with a `file_name` column and a
                      label column (Hugging Face imagefolder convention); multi-label values are
                      separated by '|' as in NIH ChestX-ray14's "Finding Labels".

Image ids are the file's path relative to DATA without its suffix: stable across runs, machines
and orderings.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from diffmine.core.errors import DataError, SkippedInputs
from diffmine.core.settings import LABEL_COLUMN
from diffmine.core.images import IMAGE_SUFFIXES, SmallImages, check_header, load_rgb, resize_crop, to_tensor_array

MULTI_LABEL_SEP = "|"
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")


@dataclass(frozen=True)
class Record:
    image_id: str
    path: Path
    labels: tuple[str, ...]
    row: dict | None = None  # the metadata row, for extra columns (ground truth, boxes...)


def readable_images(paths, skip_bad: bool, stacklevel: int = 2) -> list[Path]:
    """The paths whose image header reads (`images.check_header`): a bad one raises DataError naming
    the file or, with skip_bad, is left out, every one listed in a single warning."""
    good, skipped = [], SkippedInputs(skip_bad, "bad image(s)")
    for path in paths:
        try:
            check_header(path)
            good.append(Path(path))
        except DataError as exc:
            skipped.add(exc)
    skipped.warn(stacklevel=stacklevel)  # as warnings.warn's: 2 is the caller
    return good


def image_array(path: str | Path, resolution: int, small: SmallImages | None = None) -> np.ndarray:
    """One image file as the models read it: decoded (`images.load_rgb`: one line naming a bad file),
    resized and centre-cropped to 3xRxR float32 in [-1, 1]."""
    image = load_rgb(path)
    if small is not None:
        small.check(path, image, resolution)
    return to_tensor_array(resize_crop(image, resolution))


def _read_metadata(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
    return rows


class LabeledImages:
    """A validated, ordered list of (image id, path, labels) for one data folder.

    Bad input raises DataError with one line naming the file or row; with `skip_bad=True`
    unreadable images are dropped instead, with one warning listing them all.
    """

    def __init__(self, root: str | Path, label_column: str = LABEL_COLUMN, skip_bad: bool = False,
                 check_images: bool = True):
        self.root = Path(root)
        self.label_column = label_column
        self.skip_bad = skip_bad
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data folder does not exist")
        metadata = [self.root / n for n in METADATA_NAMES if (self.root / n).exists()]
        records = self._scan_metadata(metadata[0]) if metadata else self._scan_folders()
        if check_images:
            good = set(readable_images([r.path for r in records], skip_bad, stacklevel=3))
            records = [r for r in records if r.path in good]
        if not records:
            raise DataError(self._nothing_found(bool(metadata)))
        self.records: list[Record] = sorted(records, key=lambda r: r.image_id)
        self.labels: list[str] = sorted({lab for r in self.records for lab in r.labels})
        self._by_id = {r.image_id: i for i, r in enumerate(self.records)}
        self._small = SmallImages()
        if len(self._by_id) != len(self.records):
            raise DataError(f"{self.root}: two files share an image id (same path but different suffix)")

    # -- scanning -------------------------------------------------------------------------
    def _nothing_found(self, has_metadata: bool) -> str:
        """What the folder holds, and the layouts it could have had."""
        expected = (f"expected a folder per label ({self.root.name}/<label>/*.png) or metadata.csv with a "
                    f"'{self.label_column}' column")
        loose = [] if has_metadata else [p for p in self.root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            return f"{self.root}: {len(loose)} image file(s) but no label folders; {expected}"
        return f"{self.root}: no images found"

    def _image_id(self, path: Path) -> str:
        return path.relative_to(self.root).with_suffix("").as_posix()

    def _scan_folders(self) -> list[Record]:
        records = []
        for label_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(p for p in label_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{label_dir}: label '{label_dir.name}' has no images")
            records += [Record(self._image_id(p), p, (label_dir.name,)) for p in files]
        return records

    def _scan_metadata(self, path: Path) -> list[Record]:
        rows = _read_metadata(path)
        if not rows:
            raise DataError(f"{path}: metadata has no rows")
        columns = list(rows[0].keys())
        for col in ("file_name", self.label_column):
            if col not in columns:
                raise DataError(f"{path}: no column '{col}' (columns are: {', '.join(columns)})")
        records, skipped = [], SkippedInputs(self.skip_bad, "bad metadata row(s)")
        for n, row in enumerate(rows, start=2 if path.suffix == ".csv" else 1):
            where = f"{path} {'row' if path.suffix == '.csv' else 'line'} {n}"
            file = self.root / str(row["file_name"])
            value = row[self.label_column]
            labels = tuple(v.strip() for v in str(value if value is not None else "").split(MULTI_LABEL_SEP)
                           if v.strip())
            try:
                if not file.is_file():
                    raise DataError(f"{where}: file '{row['file_name']}' does not exist")
                if not labels:
                    raise DataError(f"{where}: empty label in column '{self.label_column}'")
            except DataError as exc:
                skipped.add(exc)
                continue
            records.append(Record(self._image_id(file), file, labels, dict(row)))
        skipped.warn(stacklevel=4)
        return records

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def index(self, image_id: str) -> int:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise KeyError(f"{self.root}: no image with id '{image_id}'") from None

    def load_arrays(self, resolution: int, records: list[Record] | None = None,
                    progress: bool = False) -> tuple[list[Record], np.ndarray]:
        """Decode, resize and centre-crop images to Nx3xRxR float32 in [-1, 1].

        Returns the records actually loaded: with skip_bad, undecodable images are dropped
        (one warning); without, the first one raises DataError naming the file.
        """
        from tqdm.auto import tqdm

        records = list(self.records if records is None else records)
        arrays, good, skipped = [], [], SkippedInputs(self.skip_bad, "bad image(s)")
        for r in tqdm(records, desc="decoding images", disable=not progress):
            try:
                arrays.append(image_array(r.path, resolution, self._small))
                good.append(r)
            except DataError as exc:
                skipped.add(exc)
        skipped.warn()
        self._small.warn(resolution)
        if not good:
            raise DataError(f"{self.root}: no readable images")
        return good, np.stack(arrays)
