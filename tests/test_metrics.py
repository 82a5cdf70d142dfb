"""Evaluation metrics on cases with known answers, and the ground-truth geometry."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffmine.core.dataset import LabeledImages
from diffmine.core.errors import DataError
from diffmine.core.images import load_rgb, resize_crop
from diffmine.evaluation.groundtruth import parse_elements, rasterize_boxes, record_elements, transform_boxes
from diffmine.evaluation.intervals import proportion_interval
from diffmine.evaluation.metrics import (MetricsAccumulator, auroc, box_mask_overlap, cluster_purity, elements_recovered,
                            patch_kinds, pixel_auroc, pointing_game)


def test_auroc_matches_the_rank_definition_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 500).astype(float)  # many ties
    p = rng.random(500) < 0.3
    assert auroc(s, p) == pytest.approx(roc_auc_score(p, s))
    assert auroc(np.array([0.0, 1.0, 2.0]), np.array([False, False, True])) == 1.0
    assert auroc(np.array([2.0, 1.0, 0.0]), np.array([False, False, True])) == 0.0
    assert np.isnan(auroc(s, np.zeros(500, bool)))


def test_pointing_game_and_pixel_auroc_known_answer():
    maps = np.zeros((3, 8, 8))
    masks = np.zeros((3, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    maps[0, 3, 3] = 1  # max inside
    maps[1, 6, 6] = 1  # max outside
    maps[2, 2:4, 2:4] = 1  # the whole element is brightest
    masks_b = masks.copy()
    masks_b[1] = False  # no element: skipped
    assert pointing_game(maps, masks) == pytest.approx(2 / 3)
    assert pointing_game(maps, masks_b) == 1.0
    assert pixel_auroc(maps[2:], masks[2:]) == 1.0


def test_patch_kinds_overlap_rule():
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 0:10, 0:10] = True  # big element "a"
    masks[1, 20:22, 20:22] = True  # small element "b"
    boxes = np.array([[2, 2, 8, 8],  # inside a
                      [18, 18, 24, 24],  # contains all of b
                      [8, 8, 14, 14],  # 2x2 of a out of 36 px: background
                      [26, 0, 32, 6]])  # background
    assert box_mask_overlap(boxes, masks).tolist() == [[36, 0], [0, 4], [4, 0], [0, 0]]
    assert patch_kinds(boxes, masks, ["a", "b"]) == ["a", "b", None, None]


def test_purity_and_recovery_known_answer():
    assert cluster_purity(["a", "a", "b", None]) == ("a", 0.5)
    assert cluster_purity([None, None, "a"]) == (None, pytest.approx(2 / 3))
    characteristic = {"x": {"a", "b"}, "y": {"c"}}
    clusters = {"x": [("a", 0.9), (None, 1.0), ("b", 0.7), ("b", 1.0)],  # b only at rank 4 or impure
                "y": [("c", 0.8)]}
    frac, per = elements_recovered(characteristic, clusters)
    assert frac == pytest.approx(2 / 3) and per == {"x": ["a"], "y": ["c"]}


def test_accumulator_known_answer():
    acc = MetricsAccumulator()
    char = np.zeros((8, 8), bool)
    char[0:2, 0:2] = True
    shared = np.zeros((8, 8), bool)
    shared[6:8, 6:8] = True
    m = np.where(char, 2.0, np.where(shared, 0.5, 0.0))
    acc.add_map("x", m, char, shared, ["a"])
    acc.add_clusters("x", [("a", 1.0, 5)])
    acc.add_patch_kinds("x", {"top": ["a", "a"], "random": ["a", None, None, "b"]})
    r = acc.result()
    assert r["pointing_game"] == 1.0 and r["pixel_auroc"] == 1.0 and r["elements_recovered"] == 1.0
    assert r["shared_over_characteristic"] == pytest.approx(0.25)
    assert r["per_label"]["x"]["recovered_kinds"] == ["a"]
    assert r["characteristic_hit_rate"] == {"top": 1.0, "random": 0.25}
    assert r["clusters"]["x"][0] == {"rank": 0, "majority_kind": "a", "purity": 1.0, "members": 5}
    json.dumps(r, allow_nan=False)  # strict JSON: NaN became null
    assert MetricsAccumulator().result()["pointing_game"] is None


def test_characteristic_vs_shared_auroc_tells_a_label_blind_detector_from_typicality():
    """A map that lights every element (no idea of labels) scores 1 on pixel AUROC but 0.5 here."""
    char = np.zeros((8, 8), bool)
    char[0:2, 0:2] = True
    shared = np.zeros((8, 8), bool)
    shared[6:8, 6:8] = True
    blind = np.where(char | shared, 1.0, 0.0)
    typical = np.where(char, 2.0, np.where(shared, 1.0, 0.0))
    inverted = np.where(char, 1.0, np.where(shared, 2.0, 0.0))
    for m, expected in ((blind, 0.5), (typical, 1.0), (inverted, 0.0)):
        acc = MetricsAccumulator()
        acc.add_map("x", m, char, shared, ["a"], image="im0")
        r = acc.result()
        assert r["characteristic_vs_shared_auroc"] == expected
        assert r["pairs"][0]["image"] == "im0"
    assert MetricsAccumulator().result()["characteristic_vs_shared_auroc"] is None


def test_map_intervals_resample_images_and_contain_the_value():
    rng = np.random.default_rng(0)
    acc = MetricsAccumulator()
    for i in range(30):
        char = np.zeros((8, 8), bool)
        char[rng.integers(0, 6), rng.integers(0, 6)] = True
        m = rng.random((8, 8)) + 0.8 * char
        acc.add_map("x" if i % 2 else "y", m, char, None, ["a"], image=f"im{i}")
    r = acc.result()
    lo, hi = r["pixel_auroc_ci"]
    assert lo < r["pixel_auroc"] < hi and hi - lo < 0.3
    lo, hi = r["pointing_game_ci"]  # one pair per image: Clopper-Pearson on the hits
    k = round(r["pointing_game"] * 30)
    assert (lo, hi) == pytest.approx(proportion_interval(k, 30))


# -- ground truth ----------------------------------------------------------------------------
def _wide_dataset(root, with_masks):
    """48x32 images (centre-cropped to 32x32 at R=32: 8 px cut on each side) with a red box."""
    root.mkdir(parents=True)
    rows = []
    for i, (x, y) in enumerate([(10, 4), (30, 20), (2, 10)]):  # the last one is partly cropped away
        img = np.full((32, 48, 3), 128, np.uint8)
        img[y:y + 8, x:x + 12] = (255, 0, 0)
        img[28:31, 0:48] = (0, 0, 255)
        Image.fromarray(img).save(root / f"im{i}.png")
        els = [{"kind": "red", "box": [x, y, x + 12, y + 8], "label": "a"},
               {"kind": "blue", "box": [0, 28, 48, 31], "label": None}]
        row = {"file_name": f"im{i}.png", "label": "a", "elements": json.dumps(els)}
        if with_masks:
            mask = np.zeros((32, 48), np.uint8)
            mask[y:y + 8, x:x + 12] = 1
            mask[28:31, :] = 2
            Image.fromarray(mask).save(root / f"im{i}_mask.png")
            row["mask_file"] = f"im{i}_mask.png"
        rows.append(row)
    import csv

    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.mark.parametrize("with_masks", [False, True])
def test_ground_truth_follows_the_resize_crop_geometry(tmp_path, with_masks):
    root = _wide_dataset(tmp_path / "d", with_masks)
    ds = LabeledImages(root)
    for r in ds:
        el = record_elements(r, 32, root)
        img = np.asarray(resize_crop(load_rgb(r.path), 32))
        red = (img[..., 0] > 200) & (img[..., 2] < 50)
        blue = (img[..., 2] > 200) & (img[..., 0] < 50)
        assert el.kinds == ["red", "blue"] and el.labels == ["a", None]
        assert np.array_equal(el.masks[0], red) and np.array_equal(el.masks[1], blue)
        assert el.characteristic("a").tolist() == [0] and el.shared().tolist() == [1]


def test_ground_truth_scaled_images_and_bad_rows(tmp_path):
    # a 64x96 image processed at 32: scale 1/2, then an 8 px crop on each side
    b = transform_boxes([[20, 10, 40, 30]], 96, 64, 32)
    assert b.tolist() == [[2.0, 5.0, 12.0, 15.0]]
    m = rasterize_boxes(b, 32)[0]
    assert m.sum() == 100 and m[5:15, 2:12].all()
    thin = rasterize_boxes([[3.2, 3.2, 3.4, 10.0]], 32)[0]  # thinner than a pixel: still marked
    assert thin[3:10, 3].all() and thin.sum() == 7
    assert parse_elements("") == [] and parse_elements(None) == []
    with pytest.raises(DataError, match="not valid JSON"):
        parse_elements("[{", "row 2")
    with pytest.raises(DataError, match="box"):
        parse_elements([{"kind": "a", "box": [1, 2, 3]}], "row 2")
    with pytest.raises(DataError, match="empty"):
        parse_elements([{"kind": "a", "box": [5, 2, 3, 4]}], "row 2")
