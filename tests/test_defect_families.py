"""The test-only defect families: deterministic, every label drawn where its mask says, on every texture and size."""
from __future__ import annotations

import numpy as np
import pytest

from diffmine.datasets.defect_families import GLOBAL, LOCAL, SIZES, TEXTURES, labels_for, render, sample
from diffmine.datasets.defects import GOOD


def test_same_seed_same_images_other_seed_other_images():
    a, ma = sample("twill", "speckle", 64, 3, seed=4)
    b, mb = sample("twill", "speckle", 64, 3, seed=4)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    c, _ = sample("twill", "speckle", 64, 3, seed=5)
    assert not np.array_equal(a, c)
    later, _ = sample("twill", "speckle", 64, 2, seed=4, start=1)  # an image depends on its index alone
    assert np.array_equal(later, a[1:])
    assert not np.array_equal(sample("mesh", GOOD, 64, 1, seed=4)[0], sample("twill", GOOD, 64, 1, seed=4)[0])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("texture", TEXTURES)
def test_masks_match_the_drawn_defect(texture, size):
    for k in range(3):
        for label in labels_for(texture):
            image, mask, clean = render(np.random.default_rng([11, k, size]), label, texture, size)
            assert image.shape == (size, size, 3) and image.dtype == np.uint8 and mask.shape == (size, size)
            changed = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1) > 12
            if label == GOOD:
                assert not mask.any() and np.array_equal(image, clean)
            elif label in GLOBAL:  # the whole texture changes: the whole image is the defect
                assert mask.all() and changed.mean() > 0.2, label
            else:
                assert mask.any() and changed.any(), (label, k)
                assert not (changed & ~mask).any(), f"{label}: pixels changed outside the mask"
                assert changed[mask].mean() > (0.15 if label == "thread" else 0.3), (label, changed[mask].mean())
                assert mask.mean() < 0.1, (label, mask.mean())  # small: a few per cent of the image at most


def test_thread_defects_only_where_there_are_threads():
    assert "thread" in labels_for("twill") and "thread" in labels_for("mesh")
    assert "thread" not in labels_for("grain") and set(LOCAL) - {"thread"} <= set(labels_for("grain"))
    with pytest.raises(ValueError, match="thread"):
        render(np.random.default_rng(0), "thread", "grain", 64)
    with pytest.raises(ValueError, match="texture"):
        render(np.random.default_rng(0), GOOD, "leather", 64)
