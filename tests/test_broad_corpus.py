"""The broad corpus (deterministic, every domain with captions) and the broad assets recipe
(trains its VAE first, stops on time and resumes to the same weights)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from diffmine.datasets.broad import DOMAINS, PHOTOS, PHOTOS_HELDOUT, PROCEDURAL, digits_split, generate_broad

SMALL = {d: 16 for d in DOMAINS}


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_broad(tmp_path_factory.mktemp("broad") / "a", counts=SMALL, seed=3)


def test_corpus_is_deterministic(corpus, tmp_path):
    again = generate_broad(tmp_path / "b", counts=SMALL, seed=3)
    assert _digest(corpus) == _digest(again)
    other = generate_broad(tmp_path / "c", counts=SMALL, seed=4)
    assert _digest(other)["train/metadata.jsonl"] != _digest(corpus)["train/metadata.jsonl"] or \
        _digest(other) != _digest(corpus)


def test_corpus_has_every_domain_with_captions(corpus):
    from diffmine.core.dataset import LabeledImages

    rows = [json.loads(l) for l in (corpus / "train" / "metadata.jsonl").read_text().splitlines()]
    assert {r["domain"] for r in rows} == set(DOMAINS) and len(rows) == 16 * len(DOMAINS)
    by = {d: {r["label"] for r in rows if r["domain"] == d} for d in DOMAINS}
    assert by["towns"] == {"ashford", "brill", "corran", "dunmore"}
    assert all(c.startswith("digit ") for c in by["digits"]) and all(c.startswith("handwritten ") for c in by["mnist"])
    assert len(by["mnist"]) > 3  # not the subset's first class only
    assert all(c.startswith("photo of ") for c in by["photos"]) and len(by["photos"]) == 16
    assert not any(h.replace("_", " ") in c for h in PHOTOS_HELDOUT for c in by["photos"])
    assert by["procedural"] == set(PROCEDURAL)
    data = LabeledImages(corpus / "train")  # the project's loader reads it; radiograph findings are multi-label
    assert len(data) == len(rows) and "Nodule" in data.labels or "No Finding" in data.labels
    _, arrays = data.load_arrays(64, data.records[:8])
    assert arrays.shape == (8, 3, 64, 64)


def test_heldout_digits_and_photos_never_enter_the_corpus():
    train, test = digits_split()
    assert len(test) == 360 and not set(train) & set(test)
    assert not set(PHOTOS) & set(PHOTOS_HELDOUT)


@pytest.mark.slow
def test_broad_recipe_stops_in_vae_training_and_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from diffmine.apps.demo.run import AssetsConfig, build_assets

    kw = dict(data={"counts": {d: 2 for d in DOMAINS}}, vae_steps=3, max_steps=2, batch_size=4,
              samples_per_label=0, progress=False)
    # a deadline already past: one VAE step, a checkpoint, no model yet
    first = build_assets(AssetsConfig(out=str(tmp_path / "a"), work=str(tmp_path / "w"), recipe="broad",
                                      minutes=1e-6), **kw)
    assert first is None and not (tmp_path / "w" / "model_index.json").exists()
    (ckpt,) = (tmp_path / "w" / "cache").glob("vae-*.pt")
    assert torch.load(ckpt, weights_only=False)["step"] == 1
    model = build_assets(AssetsConfig(out=str(tmp_path / "a"), work=str(tmp_path / "w"), recipe="broad"), **kw)
    assert model == tmp_path / "a" / "tiny-broad-model"
    info = json.loads((model / "diffmine_train.json").read_text())
    assert info["steps"] == 2 and info["prompt"] == "{label}" and "photo of astronaut" in info["labels"]
    assert "reconstruction_psnr_db" in info and info["vae_adapted_steps"] == 3
    # the recipe's base: the fast autoencoder in place of the towns VAE, the UNet on its 16-channel latents
    from diffmine.core.autoencoders import FAST_LATENT_CHANNELS, family_of
    assert family_of(model).__name__ == "AutoencoderDC"
    unet = json.loads((model / "unet" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == FAST_LATENT_CHANNELS
    straight = build_assets(AssetsConfig(out=str(tmp_path / "b"), work=str(tmp_path / "w2"), recipe="broad"), **kw)
    a = load_file(model / "vae" / "diffusion_pytorch_model.safetensors")
    b = load_file(straight / "vae" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_planted_set_masks_mark_the_label_element(tmp_path):
    from diffmine.core.dataset import LabeledImages
    from diffmine.datasets.planted import LABELS, generate_planted
    from diffmine.evaluation.groundtruth import record_elements

    out = generate_planted(tmp_path / "p", n_train=2, n_test=1)
    assert _digest(out) == _digest(generate_planted(tmp_path / "q", n_train=2, n_test=1))
    test = LabeledImages(out / "test")
    assert test.labels == sorted(LABELS) and len(test) == 4
    for r in test:
        gt = record_elements(r, 64, test.root)
        own = gt.union(gt.characteristic([r.labels[0]]))
        assert gt.kinds[0] == r.labels[0] and 10 < own.sum() < 0.1 * 64 * 64  # small: about a fifth of the side
        assert len(gt.shared()) >= 2


def test_a_larger_planted_element_is_the_labels_only_and_the_default_set_is_the_recorded_one():
    """--element-size sizes the label's element alone; at the default the images are those every planted
    record measured (the first held-out ring image's pixels, hashed when the records were made)."""
    import numpy as np

    from diffmine.datasets.planted import ELEMENT_SIZE, render

    image, _, _ = render(np.random.default_rng([0, 1, 0, 0]), "ring")
    assert hashlib.sha256(np.asarray(image).tobytes()).hexdigest()[:16] == "dafa07109a05938c"
    for size in (ELEMENT_SIZE, 0.4):
        for i in range(8):
            _, _, elements = render(np.random.default_rng([0, 0, 3, i]), "tile", element_size=size)
            sides = [e["box"][2] - e["box"][0] for e in elements]
            assert 0.8 * 64 * size <= sides[0] <= 1.2 * 64 * size + 1  # the label's element
            assert all(0.8 * 64 * ELEMENT_SIZE <= s <= 1.2 * 64 * ELEMENT_SIZE + 1 for s in sides[1:])


def test_the_shipped_broad_base_keeps_images_the_towns_base_loses():
    """`tiny-broad` (make assets RECIPE=broad) on held-out shapes with thin outlines, a domain neither base
    trained on: its fast autoencoder keeps them (28.6 dB over 64 images in its record), the towns VAE
    does not (13.8 dB)."""
    from benchmarks.heldout_domains import heldout_images
    from diffmine.core.autoencoders import load_autoencoder
    from diffmine.core.models import resolve_model
    from diffmine.core.reconstruction import psnr_db, reconstruct

    _, images = heldout_images("shapes", 16, 64)
    psnr = {name: float(psnr_db(images, reconstruct(load_autoencoder(resolve_model(name)).eval(), images)).mean())
            for name in ("tiny", "tiny-broad")}
    assert psnr["tiny-broad"] >= 26 and psnr["tiny"] < 18, psnr
    folder = Path(resolve_model("tiny-broad"))
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 40e6  # the bound for a base
