"""Patch typicality (box filter) and greedy non-overlapping selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mining.patches import (Patches, boxes_overlap, default_patch_size, greedy_select, patch_scores, top_patches,
                            top_per_label)


def _naive_scores(m, k):
    h, w = m.shape
    return np.array([[m[y:y + k, x:x + k].mean() for x in range(w - k + 1)] for y in range(h - k + 1)])


def _naive_greedy(scores, k, n):
    """Reference greedy: candidates in descending order, reject any touching/overlapping a chosen one."""
    h, w = scores.shape
    order = sorted(((scores[y, x], -(y * w + x)) for y in range(h) for x in range(w)), reverse=True)
    chosen = []
    for _, neg in order:
        y, x = divmod(-neg, w)
        if all(abs(y - cy) > k or abs(x - cx) > k for cy, cx in chosen):
            chosen.append((y, x))
            if len(chosen) == n:
                break
    return chosen


def test_default_patch_size_follows_the_paper():
    assert default_patch_size(256) == 50 and default_patch_size(512) == 64  # docs/method.md §3
    assert default_patch_size(32) == 6 and default_patch_size(128) == 25
    assert default_patch_size(1024) == 128
    assert default_patch_size(1) == 1


def test_box_filter_equals_window_means():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 23, 19)).astype(np.float32) + 100.0  # offset: cumulative sums must stay exact
    s = patch_scores(maps, 5)
    assert s.shape == (3, 19, 15)
    for m, got in zip(maps, s.numpy()):
        np.testing.assert_allclose(got, _naive_scores(m.astype(np.float64), 5), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="patch size"):
        patch_scores(maps, 20)


def test_planted_maximum_is_the_top_patch():
    rng = np.random.default_rng(1)
    k = 6
    maps = rng.normal(0, 0.1, size=(4, 32, 32)).astype(np.float32)
    spots = [(3, 20), (25, 0), (10, 10), (26, 26)]  # (y, x) top-left corners
    for m, (y, x) in zip(maps, spots):
        m[y:y + k, x:x + k] += 5.0
    p = top_patches(maps, k, per_image=3)
    first = {int(i): p.box[np.flatnonzero(p.image == i)[0]] for i in range(4)}
    for i, (y, x) in enumerate(spots):
        assert first[i].tolist() == [x, y, x + k, y + k]
        assert p.score[np.flatnonzero(p.image == i)[0]] == pytest.approx(maps[i, y:y + k, x:x + k].mean(), abs=1e-5)


def test_selected_patches_never_touch_or_overlap():
    rng = np.random.default_rng(2)
    k = 5
    maps = rng.normal(size=(8, 40, 40)).astype(np.float32)
    p = top_patches(maps, k, per_image=6)
    for i in range(8):
        boxes = p.box[p.image == i]
        assert len(boxes) == 6
        # independent pixel check: dilate each box by one pixel; no two may share a pixel
        cover = np.zeros((40 + 2, 40 + 2), int)
        for x0, y0, x1, y1 in boxes:
            cover[y0:y1 + 2, x0:x1 + 2] += 1
            assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 40 and x1 - x0 == k and y1 - y0 == k
        ov = boxes_overlap(boxes, boxes)
        assert ov.sum() == len(boxes)  # each box only with itself
        scores = p.score[p.image == i]
        assert np.all(np.diff(scores) <= 0)  # best first


def test_touching_counts_as_overlapping():
    a = np.array([[0, 0, 5, 5]])
    assert boxes_overlap(a, np.array([[5, 0, 10, 5]]))[0, 0]  # shares an edge
    assert boxes_overlap(a, np.array([[5, 5, 10, 10]]))[0, 0]  # shares a corner
    assert not boxes_overlap(a, np.array([[6, 0, 11, 5]]))[0, 0]


def test_batched_greedy_matches_reference_greedy():
    rng = np.random.default_rng(3)
    k = 4
    maps = rng.normal(size=(5, 20, 24)).astype(np.float32)
    scores = patch_scores(maps, k)
    ys, xs, vals = greedy_select(scores, k, 4)
    for i in range(5):
        ref = _naive_greedy(scores[i].numpy(), k, 4)
        got = [(int(y), int(x)) for y, x in zip(ys[i], xs[i]) if y >= 0]
        assert got == ref


def test_small_maps_leave_slots_empty():
    maps = np.random.default_rng(4).normal(size=(2, 10, 10)).astype(np.float32)
    p = top_patches(maps, 6, per_image=5)  # any two 6 px windows in 10 px touch
    assert np.bincount(p.image).tolist() == [1, 1]
    ys, xs, vals = greedy_select(patch_scores(maps, 6), 6, 5)
    assert torch.isnan(vals[:, 1:]).all() and (ys[:, 1:] == -1).all()


def test_baselines_least_typical_and_seeded_random():
    maps = np.random.default_rng(5).normal(size=(3, 24, 24)).astype(np.float32)
    low = top_patches(maps, 4, 2, mode="bottom")
    s = patch_scores(maps, 4).numpy()
    for i in range(3):
        assert low.score[low.image == i][0] == pytest.approx(s[i].min(), abs=1e-6)
    r1 = top_patches(maps, 4, 3, mode="random", generator=torch.Generator().manual_seed(0))
    r2 = top_patches(maps, 4, 3, mode="random", generator=torch.Generator().manual_seed(0))
    assert np.array_equal(r1.box, r2.box) and np.array_equal(r1.score, r2.score)
    for i in range(3):
        assert boxes_overlap(r1.box[r1.image == i], r1.box[r1.image == i]).sum() == 3
        for (x0, y0, _, _), sc in zip(r1.box[r1.image == i], r1.score[r1.image == i]):
            assert sc == pytest.approx(s[i, y0, x0], abs=1e-6)  # scores are the real typicality


def test_top_per_label_across_images():
    p = Patches(np.array([0, 0, 1, 2, 2]), np.array([[0, 0, 2, 2]] * 5), np.array([0.1, 0.9, 0.5, 0.7, 0.3], np.float32))
    best = top_per_label(p, 3)
    assert best.score.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert best.image.tolist() == [0, 2, 1]
    assert len(top_per_label(p, 100)) == 5
