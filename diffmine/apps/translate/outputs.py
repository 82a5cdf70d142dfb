"""The pictures and pages of a translation folder: a labeled grid per image, translations.csv, index.html."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from diffmine.report.page import empty, figure, figures, page, section
from diffmine.report.pictures import safe_name
from diffmine.core.files import write_text

CSV_COLUMNS = ["image_id", "source_label", "target", "method", "file"]


def translation_file(image_id: str, target: str) -> str:
    """Where the translation of `image_id` to `target` lives, relative to the output folder."""
    return f"translations/{safe_name(image_id)}/{safe_name(target)}.png"


def grid_file(image_id: str) -> str:
    return f"grids/{safe_name(image_id)}.png"


def labeled_row(tiles: Sequence[np.ndarray], captions: Sequence[str], min_side: int = 128, pad: int = 4) -> np.ndarray:
    """Tiles side by side (upscaled to at least `min_side`), each with its caption above it."""
    size = tiles[0].shape[0]
    f = max(1, -(-min_side // size))
    cell = size * f
    head = 16
    img = Image.new("RGB", (len(tiles) * (cell + pad) + pad, cell + head + pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for j, (tile, cap) in enumerate(zip(tiles, captions)):
        x = pad + j * (cell + pad)
        img.paste(Image.fromarray(tile).resize((cell, cell), Image.NEAREST), (x, head))
        draw.text((x + 2, 2), cap[: max(4, cell // 6)], fill=(0, 0, 0))
    return np.asarray(img)


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_index(path: Path, grids: list[tuple[str, str, str]], summary: dict) -> None:
    """grids: (image id, source label, grid file relative to the page)."""
    items = [figure(g, f"{i} ({s})", alt=i, href=g, lazy=True) for i, s, g in grids]
    body = figures(items) if items else empty("No image was translated.")
    write_text(path, page("diffmine: translations", [section("Translations", body, anchor="translations")],
                          summary=summary, note="Each row: the source image, then its translation to each target label.",
                          command="translate"))
