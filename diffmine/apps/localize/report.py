"""report.html of a localisation run: per finding, the scored boxes ranked best to worst by AUC-PR.

Each figure shows the image with its true box, then the finetuned map's overlay (and the base
model's, when there is one) with the true box (green) and the box predicted from that map (red).
Overlays are blurred and max-normalised for display only (diffmine.report.pictures); the metrics use
the raw maps. Everything is referenced relative to LOC_DIR; the page is built with the report kit
(diffmine.report.page).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffmine.report.page import Cell, Html, empty, esc, figures, page, para, section, table
from diffmine.report.page import figure as kit_figure
from diffmine.report.pictures import display_heatmap, overlay, safe_name
from diffmine.core.files import write_text
from diffmine.core.images import from_tensor_array

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


def _table(metrics: dict):
    keys = ["n_boxes", "auc_pr", "iobb_0.1", "iobb_0.25", "iobb_0.5", "pointing_game"]
    base = any("base_auc_pr" in v for v in metrics["findings"].values())
    keys += ["base_auc_pr", "base_iobb_0.1", "base_iobb_0.25", "base_iobb_0.5", "base_pointing_game"] if base else []
    fmt = lambda v: "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.3f}")  # noqa: E731
    named = list(metrics["findings"].items()) + [("overall", metrics["overall"])]
    head = ["finding"] + [Html(esc(k).replace("_", "_<wbr>")) for k in keys]  # headers may break at "_"
    return table(head, ([n] + [Cell(fmt(v.get(k)), "num") for k in keys] for n, v in named),
                 row_cls=[None] * len(metrics["findings"]) + ["total"])


def write_report(out: Path, metrics: dict, rows: list[dict], records, images: np.ndarray, store, base_store=None,
                 show: int = 24) -> Path:
    """Write out/overlays/*.png and out/report.html."""
    index = {r.image_id: i for i, r in enumerate(records)}
    res = images.shape[-1]
    base = base_store is not None
    note = (f"Per box: AUC-PR of the pixel typicality map of the finding's prompt against the box mask; "
            f"predicted box (red): {metrics['iobb_box']}; IoBB = intersection over the predicted box. "
            f"Panels: image with true box (green), finetuned map{', base model map' if base else ''}. "
            f"Ranked from best to worst AUC-PR.")
    metric_body = [_table(metrics)]
    if metrics.get("outside_crop"):
        metric_body.append(para(f"{len(metrics['outside_crop'])} box(es) outside the centre crop were not scored."))
    sections = [section("Metrics", *metric_body, anchor="metrics")]
    for finding in metrics["findings"]:
        ranked = sorted((r for r in rows if r["finding"] == finding), key=lambda r: -np.nan_to_num(r["auc_pr"], nan=-1))
        figs = []
        for r in ranked[:show or None]:
            image = from_tensor_array(images[index[r["image_id"]]])
            maps = [(store.map(r["image_id"], finding, res), r["pred_box"])]
            if base:
                maps.append((base_store.map(r["image_id"], finding, res), r["base_pred_box"]))
            name = f"overlays/{safe_name(finding)}/{safe_name(r['image_id'])}-row{r['box_row']}.png"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            figure(image, r["box"], maps).save(out / name)
            caption = f"{r['image_id']} · AUC-PR {r['auc_pr']:.3f} · IoBB {r['iobb']:.2f}"
            if base:
                caption += f" · base AUC-PR {r['base_auc_pr']:.3f}"
            figs.append(kit_figure(name, caption, alt="", href=name))
        sections.append(section(finding, figures(figs, size="m") if figs else empty("No box of this finding."),
                                anchor=f"finding-{safe_name(finding)}"))
    write_text(out / "report.html", page("Abnormality localisation", sections, note=note, command="localize"))
    return out / "report.html"
