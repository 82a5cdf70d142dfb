"""Report pictures: display-only heatmap processing, grids, safe file names, HTML escaping."""
from __future__ import annotations

import numpy as np
from PIL import Image

from diffmine.report.pictures import display_heatmap, gaussian_blur, safe_name, save_grid, save_heatmap_pair
from mining.report import render_html


def test_display_heatmap_is_blurred_and_max_normalised():
    m = np.zeros((64, 64), np.float32)
    m[32, 32] = 10.0
    m[0:4, 0:4] = -5.0  # atypical: shown as 0
    h = display_heatmap(m, 64)
    assert h.max() == 1.0 and h.min() == 0.0 and np.unravel_index(h.argmax(), h.shape) == (32, 32)
    assert (h > 0.5).sum() > 1  # spread by the blur (sigma 2.5 px at 64 px)
    assert display_heatmap(np.zeros((8, 8))).max() == 0.0
    b = gaussian_blur(m.clip(0), 2.5)
    assert abs(b.sum() - 10.0) < 1e-3  # mass preserved away from the borders


def test_heatmap_pair_grid_and_names(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    p = save_heatmap_pair(img, np.random.default_rng(1).normal(size=(32, 32)), tmp_path / "a" / "pair.png",
                          [(0, 0, 6, 6), ((10, 10, 16, 16), "random")])
    with Image.open(p) as im:
        assert im.size[1] >= 256 and im.size[0] > 2 * im.size[1] - 40  # two panels, upscaled
    g = save_grid([[img[:6, :6]] * 3, [img[:6, :6]]], tmp_path / "g.png", cell=16, pad=2)
    with Image.open(g) as im:
        assert im.size == (3 * 18 + 2, 2 * 18 + 2)
    assert safe_name("a/b c") != safe_name("a_b c") and "/" not in safe_name("a/b c")


def test_html_escapes_labels():
    doc = {"title": "t", "summary": {}, "metrics": None,
           "labels": [{"name": "<script>", "anchor": "x", "summary": {}, "clusters": [], "baselines": {},
                       "grid": None}]}
    page = render_html(doc)
    assert "<script>" not in page and "&lt;script&gt;" in page
