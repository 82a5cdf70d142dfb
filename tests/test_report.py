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


# -- the report kit: every writer's page is built on it ---------------------------------------
EVIL = "<script>alert(1)</script>"


def _kit_pages(tmp_path) -> dict[str, str]:
    """The page of each report writer, fed a label with <script> in it."""
    from types import SimpleNamespace

    from diffmine.apps.changes.report import write_report as changes_report
    from diffmine.apps.classify.audit import write_audit
    from diffmine.apps.localize.report import write_report as localize_report
    from diffmine.apps.translate.outputs import write_index

    patch = {"image_id": f"{EVIL}/img_000", "typicality": 0.5, "patch_file": "patches/a.png", "heatmap_file": "images/a.png"}
    mining = render_html({"title": "diffmine: typical visual elements", "summary": {"labels": 1}, "metrics": {"auc": 0.5},
                          "labels": [{"name": EVIL, "anchor": safe_name(EVIL), "summary": {"maps": 1},
                                      "clusters": [{"rank": 0, "median_typicality": 0.5, "n_members": 1, "n_images": 1,
                                                    "majority_kind": EVIL, "purity": 1.0, "members": [patch]}],
                                      "baselines": {"random": [patch]}, "grid": "grids/a.png"}]})
    cells = [{"file": "patches/s.png", "label": EVIL, "source": True, "typicality": None},
             {"file": "patches/t.png", "label": "b", "source": False, "typicality": 0.25}]
    changes_report(tmp_path / "changes.html", [EVIL, "b"],
                   [{"rank": 0, "median": 0.3, "n_members": 1, "n_images": 1,
                     "rows": [{"image_id": f"{EVIL}/img_000", "cotypicality": 0.3, "box": [0, 0, 8, 8], "cells": cells}]}],
                   {"labels": EVIL})
    metrics = {"findings": {EVIL: {"n_boxes": 0, "auc_pr": None}}, "overall": {"n_boxes": 0, "auc_pr": None},
               "iobb_box": EVIL}
    loc = tmp_path / "loc"
    loc.mkdir()
    localize_report(loc, metrics, [], [], np.zeros((0, 3, 8, 8), np.float32), store=None)
    inp = SimpleNamespace(ids=[f"{EVIL}/img_000", "b/img_001"],
                          thumbnail=lambda i, res: np.full((res, res, 3), 40 * i, np.uint8))
    cls = tmp_path / "cls"
    cls.mkdir()
    write_audit(cls, inp, [EVIL, "b"], [EVIL, "b"], np.array([[0.0, 1.0], [0.0, 1.0]]),
                np.zeros((2, 2, 4, 4), np.float32), 8, 5)
    write_index(tmp_path / "index.html", [(f"{EVIL}/img_000", EVIL, "grids/a.png")], {"to": EVIL})
    return {"mining": mining, "changes": (tmp_path / "changes.html").read_text(),
            "localize": (loc / "report.html").read_text(), "classify": (cls / "audit.html").read_text(),
            "translate": (tmp_path / "index.html").read_text()}


def test_every_report_writer_builds_its_page_on_the_kit_and_escapes_labels(tmp_path):
    import re

    from diffmine.report.page import STYLE

    pages = _kit_pages(tmp_path)
    skeleton = set()
    for name, text in pages.items():
        assert text.count(STYLE) == 1 and text.count("<style>") == 1, name  # the one stylesheet, once
        assert text.count("<header class='top'>") == 1 and text.count("<nav class='toc'>") == 1, name
        assert text.count("<main>") == 1 and text.rstrip().endswith("</footer></body></html>"), name
        assert "<script" not in text and "&lt;script&gt;" in text, name
        # the same skeleton: everything but the title, the command and the page's own content
        skeleton.add(re.sub(r"<title>.*?</title>|<header class='top'>.*?</header>|<nav class='toc'>.*?</nav>"
                            r"|<main>.*</main>", "", text, flags=re.S))
        for sid in re.findall(r"<section id='([^']+)'>", text):  # ids safe in a URL fragment
            assert re.fullmatch(r"[A-Za-z0-9_.-]+", sid), (name, sid)
    assert len(skeleton) == 1
    # the table of contents links every section of a page with more than one
    toc = re.search(r"<nav class='toc'>(.*?)</nav>", pages["mining"], re.S).group(1)
    assert re.findall(r"<a href='#([^']+)'>", toc) == re.findall(r"<section id='([^']+)'>", pages["mining"])
    assert len(re.findall(r"<section id=", pages["mining"])) == 2  # Evaluation + the one label


def test_kit_helpers_escape_text_and_pass_markup():
    from diffmine.report.page import Cell, Html, esc, figure, kv_table, page, section, table

    assert esc("<b>") == "&lt;b&gt;" and esc(Html("<b>")) == "<b>"
    assert kv_table({"<k>": "<v>"}) == "<table class='kv'><tr><th>&lt;k&gt;</th><td>&lt;v&gt;</td></tr></table>"
    t = table(["", "<a>"], [[Cell("x", "src"), "<y>"]])
    assert "<th></th><th>&lt;a&gt;</th>" in t and "<td class='src'>x</td><td>&lt;y&gt;</td>" in t
    f = figure("a'b.png", "<cap>", href="h.png")
    assert f == ("<figure><a href='h.png'><img src='a&#x27;b.png' alt='&lt;cap&gt;'></a>"
                 "<figcaption>&lt;cap&gt;</figcaption></figure>")
    p = page("<T>", [section("A", anchor="x y"), section("A", anchor="x y")])
    assert "<section id='x-y'>" in p and "<section id='x-y-2'>" in p and "<title>&lt;T&gt;</title>" in p
