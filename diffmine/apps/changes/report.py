"""report.html of `diffmine changes`: each cluster as rows of patch sequences, one column per label.

Everything is referenced relative to the output folder, so it can be moved or zipped whole. The
page is built with the report kit (diffmine.report.page).
"""
from __future__ import annotations

from pathlib import Path

from diffmine.core.files import write_text
from diffmine.report.page import Cell, Html, empty, esc, img, page, section, table

NOTE = ("Each row is one patch of one image, seen under every label at the same place: the source image in its own "
        "label's column (green border) and its translations in the others. Clusters group patches whose sequences "
        "of DIFT features are alike; they are ranked by the median co-typicality of their members (the median over "
        "targets of the patch typicality of each translation under its target), members nearest to the centroid "
        "first. Numbers under a translation: its patch typicality under its target.")


def _cell(row: dict, c: dict) -> Cell:
    pic = img(c["file"], alt=c["label"], title=f"{row['image_id']} as {c['label']}")
    return Cell(Html(pic + ("source" if c["source"] else f"{c['typicality']:.3g}")), "src" if c["source"] else None)


def _info(row: dict) -> Cell:
    return Cell(Html(f"{esc(row['image_id'])}<br>co-typ. {row['cotypicality']:.3g}<br>box {esc(row['box'])}"), "info")


def write_report(path: Path, columns: list[str], clusters: list[dict], summary: dict) -> Path:
    sections = [section(f"#{cl['rank'] + 1}: median co-typicality {cl['median']:.4g} · {cl['n_members']} patches "
                        f"from {cl['n_images']} images",
                        table([""] + list(columns), ([_info(row)] + [_cell(row, c) for c in row["cells"]]
                                                     for row in cl["rows"]), cls="seq"),
                        anchor=f"cluster-{cl['rank'] + 1}", toc=f"#{cl['rank'] + 1}") for cl in clusters]
    intro = [] if clusters else [empty("No cluster passed the filters (too few members or images).")]
    write_text(path, page("diffmine: consistent changes", sections, summary=summary, note=NOTE, command="changes",
                          intro=intro))
    return path
