"""The reconstruction guard on the real shipped tiny model: it warns on a domain the towns VAE cannot
reconstruct (sklearn digits), stays silent on towns, records its figure in each command's output
JSON, and leaves the command's own results bit for bit as they are."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_digits_folder
from diffmine.core.reconstruction import FLOOR_DB, ReconstructionWarning, sample_indices

# Measured on assets/tiny-towns-model (64 px, 32-image sample): towns test images 30.4 dB,
# sklearn digits 10.8 dB (smallest kept element ~11 px). The bounds leave wide margins.
TOWNS_ABOVE_DB = 27.0
DIGITS_BELOW_DB = 15.0
TOWN_LABELS = ("ashford", "brill")  # labels the tiny model knows, so every command accepts the folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits_folder(tmp_path_factory.mktemp("digits"), TOWN_LABELS)


@pytest.fixture(scope="module")
def towns(tmp_path_factory):
    from diffmine.datasets.towns import generate_towns

    return generate_towns(tmp_path_factory.mktemp("towns") / "t", n_train=1, n_test=3) / "test"


def _guard_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ReconstructionWarning)]


def _typicality(data, out, **kw):
    from typicality.engine import run_typicality

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = run_typicality(model="tiny", data=str(data), out=str(out), draws=2, batch_size=16, progress=False,
                               **kw)
    meta = json.loads((store / "manifest.json").read_text())["meta"]
    return meta, _guard_warnings(caught)


def test_sample_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    assert sample_indices(100) == sample_indices(100) and len(sample_indices(100)) == 32
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    assert torch.equal(torch.get_rng_state(), state[0]) and np.array_equal(np.random.get_state()[1], state[1])


def test_typicality_warns_on_digits_once_and_records_the_figure(digits, tmp_path):
    meta, messages = _typicality(digits, tmp_path / "typ")
    assert meta["reconstruction_psnr_db"] < DIGITS_BELOW_DB < FLOOR_DB
    assert meta["reconstruction_images"] == 12 and meta["reconstruction_resolution"] == 64
    assert "reconstruction_psnr_db" not in meta["map_keys"]  # recorded, not a resume key
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith(f"{digits}: the model reconstructs these images at ")
    assert f"(floor {FLOOR_DB:g} dB" in messages[0] and "use a larger base" in messages[0]
    assert f"smaller than about {meta['reconstruction_smallest_kept_px']:g} px are lost" in messages[0]


def test_typicality_is_silent_on_towns(towns, tmp_path):
    meta, messages = _typicality(towns, tmp_path / "typ")
    assert meta["reconstruction_psnr_db"] > TOWNS_ABOVE_DB > FLOOR_DB
    assert messages == []


def test_guard_leaves_the_maps_bit_identical(digits, tmp_path, monkeypatch):
    from typicality.store import read_manifests, load_shard

    def arrays(store):
        _, _, entries = read_manifests(store)
        return [load_shard(store / e["file"]) for e in sorted(entries, key=lambda e: e["file"])]

    _typicality(digits, tmp_path / "with")
    with_guard = arrays(tmp_path / "with")
    monkeypatch.setattr("typicality.engine.check_reconstruction", lambda *a, **k: {})
    from typicality.engine import run_typicality

    run_typicality(model="tiny", data=str(digits), out=str(tmp_path / "without"), draws=2, batch_size=16,
                   progress=False)
    without = arrays(tmp_path / "without")
    assert len(with_guard) == len(without) > 0
    for a, b in zip(with_guard, without):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_finetune_records_the_figure_in_its_run_info(digits, tmp_path):
    from finetune.config import TrainConfig
    from finetune.train import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train(TrainConfig(data=str(digits), out=str(tmp_path / "ft"), base="tiny", batch_size=2, max_steps=1,
                                samples_per_label=0, prompt="A facade in {label}.", adapt_vae="never"), progress=False)
    info = json.loads((out / "diffmine_train.json").read_text())
    assert info["reconstruction_psnr_db"] < DIGITS_BELOW_DB
    assert len(_guard_warnings(caught)) == 1


def test_anomaly_fit_and_translate_record_the_figure(digits, towns, tmp_path):
    from diffmine.apps.anomaly.config import AnomalyFitConfig
    from diffmine.apps.anomaly.run import fit_detector
    from diffmine.apps.translate.config import TranslateConfig
    from diffmine.apps.translate.run import run_translate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_detector(AnomalyFitConfig(data=str(digits), out=str(tmp_path / "det"), model="tiny", draws=1,
                                      batch_size=16), progress=False)
    det = json.loads((tmp_path / "det" / "detector.json").read_text())
    assert det["reconstruction_psnr_db"] < DIGITS_BELOW_DB and len(_guard_warnings(caught)) == 1

    one = tmp_path / "one" / "ashford"
    one.mkdir(parents=True)
    for p in sorted((towns / "images").glob("ashford_*.png"))[:1]:
        (one / p.name).write_bytes(p.read_bytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_translate(TranslateConfig(model="tiny", data=str(one.parent), out=str(tmp_path / "tr"), to="brill",
                                      method="sdedit", steps=2, strength=0.5), progress=False)
    meta = json.loads((tmp_path / "tr" / "translate.json").read_text())
    assert meta["reconstruction_psnr_db"] > TOWNS_ABOVE_DB and _guard_warnings(caught) == []


def test_cli_warning_is_one_line(digits, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "diffmine", "typicality", "--model", "tiny", "--data", str(digits),
                           "--out", str(tmp_path / "typ"), "--draws", "1"],
                          capture_output=True, text=True, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if "reconstructs these images" in l]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {digits}: the model reconstructs")
    assert not any("warnings.warn" in l for l in proc.stderr.splitlines())
