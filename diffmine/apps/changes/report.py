"""report.html of `diffmine changes`: each cluster as rows of patch sequences, one column per label.

Everything is referenced relative to the output folder, so it can be moved or zipped whole.
"""
from __future__ import annotations

import html
from pathlib import Path

from diffmine.core.files import write_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h2{margin-top:1.6em;border-bottom:2px solid #ccc;font-size:1.1em} .meta{color:#666;font-size:.9em}
td,th{padding:2px 4px;text-align:center;font-size:.75em;color:#555} th{color:#222}
td img{width:64px;height:64px;image-rendering:pixelated;border:2px solid #ddd;display:block}
td.src img{border-color:#2a2} td.info{text-align:left;white-space:nowrap}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def write_report(path: Path, columns: list[str], clusters: list[dict], summary: dict) -> Path:
    kv = "".join(f"<tr><td class='info'>{_esc(k)}</td><td class='info'>{_esc(v)}</td></tr>"
                 for k, v in summary.items())
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>diffmine: consistent changes</title>"
             f"<style>{_CSS}</style></head><body><h1>diffmine: consistent changes</h1><table>{kv}</table>"
             "<p class='meta'>Each row is one patch of one image, seen under every label at the same place: the "
             "source image in its own label's column (green border) and its translations in the others. Clusters "
             "group patches whose sequences of DIFT features are alike; they are ranked by the median "
             "co-typicality of their members (the median over targets of the patch typicality of each "
             "translation under its target), members nearest to the centroid first. Numbers under a "
             "translation: its patch typicality under its target.</p>"]
    if not clusters:
        parts.append("<p>No cluster passed the filters (too few members or images).</p>")
    head = "<tr><th></th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
    for cl in clusters:
        parts.append(f"<h2>#{cl['rank'] + 1}: median co-typicality {cl['median']:.4g} &middot; "
                     f"{cl['n_members']} patches from {cl['n_images']} images</h2><table>{head}")
        for row in cl["rows"]:
            cells = "".join(
                f"<td class='{'src' if c['source'] else ''}'><img src='{_esc(c['file'])}' "
                f"title='{_esc(row['image_id'])} as {_esc(c['label'])}' alt='{_esc(c['label'])}'>"
                + ("source" if c["source"] else f"{c['typicality']:.3g}") + "</td>" for c in row["cells"])
            parts.append(f"<tr><td class='info'>{_esc(row['image_id'])}<br>co-typ. {row['cotypicality']:.3g}"
                         f"<br>box {_esc(row['box'])}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts))
    return path
