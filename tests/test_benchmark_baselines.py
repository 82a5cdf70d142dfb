"""The baselines the benchmarks run beside diffmine: PCA reconstruction error, kNN on pixel patches, the
localisation thresholds of the baselines that use training boxes, logistic regression on pixels."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image


def test_pca_reconstruction_keeps_the_variance_rule_and_scores_off_subspace_points_higher():
    from benchmarks.anomaly_common import PCA_VARIANCE, pca_detector

    g = np.random.default_rng(0)
    basis = g.normal(size=(3, 20))
    normal = g.normal(size=(200, 3)) @ basis + 0.01 * g.normal(size=(200, 20))  # three directions hold the variance
    det = pca_detector()(contamination=0.1).fit(normal)
    assert det.n_components_ == 3 and det.pca_.explained_variance_ratio_.sum() >= PCA_VARIANCE
    inside = g.normal(size=(20, 3)) @ basis
    outside = inside + g.normal(size=(20, 20))
    assert det.decision_function(outside).min() > det.decision_function(inside).max()
    assert det.predict(outside).all() and not det.predict(inside).any()  # PyOD's threshold from the training scores
    assert abs(np.mean(det.labels_) - 0.1) < 0.02


def test_pixel_patchcore_is_the_detectors_and_knn_the_mean_distance_to_the_k_nearest():
    import faiss
    import torch

    from benchmarks.anomaly_defects import PIXEL_KNN_K, pixel_patch_scores
    from diffmine.apps.anomaly.detector import DiffusionDetector
    from diffmine.apps.anomaly.patches import random_subset
    from diffmine.core.inputs import ImageInput
    from diffmine.datasets.defects import GOOD, render

    imgs = np.stack([render(np.random.default_rng([3, i]), GOOD, "weave", 128)[0] for i in range(5)])
    spotted = imgs[4].copy()
    spotted[40:46, 90:96] = 255
    quick = dict(model="tiny", score="patches", patch_features="pixels", patch_size=8, tile_stride=64, coreset_ratio=0.5,
                 image_score="top-k")  # PatchCore's image score, the maximum
    test = np.stack([imgs[4], spotted])
    scores, maps = pixel_patch_scores(DiffusionDetector(**quick).fit(imgs[:1]), imgs[:4], test)
    # PatchCore: the detector's own scores and maps on the same images
    det = DiffusionDetector(**quick).fit(imgs[:4])
    assert np.allclose(scores["patchcore-pixels"], det.decision_function(test), rtol=1e-4)
    assert np.allclose(maps["patchcore-pixels"], det.anomaly_maps(test), rtol=1e-4, atol=1e-5)
    for name in scores:
        assert maps[name].shape == (2, 128, 128)
        assert scores[name][1] > 1.5 * scores[name][0]
        py, px = np.unravel_index(maps[name][1].argmax(), maps[name][1].shape)
        assert abs(py - 43) <= 8 and abs(px - 93) <= 8
    # kNN by hand: a random half of the training patches (coreset_ratio), the mean of the k nearest
    inp = ImageInput(imgs[:4])
    pool = torch.cat([v.reshape(-1, v.shape[-1]).half() for grp in det.groups(inp)
                      for v in det.kind.tile_patches(inp, grp)])
    bank = pool[torch.from_numpy(random_subset(len(pool), len(pool) // 2, int(det.seed)))].float().numpy()
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank))
    v = det.kind.tile_patches(ImageInput(imgs[4:5]), [0])[0]
    d2 = index.search(np.ascontiguousarray(v.reshape(-1, v.shape[-1]).numpy(), dtype=np.float32), PIXEL_KNN_K)[0]
    assert np.isclose(scores["knn-pixel-patches"][0], np.sqrt(np.maximum(d2, 0)).mean(axis=1).max(), rtol=1e-4)


def test_a_baselines_own_threshold_is_chosen_on_its_own_maps():
    from benchmarks.localize_synthetic import FIRST_THRESHOLD, choose_threshold, unit_range

    assert np.allclose(unit_range(np.full((4, 4), 3.0)), 0)
    assert unit_range(np.arange(4.0)).tolist() == [0, 1 / 3, 2 / 3, 1]
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    # a map peaked on the box with a plateau at 0.6 around it: only a threshold above 0.6 cuts the box out
    m = np.full((32, 32), 0.6)
    m[:4], m[8:16, 8:16] = 0.0, 1.0
    th, sweep = choose_threshold(None, [object()] * 3, [(m, mask)] * 3, "test")
    assert th > 0.6 and sweep[0]["threshold"] == FIRST_THRESHOLD
    assert [s["iobb_0.5"] for s in sweep if s["threshold"] == th] == [1.0]


def test_pixel_logistic_regression_chooses_c_by_cross_validation_on_training_images(tmp_path):
    from benchmarks.anomaly_classify_towns import LR_CS, pixel_logistic

    g = np.random.default_rng(0)

    def folder(name, n):
        (tmp_path / name / "images").mkdir(parents=True)
        rows = []
        for i in range(n):
            label = ["red", "blue"][i % 2]
            a = g.integers(0, 60, size=(64, 64, 3)).astype(np.uint8)
            a[20:40, 20:40, 0 if label == "red" else 2] = 250
            Image.fromarray(a).save(tmp_path / name / "images" / f"{name}_{i}.png")
            rows.append({"file_name": f"images/{name}_{i}.png", "label": label})
        (tmp_path / name / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    folder("train", 20)
    folder("test", 6)
    out = pixel_logistic(tmp_path / "train", tmp_path / "test", seed=0)
    assert out["C"] in LR_CS and [r["C"] for r in out["cv"]] == list(LR_CS) and out["n_train"] == 20
    assert [out["predictions"][f"images/test_{i}"][0] for i in range(6)] == ["red", "blue"] * 3
