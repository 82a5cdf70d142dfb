"""The label audit: images more typical of another label than of their own, ranked (candidate mislabels).

audit margin(x) = max_{c != own} T(x | c) - T(x | own); flagged when > 0 (the classifier disagrees
with the given label), ranked by the margin. Written as audit.csv (every image) and audit.html
(the top flagged ones, each with its typicality maps for the given and the suspected label; a page
of the report kit, diffmine.report.page).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from diffmine.core.files import write_text
from diffmine.report import page as kit
from diffmine.report.page import Cell


def audit_margins(scores: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(margin, suspected label index) per image from the (n, L) score matrix and own label indices."""
    others = scores.copy()
    others[np.arange(len(own)), own] = -np.inf
    suspected = others.argmax(axis=1)
    return others[np.arange(len(own)), suspected] - scores[np.arange(len(own)), own], suspected


def write_audit(folder: Path, inp, truth: list[str], labels: list[str], scores: np.ndarray, maps: np.ndarray,
                resolution: int, top: int) -> dict:
    from diffmine.report.pictures import display_heatmap, overlay, safe_name, save_grid
    from typicality.formula import upsample
    import torch

    own = np.array([labels.index(x) for x in truth])
    margin, suspected = audit_margins(scores, own)
    order = np.argsort(-margin, kind="stable")
    flagged = [int(i) for i in order if margin[i] > 0]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "image_id", "label", "suspected", "margin", "flagged"])
    for rank, i in enumerate(order, start=1):
        w.writerow([rank, inp.ids[i], truth[i], labels[suspected[i]], f"{margin[i]:.6g}", int(margin[i] > 0)])
    write_text(folder / "audit.csv", buf.getvalue())

    rows = []
    for rank, i in enumerate(flagged[:top], start=1):
        img = inp.thumbnail(i, resolution)
        pics = [img]
        for j in (own[i], suspected[i]):
            m = upsample(torch.from_numpy(maps[i, j]), (resolution, resolution)).numpy()
            pics.append(overlay(img, display_heatmap(m, resolution)))
        name = f"audit/{rank:04d}-{safe_name(inp.ids[i])}.png"
        save_grid([pics], folder / name, cell=128)
        rows.append([Cell(rank, "num"), kit.img(name, alt=inp.ids[i], href=name), inp.ids[i], truth[i],
                     kit.tag("b", labels[suspected[i]]), Cell(f"{margin[i]:.4g}", "num")])
    note = (f"{len(flagged)} of {len(truth)} images are more typical of another label than of their own "
            f"(T(x|suspected) > T(x|given)); the top {min(top, len(flagged))} by margin. Pictures: the image, "
            "its typicality map for the given label, for the suspected label (blurred, max-normalised). "
            "Every image's margin is in audit.csv.")
    body = kit.table(["#", "image | T(x|given) | T(x|suspected)", "image", "given", "suspected", "margin"], rows) \
        if rows else kit.empty("No image is more typical of another label than of its own.")
    summary = {"images": len(truth), "labels": len(labels), "flagged": len(flagged), "shown": len(rows),
               "every image": kit.tag("a", "audit.csv", href="audit.csv")}
    write_text(folder / "audit.html", kit.page("Label audit", [kit.section("Flagged images", body, anchor="flagged")],
                                               summary=summary, note=note, command="classify --audit"))
    return {"flagged": len(flagged), "shown": len(rows), "html": "audit.html", "csv": "audit.csv"}
