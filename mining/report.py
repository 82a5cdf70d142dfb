"""The HTML page of a mining run. Everything lives inside the output folder and is referenced
by relative paths, so the folder can be moved or zipped as a whole:

    MINE_DIR/report.html
    MINE_DIR/patches/<label>/...png     patch crops (cluster members, baselines)
    MINE_DIR/images/<image>__<label>.png the image beside its typicality heatmap overlay
    MINE_DIR/grids/<label>.png          top clusters as rows

The pictures themselves are drawn by `diffmine.report.pictures`, the page by `diffmine.report.page`.
"""
from __future__ import annotations

from diffmine.report.page import (columns, empty, figure, figures, heading, join, kv_table, page, section,
                                  thumbs)

NOTE = ("Clusters are ranked by the median typicality of their members; members are ordered nearest-to-centroid "
        "first. Click a patch for its image and typicality heatmap (blurred and max-normalised for display only); "
        "outlines: green = shown cluster members, yellow = random baseline, blue = least-typical baseline.")


def _patch(p: dict):
    title = f"{p['image_id']}  typicality {p['typicality']:.4g}"
    return figure(p["patch_file"], f"{p['typicality']:.3g}", alt=title, title=title, href=p.get("heatmap_file") or None)


def _cluster(cl: dict):
    head = (f"#{cl['rank'] + 1}: median typicality {cl['median_typicality']:.4g} · {cl['n_members']} patches "
            f"from {cl['n_images']} images")
    if cl.get("purity") is not None:
        head += f" · majority element: {cl['majority_kind']} (purity {cl['purity']:.2f})"
    return join([heading(head), thumbs(_patch(p) for p in cl["members"])])


def _label(lab: dict):
    main = join(_cluster(cl) for cl in lab["clusters"]) if lab["clusters"] else \
        empty("No cluster passed the filters (too few members or images).")
    side = [join([heading(f"Baseline: {name}"), thumbs(_patch(p) for p in patches)])
            for name, patches in lab["baselines"].items()]
    if lab.get("grid"):
        side.append(join([heading("Grid"), figures([figure(lab["grid"], "", alt="grid", href=lab["grid"])])]))
    return section(lab["name"], columns(main, join(side)), anchor=lab["anchor"], summary=lab["summary"])


def render_html(doc: dict) -> str:
    """The report page from a plain dict (see mine.py: `_report_doc`)."""
    sections = [section("Evaluation", kv_table(doc["metrics"]))] if doc.get("metrics") else []
    sections += [_label(lab) for lab in doc["labels"]]
    return page(doc["title"], sections, summary=doc["summary"], note=NOTE, command="mine")

