"""The `patches` score kind (PatchCore on DIFT tile features), the defects generator, pixel metrics.

Real model (the shipped tiny towns model, 64 px) on real generated textures; small settings.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffmine.apps.anomaly.config import AnomalyFitConfig
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.apps.anomaly.folder import PATCHES_FILE, load_detector, save_detector
from diffmine.apps.anomaly.kinds.patches import SCORE_STATS_FILE
from diffmine.apps.anomaly.patches import MemoryBank, greedy_coreset, stitch, tile_boxes, tile_offsets
from diffmine.core.errors import DataError
from diffmine.datasets.defects import DEFECTS, GLOBAL_CHANGES, GOOD, defects_for, generate_defects, read_split, render
from diffmine.evaluation.anomaly import pixel_auroc, pro_curve, pro_score

ROOT = Path(__file__).resolve().parents[1]

SIZE = 128  # 2 x 2 model tiles without overlap, 3 x 3 at half-tile stride
QUICK = dict(model="tiny", score="patches", patch_draws=1, tile_stride=64, batch_size=64, coreset_ratio=0.5)


# -- the generator ----------------------------------------------------------------------------
@pytest.mark.parametrize("texture", ["weave", "grid", "noise"])
def test_masks_cover_the_planted_defects(texture):
    for k, label in enumerate(defects_for(texture)):
        image, mask, clean = render(np.random.default_rng([7, k]), label, texture, 256)
        changed = np.abs(image.astype(int) - clean.astype(int)).max(axis=-1) > 16
        assert mask.any() and changed.any(), label
        if label in GLOBAL_CHANGES:  # the whole texture changes: the mask is all of it, every quadrant differs
            assert mask.all(), label
            assert all(changed[y:y + 128, x:x + 128].mean() > 0.02 for y in (0, 128) for x in (0, 128)), label
            continue
        assert not (changed & ~mask).any(), f"{label}: pixels changed outside the mask"
        assert changed[mask].mean() > (0.3 if label in ("speckle", "scratch", "hole", "colour_spot") else 0.05), label
        assert mask.mean() < (0.003 if label in ("speckle", "scratch", "hole", "colour_spot") else 0.2), label
    image, mask, clean = render(np.random.default_rng([7, 99]), GOOD, texture, 256)
    assert not mask.any() and np.array_equal(image, clean)


def test_generator_layout_and_determinism(tmp_path):
    out = generate_defects(tmp_path / "d", n_train=2, n_val=1, n_test=1, size=64)
    assert sorted(p.name for p in (out / "train" / "images").iterdir()) == [GOOD]  # train: normal images only
    rows = read_split(out / "test")
    assert [r["label"] for r in rows] == [GOOD, GOOD, *DEFECTS]
    assert {r["group"] for r in rows} == {None, "local", "weave", "global"}
    noise = read_split(generate_defects(tmp_path / "n", n_train=1, n_val=1, n_test=1, size=64, texture="noise") / "test")
    assert "rotated" not in {r["label"] for r in noise} and "rescaled" in {r["label"] for r in noise}
    for r in rows:
        assert r["mask"].shape == (64, 64) and r["mask"].any() == (r["label"] != GOOD)
        if r["box"]:
            x0, y0, x1, y1 = r["box"]
            assert r["mask"][y0:y1, x0:x1].sum() == r["mask"].sum()
    first = (out / "test" / rows[3]["file_name"]).read_bytes()
    again = generate_defects(tmp_path / "e", n_train=2, n_val=1, n_test=1, size=64)
    assert (again / "test" / rows[3]["file_name"]).read_bytes() == first


# -- tiling and stitching -----------------------------------------------------------------------
def test_tiles_cover_the_image_and_stitch_to_its_size():
    assert tile_offsets(256, 64, 48) == [0, 48, 96, 144, 192]  # the last tile flush with the edge
    assert tile_offsets(50, 64, 32) == [0]
    boxes = tile_boxes(100, 160, 64, 48)
    assert boxes[:, 2].max() == 160 and boxes[:, 3].max() == 100 and len(boxes) == 2 * 3
    # constant maps per tile: where two tiles overlap, the stitched map is their mean
    maps = torch.arange(len(boxes), dtype=torch.float32)[:, None, None].expand(-1, 16, 16)
    out = stitch(maps, boxes, (100, 160))
    assert out.shape == (100, 160)
    assert out[0, 0] == 0 and out[0, 50] == pytest.approx(0.5) and out[99, 159] == len(boxes) - 1
    small_boxes = tile_boxes(32, 48, 64, 32)  # tiled at 64 x 96 (short side one tile): two tiles
    assert small_boxes.tolist() == [[0, 0, 64, 64], [32, 0, 96, 64]]
    small = stitch(torch.ones(2, 16, 16), small_boxes, (32, 48))  # scaled back to the image's size
    assert small.shape == (32, 48) and torch.allclose(small, torch.ones(32, 48))


def test_greedy_coreset_picks_the_spread_points():
    x = torch.tensor([[0.0, 0], [0.1, 0], [0, 0.1], [10, 0], [0, 10], [10.1, 0]])
    assert sorted(greedy_coreset(x, 3, seed=0).tolist()) in ([0, 3, 4], [1, 3, 4], [2, 3, 4], [0, 4, 5],
                                                            [1, 4, 5], [2, 4, 5])


def test_leave_one_out_distance_is_the_nearest_other_images_patch():
    g = np.random.default_rng(0)
    x = g.normal(size=(3000, 8)).astype(np.float32)
    owner = np.repeat(np.arange(30), 100)
    bank = MemoryBank(x, owner, "exact")
    q = x[owner == 7] + 0.01 * g.normal(size=(100, 8)).astype(np.float32)  # nearest: its own rows
    brute = np.sqrt(((q[:, None] - x[owner != 7][None]) ** 2).sum(-1).min(1))
    assert np.allclose(bank.distances(q, exclude_owner=7), brute, atol=1e-5)
    assert bank.distances(q).max() < 0.1  # without leaving out: its own rows


def test_building_a_graph_leaves_the_process_threads_as_they_were():
    """FAISS and torch share one OpenMP runtime: the graph's one-thread build must not leave the process
    (a command run with OMP_NUM_THREADS=2) on one thread for the rest of its work."""
    code = ("import numpy as np, torch; from diffmine.apps.anomaly.patches import MemoryBank; "
            "MemoryBank(np.ones((64, 4), np.float32), np.zeros(64, int), 'hnsw'); print(torch.get_num_threads())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "2"


def test_hnsw_bank_finds_the_same_nearest_patches_as_the_full_scan():
    g = np.random.default_rng(1)
    x = g.normal(size=(4000, 32)).astype(np.float32)
    owner = np.repeat(np.arange(40), 100)
    exact, graph = MemoryBank(x, owner, "exact"), MemoryBank(x, owner, "hnsw")
    q = g.normal(size=(500, 32)).astype(np.float32)
    d_exact, d_graph = exact.distances(q), graph.distances(q)
    assert np.all(d_graph >= d_exact - 1e-4)  # a graph walk never finds a nearer patch than there is
    assert np.mean(np.isclose(d_graph, d_exact, rtol=1e-4)) > 0.99
    own = x[owner == 3] + 0.01 * g.normal(size=(100, 32)).astype(np.float32)  # nearest 16: all its own rows
    brute = np.sqrt(((own[:, None] - x[owner != 3][None]) ** 2).sum(-1).min(1))
    assert np.mean(np.isclose(graph.distances(own, exclude_owner=3), brute, rtol=1e-4)) > 0.99
    # a graph smaller than the neighbours asked for: the missing ones (-1) are not taken for another image's
    tiny = MemoryBank(x[:6], np.array([0, 0, 0, 0, 1, 1]), "hnsw")
    np.testing.assert_allclose(tiny.distances(x[:4], exclude_owner=0),
                               np.sqrt(((x[:4, None] - x[None, 4:6]) ** 2).sum(-1).min(1)), rtol=1e-5)
    rebuilt = MemoryBank(x, owner, "hnsw")  # built on one thread: the same graph, the same answers
    np.testing.assert_array_equal(rebuilt.distances(q), d_graph)
    # screened, then the top 5 searched again: the 5 largest as the full search's, the rest never below
    for exclude in (None, 3):
        rows = own if exclude is not None else q
        full, screened = graph.distances(rows, exclude), graph.distances(rows, exclude, top=5)
        np.testing.assert_array_equal(np.sort(screened)[-5:], np.sort(full)[-5:])
        assert np.all(screened >= full - 1e-6)


# -- the detector -------------------------------------------------------------------------------
def _plant_hole(image: np.ndarray, cx: int, cy: int, r: int = 7) -> np.ndarray:
    y, x = np.mgrid[:image.shape[0], :image.shape[1]]
    out = image.copy()
    out[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = (25, 20, 18)
    return out


@pytest.fixture(scope="module")
def weaves():
    """Eight normal 128 px weaves (the first six to fit) and the last two with a hole planted."""
    imgs = np.stack([render(np.random.default_rng([3, i]), GOOD, "weave", SIZE)[0] for i in range(8)])
    return imgs


@pytest.fixture(scope="module")
def patch_detector(weaves):
    return DiffusionDetector(**QUICK, contamination=0.2).fit(weaves[:6])


def test_patches_pyod_contract(patch_detector, weaves):
    from pyod.models.base import BaseDetector
    from sklearn.base import clone

    det = patch_detector
    assert isinstance(det, BaseDetector)
    assert det.decision_scores_.shape == (6,) and np.isfinite(det.decision_scores_).all()
    # each training image is scored without its own patches (leave-one-out distances above 0), in standard
    # deviations of the normal images' own scores (the default image score, top-k-or-mean)
    mu_top, sd_top, mu_all, sd_all = det.image_score_stats_
    assert det.image_score == "top-k-or-mean" and min(mu_top, sd_top, mu_all, sd_all) > 0 and mu_top > mu_all
    assert det.decision_scores_.max() < 6  # a normal image is not many standard deviations out
    assert det.threshold_ == pytest.approx(np.percentile(det.decision_scores_, 80))
    assert np.array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    # the bank (the default vae+pixels): coreset_ratio of the 6 x 4 tiles x 16 x 16 cells, each a unit-norm
    # VAE cell beside an 8 x 8 RGB pixel patch, each half over its own scale
    assert det.patch_features == "vae+pixels" and det.bank_features_.shape == (6 * 4 * 256 // 2, 64 + 192)
    assert np.allclose(np.linalg.norm(det.bank_features_[:, :64] * det.patch_scales_[:64], axis=1), 1, atol=1e-2)
    X = np.stack([weaves[6], _plant_hole(weaves[7], 90, 40)])
    scores = det.decision_function(X)
    assert scores.shape == (2,) and scores[1] > scores[0]
    pred, conf = det.predict(X, return_confidence=True)
    assert np.array_equal(pred, (scores > det.threshold_).astype(int)) and ((conf >= 0) & (conf <= 1)).all()
    proba = det.predict_proba(X)
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1)
    twin = clone(det)
    assert twin.get_params() == det.get_params() and not hasattr(twin, "bank_features_")
    twin.set_params(top_k=5, coreset="random")
    assert twin.top_k == 5 and det.top_k == 1


def test_dift_patch_features_still_fit_and_score(weaves):
    det = DiffusionDetector(**QUICK, patch_features="dift", patch_pool=3).fit(weaves[:4])
    assert det.bank_features_.shape == (4 * 4 * 256 // 2, 64)  # up_blocks[1] of the tiny UNet: 64 channels
    assert det.decision_function(weaves[6:7]).shape == (1,)


def test_pixel_patches_are_the_squares_around_each_cell():
    from diffmine.apps.anomaly.pixel_features import pixel_patch_features

    x = torch.randn(2, 3, 64, 64)
    for size in (8, 16):
        f = pixel_patch_features(x, size)
        stride = size // 2
        assert f.shape == (2, 3 * size * size, 64 // stride, 64 // stride)  # one cell every half patch
        i, j = 2, 4  # an inner cell: the square centred on (i + 1/2) x stride, unpadded
        y0, x0 = (i * stride + stride // 2 - size // 2), (j * stride + stride // 2 - size // 2)
        assert torch.equal(f[1, :, i, j].reshape(3, size, size), x[1, :, y0:y0 + size, x0:x0 + size])


def _plant_speckle(image: np.ndarray, cx: int, cy: int) -> np.ndarray:
    """Six bright 2 px dots within about 12 px of (cx, cy): the issue's foreign-texture defect."""
    out = image.copy()
    for dx, dy in np.random.default_rng(1).integers(-5, 6, (6, 2)):
        out[cy + dy:cy + dy + 2, cx + dx:cx + dx + 2] = 250
    return out


def test_pixel_patches_find_a_planted_speckle_where_it_is(weaves):
    det = DiffusionDetector(**{**QUICK, "patch_features": "pixels", "patch_size": 8}, contamination=0.2).fit(weaves[:6])
    # the bank: coreset_ratio of 6 x 4 tiles x 16 x 16 cells of 8 x 8 RGB pixels, not normalised
    assert det.bank_features_.shape == (6 * 4 * 256 // 2, 192)
    assert not np.allclose(np.linalg.norm(det.bank_features_, axis=1), 1.0)
    X = np.stack([weaves[6], _plant_speckle(weaves[7], 90, 40), _plant_speckle(weaves[7], 30, 100)])
    scores, maps = det.decision_function(X), det.anomaly_maps(X)
    assert maps.shape == (3, SIZE, SIZE)
    assert scores[1] > 1.5 * scores[0] and scores[2] > 1.5 * scores[0]
    assert scores[0] < det.threshold_ * 1.5  # a clean weave scores as the normal ones do
    for m, (cx, cy) in zip(maps[1:], ((90, 40), (30, 100))):
        py, px = np.unravel_index(m.argmax(), m.shape)
        assert np.hypot(px - cx - 1, py - cy - 1) <= 8, (px, py, cx, cy)
        assert m[cy - 6:cy + 8, cx - 6:cx + 8].mean() > 1.5 * np.median(m)  # the map is high on the speckle


def test_vae_and_pixels_side_by_side_are_each_half_as_alone(weaves, tmp_path):
    """vae+pixels: each cell's unit VAE feature beside its 8 px pixel patch (two tiny-VAE cells) over its
    root mean square, each half divided by its median normal nearest-patch distance: the same cells as
    either source alone; its map points at a speckle the VAE alone misplaces; saved and loaded, it scores alike."""
    from diffmine.apps.anomaly.folder import save_detector

    every = dict(QUICK, coreset_ratio=1.0, image_score="top-k")  # the whole bank, in the images' order; distances
    # as image scores (their ratios compare the sources)
    joint = DiffusionDetector(**every, patch_features="vae+pixels", contamination=0.2).fit(weaves[:6])
    vae = DiffusionDetector(**every, patch_features="vae").fit(weaves[:6])
    pixels = DiffusionDetector(**every, patch_features="pixels", patch_size=8).fit(weaves[:6])
    assert joint.bank_features_.shape == (6 * 4 * 16 * 16, 64 + 192)
    scales = joint.patch_scales_
    assert len(set(scales[:64])) == 1 and len(set(scales[64:])) == 1 and 0 < scales[0] and 0 < scales[-1]
    unscaled = joint.bank_features_ * scales
    np.testing.assert_allclose(unscaled[:, :64], vae.bank_features_, atol=2e-3)  # half precision
    np.testing.assert_allclose(unscaled[:, 64:] * np.sqrt(192), pixels.bank_features_, atol=2e-2)
    # each half's scale: the median distance of a normal patch to its nearest one of another image
    from diffmine.apps.anomaly.patches import MemoryBank

    for cols in (slice(0, 64), slice(64, None)):
        bank = MemoryBank(unscaled[:, cols], joint.bank_owner_, "exact")
        d = bank.distances(unscaled[joint.bank_owner_ == 0, cols], exclude_owner=0)
        assert 0.5 < scales[cols][0] / np.median(d) < 2.0
    X = np.stack([weaves[6], _plant_speckle(weaves[7], 90, 40)])
    for det, near in ((joint, True), (vae, False)):
        py, px = np.unravel_index(det.anomaly_maps(X)[1].argmax(), (SIZE, SIZE))
        assert (np.hypot(px - 91, py - 41) <= 8) == near, (det.patch_features, px, py)
    ratio = {d.patch_features: np.divide(*d.decision_function(X)[::-1]) for d in (joint, vae, pixels)}
    assert ratio["vae"] < ratio["vae+pixels"] < ratio["pixels"], ratio  # the speckle's score over a clean weave's
    again = load_detector(save_detector(joint, tmp_path / "det"))
    np.testing.assert_array_equal(again.patch_scales_, scales)
    np.testing.assert_allclose(again.decision_function(X), joint.decision_function(X), rtol=1e-5)


def test_joint_vectors_refuse_features_on_different_cells():
    from diffmine.apps.anomaly.patches import joint_vectors

    with pytest.raises(ValueError, match="same cells"):
        joint_vectors(torch.zeros(1, 16, 16, 4), torch.zeros(1, 8, 8, 12))


def test_denoise_features_are_the_engines_denoising_errors_per_draw_and_channel(weaves):
    """Averaged over draws and channels, exp(feature) - FLOOR is the typicality engine's null-prompt error map."""
    from diffmine.apps.anomaly.denoise_features import FLOOR, denoising_error_features
    from diffmine.apps.anomaly.patches import cut_tiles
    from typicality.engine import TypicalityEstimator

    det = DiffusionDetector(**{**QUICK, "patch_draws": 3}, patch_features="denoise").fit(weaves[:2])
    bundle, prompts, est = det.loaded()
    draws = det.kind.denoise_draws()
    tiles = torch.from_numpy(cut_tiles(Image.fromarray(weaves[5]), 64, 64))
    feats = denoising_error_features(est, tiles, draws, batch_size=5)  # 5 rows: uneven batches
    assert feats.shape == (4, 3 * 4, 16, 16)  # 4 tiles; 3 draws x 4 latent channels; 64 px / 4 (tiny VAE)
    engine = TypicalityEstimator(bundle, prompts, draws=3, draw_fn=lambda _id, _shape: draws, share_prompts=False)
    ref = engine.estimate(tiles, [f"t{i}" for i in range(4)], [[]] * 4)
    mean_err = (feats.exp() - FLOOR).reshape(4, 3, 4, 16, 16).mean(dim=(1, 2))
    torch.testing.assert_close(mean_err, torch.stack([torch.from_numpy(r.err_null) for r in ref]),
                               rtol=1e-4, atol=1e-6)
    assert det.bank_features_.shape[1] == 12
    # not L2-normalised: the size of a log error is kept
    assert not np.allclose(np.linalg.norm(det.bank_features_, axis=1), 1.0)


def test_map_has_the_image_size_and_peaks_on_the_planted_defect(weaves):
    det = DiffusionDetector(**{**QUICK, "tile_stride": 32}).fit(weaves[:6])
    for cx, cy in ((90, 40), (30, 100)):
        maps = det.anomaly_maps(_plant_hole(weaves[7], cx, cy)[None])
        assert maps.shape == (1, SIZE, SIZE)  # the image's own size, not the model's 64 px
        py, px = np.unravel_index(maps[0].argmax(), maps[0].shape)
        assert np.hypot(px - cx, py - cy) <= 12, (px, py, cx, cy)


def test_bad_patch_settings_name_their_field(weaves):
    from diffmine.core.settings import ConfigError

    for bad, field in ((dict(coreset="kmeans"), "coreset"), (dict(coreset_ratio=0), "coreset_ratio"),
                       (dict(tile_stride=0), "tile_stride"), (dict(top_k=0), "top_k"),
                       (dict(patch_features="clip"), "patch_features"), (dict(patch_pool=2), "patch_pool"),
                       (dict(patch_features="pixels", patch_size=1), "patch_size")):
        with pytest.raises(ConfigError, match=field):
            DiffusionDetector(**{**QUICK, **bad}).fit(weaves[:2])
    with pytest.raises(ConfigError, match="coreset"):
        AnomalyFitConfig(data="x", out="y", model="tiny", score="patches", coreset="kmeans").validate()
    with pytest.raises(ConfigError, match="patch_size"):
        AnomalyFitConfig(data="x", out="y", model="tiny", score="patches", patch_size=1).validate()


def test_cli_fit_score_with_maps_writes_stitched_maps(weaves, tmp_path):
    from diffmine.cli import main

    train, test = tmp_path / "normal", tmp_path / "test"
    train.mkdir()
    test.mkdir()
    for i in range(4):
        Image.fromarray(weaves[i]).save(train / f"n{i}.png")
    Image.fromarray(weaves[6]).save(test / "a_good.png")
    Image.fromarray(_plant_hole(weaves[7], 90, 40)).save(test / "b_hole.png")
    det_dir = tmp_path / "det"
    assert 0 == main(["anomaly", "fit", "--data", str(train), "--out", str(det_dir), "--model", "tiny", "--score", "patches",
          "--patch-draws", "1", "--tile-stride", "64", "--coreset-ratio", "0.5"])
    assert (det_dir / PATCHES_FILE).is_file()
    assert 0 == main(["anomaly", "score", "--detector", str(det_dir), "--data", str(test), "--out", str(tmp_path / "s.csv"),
          "--maps", str(tmp_path / "maps")])
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert [r["image_id"] for r in rows] == ["a_good", "b_hole"]
    assert float(rows[1]["score"]) > float(rows[0]["score"])
    again = load_detector(det_dir).decision_function(np.stack([weaves[6], _plant_hole(weaves[7], 90, 40)]))
    assert np.allclose([float(r["score"]) for r in rows], again, rtol=1e-5)
    pictures = sorted((tmp_path / "maps").glob("*.png"))
    assert [p.stem.split("-")[0] for p in pictures] == ["a_good", "b_hole"]
    # image | overlay side by side at the image's own 128 px (not the model's 64), upscaled to >= 256
    assert Image.open(pictures[0]).size == (2 * 2 * SIZE + 2 * 4, 2 * SIZE)
    (det_dir / PATCHES_FILE).unlink()
    with pytest.raises(DataError, match=PATCHES_FILE):
        load_detector(det_dir)


def test_local_or_global_scores_in_units_of_the_normal_images():
    from diffmine.apps.anomaly.patches import local_or_global, score_statistics

    # two normal images: maxima 2 and 4 (mean 3, sd 1), patch means 1 and 2 (mean 1.5, sd 0.5)
    normal = [np.array([0.5, 0.5, 1.0, 2.0]), np.array([1.0, 1.0, 2.0, 4.0])]
    np.testing.assert_allclose(score_statistics(normal, 1), [3.0, 1.0, 1.5, 0.5])
    stats = score_statistics(normal, 1)
    assert local_or_global(np.array([0.0, 0.0, 0.0, 9.0]), 1, stats) == pytest.approx(6.0)  # a spot: (9 - 3) / 1
    assert local_or_global(np.array([3.5, 3.5, 3.5, 3.5]), 1, stats) == pytest.approx(4.0)  # all a little: (3.5 - 1.5) / 0.5
    assert local_or_global(np.array([0.1, 0.1, 0.1, 3.0]), 1, stats) == pytest.approx(0.0)  # nearer than normal: max(0, -1.35)
    same = score_statistics([np.ones(4), np.ones(4)], 1)  # no spread: a tiny one, never a division by 0
    assert same[1] > 0 and same[3] > 0 and np.isfinite(local_or_global(np.full(4, 2.0), 1, same))


def test_top_k_or_mean_finds_a_texture_rescaled_over_the_whole_image(tmp_path):
    from sklearn.metrics import roc_auc_score

    # 256 px weaves in 64 px tiles: a rescaled weave's tiles each look like some normal tile, so its maximum
    # stays among the normal images' (measured: AUROC about 0.5), while every patch a little farther moves
    # the patch mean (0.89 with 16 normal images to fit)
    normal = np.stack([render(np.random.default_rng([8, i]), GOOD, "weave", 256)[0] for i in range(22)])
    rescaled = np.stack([render(np.random.default_rng([9, i]), "rescaled", "weave", 256)[0] for i in range(6)])
    hole = _plant_hole(normal[16], 100, 150)
    X, y = np.concatenate([normal[16:], rescaled, hole[None]]), np.array([0] * 6 + [1] * 6 + [1])
    det = DiffusionDetector(model="tiny", score="patches", batch_size=64, image_score="top-k-or-mean").fit(normal[:16])
    both = det.decision_function(X)
    assert roc_auc_score(y[:12], both[:12]) >= 0.85
    assert both[12] > both[:6].max()  # a hole still stands out
    maxima = det.set_params(image_score="top-k").decision_function(X)  # the same fit read with the maximum
    assert roc_auc_score(y[:12], maxima[:12]) < 0.7 and maxima[12] > maxima[:6].max()
    save_detector(det.set_params(image_score="top-k-or-mean"), tmp_path / "det")
    assert (tmp_path / "det" / SCORE_STATS_FILE).is_file()
    np.testing.assert_allclose(load_detector(tmp_path / "det").decision_function(X), both, rtol=1e-5)


# -- pixel metrics ------------------------------------------------------------------------------
def test_pro_known_value():
    """A 1 x 7 image: defect regions A = {0}, B = {2, 3} (one region), C = {5}; pixels 1, 4, 6 normal.

    Scores 0.9 .. 0.0 descending along the row, so the thresholds walk it left to right:
    (fpr, pro) = (0,0) (0,1/3) (1/3,1/3) (1/3,1/2) (1/3,2/3) (2/3,2/3) (2/3,1) (1,1).
    Up to FPR 0.3, PRO is 1/3 throughout -> normalised area 1/3. Up to 0.5:
    (1/3 x 1/3 + 2/3 x (0.5 - 1/3)) / 0.5 = 4/9.
    """
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.0]])[None]
    mask = np.array([[1, 0, 1, 1, 0, 1, 0]], bool)[None]
    fpr, pro = pro_curve(scores, mask)
    assert np.allclose(fpr, [0, 0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    assert np.allclose(pro, [0, 1 / 3, 1 / 3, 1 / 2, 2 / 3, 2 / 3, 1, 1])
    assert pro_score(scores, mask, 0.3) == pytest.approx(1 / 3)
    assert pro_score(scores, mask, 0.5) == pytest.approx(4 / 9)
    assert pro_score(-scores, mask, 0.3) == pytest.approx(0)  # inverted: no region pixel before fpr 1/3
    assert pixel_auroc(scores, mask) == pytest.approx(8 / 12)  # 8 of 12 (defect, normal) pairs in order
