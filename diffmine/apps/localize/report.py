"""report.html of a localisation run: per finding, the scored boxes ranked best to worst by AUC-PR.

Each figure shows the image with its true box, then the finetuned map's overlay (and the base
model's, when there is one) with the true box (green) and the box predicted from that map (red).
Overlays are blurred and max-normalised for display only (diffmine.report.pictures); the metrics use
the raw maps. Everything is referenced relative to LOC_DIR.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffmine.report.pictures import display_heatmap, overlay, safe_name
from diffmine.core.files import write_text

TRUE, PRED = (0, 230, 0), (255, 40, 40)
SCALE = 4  # 64 px images are drawn at 256 px


def _panel(image: np.ndarray, boxes) -> Image.Image:
    img = Image.fromarray(image).resize((image.shape[1] * SCALE, image.shape[0] * SCALE), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for (x0, y0, x1, y1), color in boxes:
        draw.rectangle([x0 * SCALE, y0 * SCALE, x1 * SCALE - 1, y1 * SCALE - 1], outline=color, width=2)
    return img


def figure(image: np.ndarray, true_box, maps_and_boxes) -> Image.Image:
    """Image with true box, then per map its overlay with true and predicted boxes, side by side."""
    panels = [_panel(image, [(true_box, TRUE)])]
    for typ_map, pred in maps_and_boxes:
        heat = display_heatmap(typ_map, image.shape[0])
        panels.append(_panel(overlay(image, heat), [(true_box, TRUE), (pred, PRED)]))
    w, h = panels[0].size
    fig = Image.new("RGB", (len(panels) * (w + 4) - 4, h), (255, 255, 255))
    for i, p in enumerate(panels):
        fig.paste(p, (i * (w + 4), 0))
    return fig


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h2{margin-top:1.6em;border-bottom:2px solid #ccc} table{border-collapse:collapse}
td,th{padding:.15em .7em;text-align:right} th{background:#eee} .fig{display:inline-block;margin:4px;
font-size:.75em;color:#444;vertical-align:top} .fig img{width:384px;display:block;border:1px solid #bbb}"""


def _table(metrics: dict) -> str:
    keys = ["n_boxes", "auc_pr", "iobb_0.1", "iobb_0.25", "iobb_0.5", "pointing_game"]
    base = any("base_auc_pr" in v for v in metrics["findings"].values())
    keys += ["base_auc_pr", "base_iobb_0.1", "base_iobb_0.25", "base_iobb_0.5", "base_pointing_game"] if base else []
    head = "<tr><th>finding</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>"
    fmt = lambda v: "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.3f}")  # noqa: E731
    body = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(f"<td>{fmt(v.get(k))}</td>" for k in keys) + "</tr>"
                   for n, v in list(metrics["findings"].items()) + [("overall", metrics["overall"])])
    return f"<table>{head}{body}</table>"


def write_report(out: Path, metrics: dict, rows: list[dict], records, images: np.ndarray, store, base_store=None,
                 show: int = 24) -> Path:
    """Write out/overlays/*.png and out/report.html."""
    index = {r.image_id: i for i, r in enumerate(records)}
    res = images.shape[-1]
    base = base_store is not None
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Localisation</title><style>{_CSS}</style>"
             "</head><body><h1>Abnormality localisation</h1>", _table(metrics),
             f"<p>Per box: AUC-PR of the pixel typicality map of the finding's prompt against the box mask; "
             f"predicted box (red): {html.escape(metrics['iobb_box'])}; IoBB = intersection over the predicted box. "
             f"Panels: image with true box (green), finetuned map{', base model map' if base else ''}. "
             f"Ranked from best to worst AUC-PR.</p>"]
    if metrics.get("outside_crop"):
        parts.append(f"<p>{len(metrics['outside_crop'])} box(es) outside the centre crop were not scored.</p>")
    for finding in metrics["findings"]:
        ranked = sorted((r for r in rows if r["finding"] == finding), key=lambda r: -np.nan_to_num(r["auc_pr"], nan=-1))
        parts.append(f"<h2>{html.escape(finding)}</h2>")
        for r in ranked[:show or None]:
            image = np.round((images[index[r["image_id"]]].transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
            maps = [(store.map(r["image_id"], finding, res), r["pred_box"])]
            if base:
                maps.append((base_store.map(r["image_id"], finding, res), r["base_pred_box"]))
            name = f"overlays/{safe_name(finding)}/{safe_name(r['image_id'])}-row{r['box_row']}.png"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            figure(image, r["box"], maps).save(out / name)
            caption = f"{r['image_id']} · AUC-PR {r['auc_pr']:.3f} · IoBB {r['iobb']:.2f}"
            if base:
                caption += f" · base AUC-PR {r['base_auc_pr']:.3f}"
            parts.append(f"<div class='fig'><img src='{html.escape(name, quote=True)}' alt=''>"
                         f"{html.escape(caption)}</div>")
    parts.append("</body></html>")
    write_text(out / "report.html", "\n".join(parts))
    return out / "report.html"
