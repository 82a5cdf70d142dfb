"""Anomaly detector (PyOD/scikit-learn contract), score kinds, detector folder, classify and audit.

Real models: the shipped towns model (64 px, trained on four towns) for anything that needs a
model that knows its data, the random tiny model for plumbing (finetuning, folders).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffmine.apps.classify.run import predictions
from diffmine.apps.classify.audit import audit_margins
from diffmine.apps.anomaly.config import AnomalyFitConfig, AnomalyScoreConfig
from diffmine.apps.classify.config import ClassifyConfig
from diffmine.apps.anomaly.detector import DiffusionDetector
from diffmine.core.models import SMALL_BASE_DIR as TINY_BASE
from diffmine.apps.anomaly.folder import DETECTOR_FILE, load_detector
from diffmine.apps.anomaly.run import fit_detector, score_images
from diffmine.core.settings import ConfigError
from diffmine.core.errors import DataError

TOWNS_MODEL = TINY_BASE


@pytest.fixture(scope="module")
def towns(tmp_path_factory):
    from diffmine.datasets.towns import generate_towns

    return generate_towns(tmp_path_factory.mktemp("towns") / "towns", n_train=1, n_test=6, seed=3)


def _images(towns: Path, town: str) -> np.ndarray:
    """The held-out images of one town (towns data: test/images/<town>_test_NNNN.png + metadata)."""
    files = sorted((towns / "test" / "images").glob(f"{town}_test_*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


@pytest.fixture(scope="module")
def normals_and_anomaly(towns):
    """Six ashford facades (normal) and, planted last, a dunmore facade and a noise image (anomalies)."""
    normal = _images(towns, "ashford")
    other = _images(towns, "dunmore")[:1]
    noise = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    return normal, other, noise


@pytest.fixture(scope="module")
def fitted(normals_and_anomaly):
    normal, _, _ = normals_and_anomaly
    return DiffusionDetector(model=str(TOWNS_MODEL), score="reconstruction", draws=4, contamination=0.2).fit(normal[:5])


# -- the PyOD / scikit-learn contract -------------------------------------------------------
def test_clone_and_params_round_trip():
    from sklearn.base import clone

    det = DiffusionDetector(model="m", score="trajectory", contamination=0.05, draws=3, t_range=(0.2, 0.5))
    params = det.get_params()
    assert params["score"] == "trajectory" and params["t_range"] == (0.2, 0.5) and params["contamination"] == 0.05
    twin = clone(det)
    assert twin is not det and twin.get_params() == params
    twin.set_params(draws=7, score="reconstruction")
    assert twin.draws == 7 and twin.score == "reconstruction" and det.draws == 3


def test_pyod_contract(fitted, normals_and_anomaly):
    from pyod.models.base import BaseDetector

    normal, other, noise = normals_and_anomaly
    det = fitted
    assert isinstance(det, BaseDetector)
    assert det.decision_scores_.shape == (5,) and det.labels_.shape == (5,)
    # PyOD's rule: the threshold is the training scores' (1 - contamination) quantile; labels_ follow it
    assert det.threshold_ == pytest.approx(np.percentile(det.decision_scores_, 80))
    assert np.array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    X = np.concatenate([normal, noise])
    scores = det.decision_function(X)
    assert scores.shape == (7,) and np.isfinite(scores).all()
    assert np.allclose(scores[:5], det.decision_scores_, rtol=1e-6)  # same images, same seeded draws
    pred = det.predict(X)
    assert pred.shape == (7,) and np.array_equal(pred, (scores > det.threshold_).astype(int))
    pred2, conf = det.predict(X, return_confidence=True)
    assert np.array_equal(pred, pred2) and conf.shape == (7,) and ((conf >= 0) & (conf <= 1)).all()
    for method in ("linear", "unify"):
        proba = det.predict_proba(X, method=method)
        assert proba.shape == (7, 2) and ((proba >= 0) & (proba <= 1)).all()
        assert np.allclose(proba.sum(axis=1), 1)
    assert det.predict_proba(X)[-1, 1] == 1.0  # the noise image scores above every training image
    maps = det.anomaly_maps(X[:2])
    assert maps.shape == (2, 64, 64)
    assert np.allclose(maps.mean(axis=(1, 2)), scores[:2], rtol=1e-4)  # the score is the map's mean


def test_paths_give_the_same_scores_as_arrays(fitted, towns, normals_and_anomaly):
    paths = sorted((towns / "test" / "images").glob("ashford_test_*.png"))[:2]
    assert np.allclose(fitted.decision_function([str(p) for p in paths]),
                       fitted.decision_function(normals_and_anomaly[0][:2]), rtol=1e-5)
    assert fitted.predict_proba([str(p) for p in paths]).shape == (2, 2)


def test_pyod_utilities_accept_it(fitted, normals_and_anomaly):
    """PyOD's own helpers work on its scores (pyod.models.combination needs the `combo` package)."""
    from pyod.utils.utility import get_label_n, standardizer

    normal, _, noise = normals_and_anomaly
    s = fitted.decision_function(np.concatenate([normal, noise]))
    assert get_label_n(np.zeros(7), s, n=1).tolist() == [0] * 6 + [1]
    assert standardizer(s[:, None]).argmax() == 6


# -- every score kind ranks a planted anomaly above the normals -------------------------------
@pytest.mark.parametrize("kind, anomaly", [("reconstruction", "noise"), ("trajectory", "noise"),
                                           ("atypicality", "other")])
def test_planted_anomaly_ranks_first(kind, anomaly, normals_and_anomaly):
    normal, other, noise = normals_and_anomaly
    det = DiffusionDetector(model=str(TOWNS_MODEL), score=kind, normal_label="ashford", draws=8 if kind != "trajectory" else 1,
                            trajectory_steps=4).fit(normal[:3])
    planted = other if anomaly == "other" else noise
    scores = det.decision_function(np.concatenate([normal[3:], planted]))
    assert scores.argmax() == len(scores) - 1, scores


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's real 8x8 handwritten digits, in [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x.reshape(-1, 8, 8) / 16.0).astype(np.float32), y


def test_features_kind_ranks_other_digits_first(digits):
    """DIFT features + kNN, fitted on ten zeros: two ones score above three held-back zeros;
    training scores are leave-one-out (not 0 for the image itself); a one's map is hotter."""
    x, y = digits
    zeros, ones = x[y == 0], x[y == 1]
    det = DiffusionDetector(model="tiny", score="features", resolution=32, n_neighbors=1).fit(zeros[:10])
    assert det.train_features_.shape[0] == 10 and np.allclose(np.linalg.norm(det.train_features_, axis=1), 1)
    assert (det.decision_scores_ > 0.01).all()
    scores = det.decision_function(np.concatenate([zeros[10:13], ones[:2]]))
    assert set(np.argsort(scores)[-2:]) == {3, 4}, scores
    maps = det.anomaly_maps(np.concatenate([zeros[10:11], ones[:1]]))
    assert maps.shape == (2, 32, 32) and maps[1].mean() > maps[0].mean()
    with pytest.raises(ConfigError, match="n_neighbors"):
        DiffusionDetector(model="tiny", score="features").fit(zeros[:5])  # k = 5 needs more than 5 images


def test_each_score_kind_is_a_class_and_the_checks_are_declared_once():
    """KINDS holds a class per score kind; config and detector check by one sklearn-style declaration."""
    from sklearn.utils._param_validation import validate_parameter_constraints

    from diffmine.apps.anomaly.config import SCORES
    from diffmine.apps.anomaly.kinds import KINDS

    assert tuple(KINDS) == SCORES and all(KINDS[s].name == s for s in SCORES)
    det = DiffusionDetector(model="tiny")
    assert set(det._parameter_constraints) <= set(det.get_params())
    validate_parameter_constraints(det._parameter_constraints, det.get_params(), "DiffusionDetector")  # defaults
    for bad in (dict(draws=0), dict(patch_pool=2), dict(t_range=(0.5, 0.2)), dict(coreset_ratio=0),
                dict(score="nope"), dict(resolution=4)):
        with pytest.raises(ConfigError) as by_config:
            AnomalyFitConfig(data="d", out="o", model="tiny", **bad).validate()
        with pytest.raises(ConfigError) as by_detector:
            DiffusionDetector(model="tiny", **bad).fit(np.zeros((2, 8, 8), np.uint8))
        assert str(by_config.value) == str(by_detector.value) and by_config.value.param == next(iter(bad))


# -- bad input --------------------------------------------------------------------------------
def test_bad_settings_name_their_field(normals_and_anomaly, tmp_path):
    normal = normals_and_anomaly[0]
    with pytest.raises(ConfigError, match="contamination"):
        DiffusionDetector(model=str(TOWNS_MODEL), contamination=0.6).fit(normal)
    with pytest.raises(ConfigError, match="contamination"):
        AnomalyFitConfig(data="d", out="o", model="m", contamination=0.0).validate()
    with pytest.raises(ConfigError, match="model"):
        AnomalyFitConfig(data="d", out="o").validate()
    with pytest.raises(ConfigError, match="normal_label"):
        DiffusionDetector(model=str(TOWNS_MODEL), score="atypicality").fit(normal)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        fit_detector(AnomalyFitConfig(data=str(tmp_path / "empty"), out=str(tmp_path / "det"), model=str(TOWNS_MODEL)))
    with pytest.raises(DataError, match="float images must be in"):
        DiffusionDetector(model=str(TOWNS_MODEL)).fit(np.full((2, 8, 8), 16.0))


def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"img_{i:03d}.png")
    return folder


# -- fit -> folder -> score ---------------------------------------------------------------------
def test_fit_score_round_trip(normals_and_anomaly, tmp_path):
    normal, other, noise = normals_and_anomaly
    train = _write_pngs(tmp_path / "normal", normal[:4])
    test = _write_pngs(tmp_path / "test", np.concatenate([normal[4:], noise]))
    det = fit_detector(AnomalyFitConfig(data=str(train), out=str(tmp_path / "det"), model=str(TOWNS_MODEL),
                                        draws=4, contamination=0.25), progress=False)
    info = json.loads((tmp_path / "det" / DETECTOR_FILE).read_text())
    assert info["geometry"] == [64, 64, 3] and info["threshold"] == pytest.approx(det.threshold_)
    assert (tmp_path / "det" / "config.json").exists()
    out = score_images(AnomalyScoreConfig(detector=str(tmp_path / "det"), data=str(test),
                                          out=str(tmp_path / "scores.csv"), maps=str(tmp_path / "maps")), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert [r["image_id"] for r in rows] == ["img_000", "img_001", "img_002"]
    expected = det.decision_function(np.concatenate([normal[4:], noise]))
    assert np.allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)
    assert rows[2]["outlier"] == "1" and out["outliers"] >= 1
    assert len(list((tmp_path / "maps").glob("*.png"))) == 3

    # images of another size, a folder from another version, a missing folder: one line each
    _write_pngs(tmp_path / "small", normal[:1, :32, :32])
    with pytest.raises(DataError, match="fitted on 64x64 with 3 channel"):
        score_images(AnomalyScoreConfig(detector=str(tmp_path / "det"), data=str(tmp_path / "small"),
                                        out=str(tmp_path / "s2.csv")), progress=False)
    info["version"] = 99
    (tmp_path / "det" / DETECTOR_FILE).write_text(json.dumps(info))
    with pytest.raises(DataError, match="version 99"):
        load_detector(tmp_path / "det")
    with pytest.raises(DataError, match="not a detector folder"):
        load_detector(tmp_path / "nothing")
    assert not (tmp_path / "s2.csv").exists()


def test_features_detector_folder_round_trip(digits, tmp_path):
    x, y = digits
    u8 = np.round(x * 255).astype(np.uint8)
    train = _write_pngs(tmp_path / "normal", u8[y == 3][:6])
    det = fit_detector(AnomalyFitConfig(data=str(train), out=str(tmp_path / "det"), model="tiny",
                                        score="features", n_neighbors=2, resolution=32), progress=False)
    again = load_detector(tmp_path / "det")
    test = np.concatenate([u8[y == 3][6:8], u8[y == 7][:2]])
    assert np.allclose(again.decision_function(test), det.decision_function(test), rtol=1e-5)
    assert again.threshold_ == pytest.approx(det.threshold_)
    (tmp_path / "det" / "features.npy").unlink()
    with pytest.raises(DataError, match="features.npy"):
        load_detector(tmp_path / "det")


def test_fit_with_base_finetunes_and_keeps_the_model(tiny_model_dir, tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)  # grey images: repeated to RGB
    train = tmp_path / "normal"
    train.mkdir()
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(train / f"{i}.png")
    det = fit_detector(AnomalyFitConfig(data=str(train), out=str(tmp_path / "det"), base=str(tiny_model_dir),
                                        finetune_steps=2, finetune_batch=2, draws=2), progress=False)
    assert (tmp_path / "det" / "model" / "unet").is_dir() and not (tmp_path / "det" / "data").exists()
    assert json.loads((tmp_path / "det" / "model" / "diffmine_train.json").read_text())["labels"] == ["normal"]
    again = load_detector(tmp_path / "det")
    assert again.geometry_ == (32, 32, 1)
    assert np.allclose(again.decision_function(imgs), det.decision_scores_, rtol=1e-5)


# -- classify and the audit ---------------------------------------------------------------------
def test_predictions_and_margins_known_values():
    scores = np.array([[1.0, 3.0, 2.0], [0.5, -1.0, 0.0]])
    counts = np.array([[8, 40, 40], [40, 8, 40]])  # finalists: labels 1, 2 / labels 0, 2
    pred, margin = predictions(scores, counts)
    assert pred.tolist() == [1, 0] and np.allclose(margin, [1.0, 0.5])
    m, s = audit_margins(scores, np.array([2, 0]))
    assert s.tolist() == [1, 2] and np.allclose(m, [1.0, -0.5])


def test_classify_towns_known_answer(towns, tmp_path):
    from diffmine.apps.classify.run import run_classify

    data = tmp_path / "data"
    for town in ("ashford", "dunmore"):  # two towns, 3 images each, one of them given the wrong label
        _write_pngs(data / town, _images(towns, town)[:3])
    (data / "ashford" / "img_002.png").rename(data / "dunmore" / "flipped.png")
    res = run_classify(ClassifyConfig(model=str(TOWNS_MODEL), data=str(data), out=str(tmp_path / "cls"),
                                      draws=8, first_draws=4, keep=2), progress=False)
    rows = {r["image_id"]: r for r in csv.DictReader(open(tmp_path / "cls" / "predictions.csv"))}
    assert rows["dunmore/flipped"]["predicted"] == "ashford"  # an ashford facade, whatever its folder says
    assert rows["ashford/img_000"]["predicted"] == "ashford" and rows["dunmore/img_000"]["predicted"] == "dunmore"
    right = [r["label"] == r["predicted"] for r in rows.values()]
    assert res["accuracy"] == pytest.approx(np.mean(right)) and res["accuracy"] <= 5 / 6
    conf = np.array(res["confusion"]["matrix"])
    assert conf.sum() == 6 and np.trace(conf) == sum(right) and conf[3, 0] >= 1  # dunmore row, ashford column
    audit = list(csv.DictReader(open(tmp_path / "cls" / "audit.csv")))
    assert audit[0]["image_id"] == "dunmore/flipped" and audit[0]["suspected"] == "ashford"
    assert "dunmore/flipped" in (tmp_path / "cls" / "audit.html").read_text()
    assert res["unet_rows_per_image"] == 4 * 5 + 8 * 3


# -- runtime: --model tiny, split over processes, resume after a kill, DICOM, PyOD optional -----------
ROOT = Path(__file__).resolve().parents[1]
ENV = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture
def tiny_detector(tmp_path):
    """A reconstruction detector on the shipped model ('tiny'): 2 draws, 2 images (4 rows) a group."""
    rng = np.random.default_rng(0)
    train = _write_pngs(tmp_path / "normal", rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8))
    test = _write_pngs(tmp_path / "test", rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8))
    fit_detector(AnomalyFitConfig(data=str(train), out=str(tmp_path / "det"), model="tiny", draws=2, batch_size=4,
                                  device="cpu", dtype="fp32"), progress=False)
    return tmp_path / "det", test


def _score_cfg(det, test, out: Path, **kw) -> AnomalyScoreConfig:
    return AnomalyScoreConfig(detector=str(det), data=str(test), out=str(out / "scores.csv"), maps=str(out / "maps"),
                              **kw)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_score_simulated_split_and_kill_resume(tiny_detector, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from dataclasses import asdict

    det, test = tiny_detector
    one = score_images(_score_cfg(det, test, tmp_path / "one", process_index=0, num_processes=1), progress=False)
    assert one["images"] == 6 and not list((tmp_path / "one").glob(".*partial"))
    reference = _files(tmp_path / "one")
    out = tmp_path / "split"
    for rank in (0, 1):  # simulated processes: no barrier, so neither writes the files
        assert score_images(_score_cfg(det, test, out, process_index=rank, num_processes=2), progress=False) is None
    assert not (out / "scores.csv").exists() and len(list(out.rglob("part-*"))) == 3
    calls = []
    score_images(_score_cfg(det, test, out, process_index=0, num_processes=1), progress=False, on_group=calls.append)
    assert calls == [] and not list(out.glob(".*partial"))
    got = _files(out)
    assert got.keys() == reference.keys() and all(got[k] == reference[k] for k in got if "config" not in k)

    # killed after its first group, then started again: only the two missing groups are scored
    out = tmp_path / "killed"
    cfg = _score_cfg(det, test, out, process_index=0, num_processes=1)
    script = ("import os, signal, json\nfrom diffmine.core import partial\n"
              "from diffmine.apps.anomaly.config import AnomalyScoreConfig\n"
              "from diffmine.apps.anomaly.run import score_images\n"
              "add = partial.PartialResults.add\nn = [0]\n"
              "def dying(self, results):\n    n[0] += 1\n    if n[0] == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return add(self, results)\n"
              "partial.PartialResults.add = dying\n"
              f"score_images(AnomalyScoreConfig(**json.loads({json.dumps(json.dumps(asdict(cfg)))})), progress=False)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list(out.rglob("part-*"))) == 1 and not (out / "scores.csv").exists()
    calls = []
    score_images(cfg, progress=False, on_group=calls.append)
    assert len(calls) == 2
    got = _files(out)
    assert got.keys() == reference.keys() and all(got[k] == reference[k] for k in got if "config" not in k)
    assert os.path.isfile(out / "scores.config.json")


@pytest.mark.slow
def test_score_accelerate_launch_two_processes(tiny_detector, tmp_path):
    import subprocess
    import sys

    det, test = tiny_detector
    out = tmp_path / "launched"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffmine",
           "anomaly", "score", "--detector", str(det), "--data", str(test), "--out", str(out / "scores.csv"),
           "--maps", str(out / "maps")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scores in") == 1  # the main process wrote and said so
    score_images(_score_cfg(det, test, tmp_path / "one", process_index=0, num_processes=1), progress=False)
    a, b = _files(out), _files(tmp_path / "one")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a if "config" not in k)


def test_dicom_folder_fit_and_score(tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    from diffmine.core.inputs import ImageInput

    folder = tmp_path / "ct"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(get_testdata_file("CT_small.dcm"), folder / f"{name}.dcm")
    assert ImageInput(folder).geometry == (128, 128, 1)
    det = fit_detector(AnomalyFitConfig(data=str(folder), out=str(tmp_path / "det"), model="tiny", draws=2,
                                        contamination=0.5), progress=False)
    assert det.geometry_ == (128, 128, 1) and len(det.decision_scores_) == 3
    res = score_images(AnomalyScoreConfig(detector=str(tmp_path / "det"), data=str(folder),
                                          out=str(tmp_path / "scores.csv"), process_index=0, num_processes=1),
                       progress=False)
    rows = list(csv.DictReader(open(res["csv"])))
    assert [r["image_id"] for r in rows] == ["a", "b", "c"]
    assert np.allclose([float(r["score"]) for r in rows], det.decision_scores_, rtol=1e-5)  # the same image thrice


def test_commands_start_without_pyod(tmp_path):
    """PyOD is the anomaly extra: without it every other command starts, and `anomaly` says what to install."""
    import subprocess
    import sys

    script = ("import sys\nsys.modules['pyod'] = None\nfrom diffmine.cli import build_parser, main\n"
              "try:\n    build_parser().parse_args(['finetune', '--help'])\nexcept SystemExit as e:\n"
              "    print('help exit', e.code)\n"
              f"rc = main(['anomaly', 'fit', '--data', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}, "
              "'--model', 'tiny'])\nprint('rc', rc)\n"
              "print('imported', sorted(m for m in sys.modules if m.startswith('pyod.')))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "help exit 0" in proc.stdout and "rc 2" in proc.stdout and "imported []" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "diffmine anomaly: error: PyOD is not installed; install the anomaly extra: pip install -e .[anomaly]"]
