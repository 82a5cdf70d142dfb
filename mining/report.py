"""The HTML page of a mining run. Everything lives inside the output folder and is referenced
by relative paths, so the folder can be moved or zipped as a whole:

    MINE_DIR/report.html
    MINE_DIR/patches/<label>/...png     patch crops (cluster members, baselines)
    MINE_DIR/images/<image>__<label>.png the image beside its typicality heatmap overlay
    MINE_DIR/grids/<label>.png          top clusters as rows

The pictures themselves are drawn by `diffmine.report.pictures`.
"""
from __future__ import annotations

import html
from pathlib import Path

from diffmine.core.files import write_text


# -- HTML ---------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:2px solid #ccc}
.meta{color:#666;font-size:.9em} table.kv td{padding:.1em .8em .1em 0}
.row{display:flex;flex-wrap:wrap;align-items:flex-start;gap:4px;margin:.3em 0 1em 0}
.cl{margin:.6em 0} .cl h3{font-size:1em;margin:.2em 0}
.p{display:inline-block;text-align:center;font-size:.7em;color:#555}
.p img{width:72px;height:72px;image-rendering:pixelated;border:1px solid #bbb;display:block}
.cols{display:flex;gap:2em;flex-wrap:wrap} .main{flex:3 1 600px} .side{flex:1 1 250px}
.side h3{font-size:1em} .grid img{max-width:100%}
"""


def _patch_html(p: dict) -> str:
    title = html.escape(f"{p['image_id']}  typicality {p['typicality']:.4g}", quote=True)
    img = f'<img src="{html.escape(p["patch_file"], quote=True)}" alt="{title}" title="{title}">'
    if p.get("heatmap_file"):
        img = f'<a href="{html.escape(p["heatmap_file"], quote=True)}">{img}</a>'
    return f'<span class="p">{img}{p["typicality"]:.3g}</span>'


def _kv(d: dict) -> str:
    return "<table class='kv'>" + "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in d.items()) + "</table>"


def render_html(doc: dict) -> str:
    """The report page from a plain dict (see mine.py: `_report_doc`)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(doc['title'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(doc['title'])}</h1><div class='meta'>{_kv(doc['summary'])}</div>"]
    if doc.get("metrics"):
        parts.append(f"<h2>Evaluation</h2>{_kv(doc['metrics'])}")
    parts.append("<p class='meta'>Clusters are ranked by the median typicality of their members; members are "
                 "ordered nearest-to-centroid first. Click a patch for its image and typicality heatmap "
                 "(blurred and max-normalised for display only); outlines: green = shown cluster members, "
                 "yellow = random baseline, blue = least-typical baseline.</p>")
    for lab in doc["labels"]:
        parts.append(f"<h2 id='{html.escape(lab['anchor'], quote=True)}'>{html.escape(lab['name'])}</h2>"
                     f"<div class='meta'>{_kv(lab['summary'])}</div><div class='cols'><div class='main'>")
        if not lab["clusters"]:
            parts.append("<p>No cluster passed the filters (too few members or images).</p>")
        for cl in lab["clusters"]:
            parts.append(f"<div class='cl'><h3>#{cl['rank'] + 1}: median typicality {cl['median_typicality']:.4g}"
                         f" &middot; {cl['n_members']} patches from {cl['n_images']} images"
                         + (f" &middot; majority element: {html.escape(str(cl['majority_kind']))} "
                            f"(purity {cl['purity']:.2f})" if cl.get("purity") is not None else "")
                         + "</h3><div class='row'>" + "".join(_patch_html(p) for p in cl["members"])
                         + "</div></div>")
        parts.append("</div><div class='side'>")
        for name, patches in lab["baselines"].items():
            parts.append(f"<h3>Baseline: {html.escape(name)}</h3><div class='row'>"
                         + "".join(_patch_html(p) for p in patches) + "</div>")
        if lab.get("grid"):
            parts.append(f"<h3>Grid</h3><div class='grid'><a href='{html.escape(lab['grid'], quote=True)}'>"
                         f"<img src='{html.escape(lab['grid'], quote=True)}' alt='grid'></a></div>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, doc: dict) -> Path:
    write_text(path, render_html(doc))
    return path
