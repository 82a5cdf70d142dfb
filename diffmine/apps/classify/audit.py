"""The label audit: images more typical of another label than of their own, ranked (candidate mislabels).

audit margin(x) = max_{c != own} T(x | c) - T(x | own); flagged when > 0 (the classifier disagrees
with the given label), ranked by the margin. Written as audit.csv (every image) and audit.html
(the top flagged ones, each with its typicality maps for the given and the suspected label).
"""
from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import numpy as np

from diffmine.core.files import write_text


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
        rows.append(f"<tr><td>{rank}</td><td><img src='{html.escape(name, quote=True)}' alt=''></td>"
                    f"<td>{html.escape(inp.ids[i])}</td><td>{html.escape(truth[i])}</td>"
                    f"<td><b>{html.escape(labels[suspected[i]])}</b></td><td>{margin[i]:.4g}</td></tr>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Label audit</title><style>"
            "body{font-family:sans-serif;margin:2em}td{padding:4px 10px;border-bottom:1px solid #ddd}"
            "img{image-rendering:pixelated}</style></head><body><h1>Label audit</h1>"
            f"<p>{len(flagged)} of {len(truth)} images are more typical of another label than of their own "
            f"(T(x|suspected) &gt; T(x|given)); the top {min(top, len(flagged))} by margin. Pictures: the image, "
            "its typicality map for the given label, for the suspected label (blurred, max-normalised).</p>"
            "<table><tr><th>#</th><th>image | T(x|given) | T(x|suspected)</th><th>image</th><th>given</th>"
            "<th>suspected</th><th>margin</th></tr>" + "".join(rows) + "</table></body></html>")
    write_text(folder / "audit.html", page)
    return {"flagged": len(flagged), "shown": len(rows), "html": "audit.html", "csv": "audit.csv"}
