"""The pictures and pages of a translation folder: a labeled grid per image, translations.csv, index.html."""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

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
    kv = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    items = "".join(
        f"<figure><img loading='lazy' src='{html.escape(g, quote=True)}' alt='{html.escape(i, quote=True)}'>"
        f"<figcaption>{html.escape(i)} ({html.escape(s)})</figcaption></figure>" for i, s, g in grids)
    write_text(path, "<!DOCTYPE html><html><head><meta charset='utf-8'><title>diffmine: translations</title>"
               "<style>body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa}"
               "figure{margin:0 0 1.2em 0}figcaption{font-size:.85em;color:#555}"
               "img{image-rendering:pixelated;max-width:100%}td{padding:.1em .8em .1em 0}</style></head><body>"
               f"<h1>diffmine: translations</h1><table>{kv}</table>"
               "<p>Each row: the source image, then its translation to each target label.</p>"
               f"{items}</body></html>")
