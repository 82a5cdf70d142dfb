"""DIFT features from a real tiny UNet, box pooling, and the CLIP alternative's error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmine.core.errors import DataError
from mining.features import DiftExtractor, feature_boxes, l2_normalize, load_clip, pool_boxes


def _coord_fmaps(n=2, h=8, w=8):
    """Feature maps whose channels say where they are: (image, y, x, 1)."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([torch.stack([torch.full((h, w), float(i)), yy, xx, torch.ones(h, w)]) for i in range(n)])


def test_feature_boxes_scale_and_cover_at_least_one_cell():
    fb = feature_boxes(np.array([[8, 4, 16, 12], [0, 0, 32, 32], [13, 13, 14, 14], [3, 5, 9, 7]]), 32, (8, 8))
    assert fb.tolist() == [[2, 1, 4, 3], [0, 0, 8, 8], [3, 3, 4, 4], [0, 1, 3, 2]]


def test_pooling_reads_the_right_box():
    f = _coord_fmaps()
    boxes = np.array([[8, 4, 16, 12], [0, 24, 8, 32], [24, 0, 32, 8]])
    image = np.array([1, 0, 1])
    got = pool_boxes(f, image, boxes, 32, normalize=False)
    for g, i, fb in zip(got, image, feature_boxes(boxes, 32, (8, 8))):
        x0, y0, x1, y1 = fb
        want = f[i, :, y0:y1, x0:x1].mean(dim=(1, 2))
        torch.testing.assert_close(g, want)
    # the cells: image 1, rows 1-2, cols 2-3 -> mean y 1.5, mean x 2.5
    torch.testing.assert_close(got[0], torch.tensor([1.0, 1.5, 2.5, 1.0]))
    normed = pool_boxes(f, image, boxes, 32)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(normed, l2_normalize(got))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand((3, 3, 32, 32), generator=g) * 2 - 1


def test_dift_shape_determinism_and_batch_independence(tiny_bundle, images):
    prompts = ["red", "blue", "red"]
    ex = DiftExtractor(tiny_bundle, t=161, block=1, draws=8, seed=0, batch_size=3)
    a = ex(images, prompts)
    assert a.shape == (3, 64, 8, 8)  # tiny UNet up_blocks[1]: 64 channels at latent resolution
    b = DiftExtractor(tiny_bundle, t=161, block=1, draws=8, seed=0, batch_size=1)(images, prompts)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not tiny_bundle.unet.up_blocks[1]._forward_hooks  # hook removed
    c = DiftExtractor(tiny_bundle, t=161, block=1, draws=8, seed=1)(images, prompts)
    assert not torch.allclose(a, c)
    assert DiftExtractor(tiny_bundle, block=0)(images[:1], ["red"]).shape == (1, 128, 4, 4)


def test_dift_is_the_mean_over_seeded_draws_of_the_block_output(tiny_bundle, images):
    ex = DiftExtractor(tiny_bundle, t=161, block=1, draws=2, seed=3)
    got = ex(images[:1], ["a red thing"])
    # by hand: the same two noise draws, the full UNet, a hook on up_blocks[1]
    b = tiny_bundle
    z0 = b.encode_images(images[:1])
    eps = torch.randn((2, *z0.shape[1:]), generator=torch.Generator().manual_seed(3))
    t = torch.full((2,), 161)
    zt = b.scheduler.add_noise(z0.repeat(2, 1, 1, 1), eps, t)
    out = {}
    h = b.unet.up_blocks[1].register_forward_hook(lambda m, a, o: out.__setitem__("x", o))
    try:
        with torch.no_grad():
            b.unet(zt, t, encoder_hidden_states=b.encode_prompts(["a red thing"] * 2))
    finally:
        h.remove()
    torch.testing.assert_close(got[0], out["x"].mean(0), atol=1e-5, rtol=1e-4)


def test_dift_rejects_bad_block_and_timestep(tiny_bundle):
    with pytest.raises(DataError, match="up_blocks 0..2"):
        DiftExtractor(tiny_bundle, block=3)
    with pytest.raises(DataError, match="timestep"):
        DiftExtractor(tiny_bundle, t=1000)


def test_clip_alternative_fails_clearly(tmp_path):
    # open_clip needs torchvision, absent here: the error must say what to install.
    # With both installed, a folder without an open_clip config is still a clear DataError.
    with pytest.raises(DataError, match="torchvision|open_clip|clip-model"):
        load_clip(tmp_path / "nothing")
    with pytest.raises(DataError, match="clip-model"):
        load_clip(None)
