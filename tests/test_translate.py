"""Translation (Plug-and-Play, SDEdit), on real tiny models and real files (consistent changes: test_changes.py)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmine.core.settings import ConfigError
from diffmine.core.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
TOWNS_MODEL = ROOT / "assets" / "tiny-towns-model"
FAST = dict(steps=5, inversion_steps=5, batch_size=4)  # random-weight runs: the structure, not the looks


# -- in memory, on the shipped towns model ---------------------------------------------------
@pytest.fixture(scope="module")
def towns():
    from diffmine.core.bundle import SDBundle
    from diffmine.core.images import to_tensor_array
    from diffmine.core.prompts import PromptTemplate
    from diffmine.datasets.towns import render_facade

    bundle = SDBundle.from_pretrained(TOWNS_MODEL).eval()
    rng = np.random.default_rng(123)
    labels = ["ashford", "brill"]
    x = torch.from_numpy(np.stack([to_tensor_array(render_facade(rng, t)[0]) for t in labels]))
    return bundle, PromptTemplate.load(TOWNS_MODEL), x, labels


def _translator(towns, **kw):
    from diffmine.apps.translate.translator import Translator

    bundle, prompts, _, _ = towns
    return Translator(bundle, prompts, **kw)


def test_inversion_then_sampling_returns_the_input(towns):
    # Measured on this model (50 steps, 2 facades): latent mean |diff| 0.030, max 0.22 (latent std 0.96);
    # decoded vs the VAE's own reconstruction: mean 0.008, max 0.15 on [-1, 1].
    bundle, prompts, x, labels = towns
    tr = _translator(towns, guidance=1.0, residual_injection=0, attention_injection=0)
    z0 = bundle.encode_images(x).float()
    traj = tr.invert(z0, [prompts.prompt(s) for s in labels])
    z = tr.sample(traj[tr.timesteps[0]], [prompts.prompt(s) for s in labels])
    assert (z - z0).abs().mean() < 0.05 and (z - z0).abs().max() < 0.35
    assert (traj[tr.timesteps[0]] - z0).abs().mean() > 0.5  # it really went to noise and back
    out = torch.stack([o[0] for o in tr.translate(x, ["a", "b"], labels, [[s] for s in labels])])
    vae = bundle.decode_latents(z0)
    assert (out - vae).abs().mean() < 0.015 and (out - vae).abs().max() < 0.25


def test_injection_changes_output_and_full_injection_reconstructs(towns):
    bundle, prompts, x, labels = towns
    unet = bundle.unet
    procs_before = {k: type(v) for k, v in unet.attn_processors.items()}
    targets = [["corran"], ["dunmore"]]
    vae = bundle.decode_latents(bundle.encode_images(x))
    runs = {name: torch.cat(_translator(towns, residual_injection=r, attention_injection=a).translate(
        x, ["a", "b"], labels, targets)) for name, r, a in (("none", 0, 0), ("pnp", None, None), ("all", 1, 1))}
    # measured: mean |translation - VAE reconstruction| 0.218 without injection, 0.165 with the defaults (the
    # tiny layout's up_blocks.1.resnets.0 residual branch for 70 % of the steps), 0.126 with all steps;
    # mean |pnp - none| 0.156
    assert (runs["pnp"] - runs["none"]).abs().mean() > 0.03
    far = {k: float((v - vae).abs().mean()) for k, v in runs.items()}
    assert far["all"] < far["pnp"] < far["none"]
    # same prompt, no guidance, injection over all steps: the reconstruction (the source branch is the
    # inverted latent, the target's own latent drifts from it by the inversion error; measured latent
    # mean |diff| 0.007, max 0.13, below the reconstruction's own error against the input)
    z0 = bundle.encode_images(x).float()
    rec = _translator(towns, guidance=1.0, residual_injection=0, attention_injection=0)
    traj = rec.invert(z0, [prompts.prompt(s) for s in labels])
    src = [prompts.prompt(s) for s in labels]
    z_rec = rec.sample(traj[rec.timesteps[0]], src)
    full = _translator(towns, guidance=1.0, residual_injection=1, attention_injection=1)
    z_full = full.sample(traj[full.timesteps[0]], src, traj, src, torch.arange(2))
    assert (z_full - z_rec).abs().mean() < 0.025 and (z_full - z_rec).abs().max() < 0.3
    assert (z_full - z_rec).abs().mean() < (z_rec - z0).abs().mean()
    # the scope left the UNet as it was: same processors, no hooks
    assert {k: type(v) for k, v in unet.attn_processors.items()} == procs_before
    assert not any(m._forward_hooks for m in unet.modules())


def test_seeded_and_independent_of_batch_size(towns):
    _, _, x, labels = towns
    targets = [["corran", "dunmore"], ["ashford", "corran"]]
    for method in ("pnp", "sdedit"):
        together = _translator(towns, method=method).translate(x, ["a", "b"], labels, targets)
        alone = [_translator(towns, method=method).translate(x[i:i + 1], [n], labels[i:i + 1], targets[i:i + 1])[0]
                 for i, n in enumerate("ab")]
        for t, a in zip(together, alone):
            assert t.shape == (2, 3, 64, 64)
            torch.testing.assert_close(t, a, rtol=0, atol=1e-3)  # measured max 1.3e-4 (a uint8 level is 7.8e-3)
    s0 = _translator(towns, method="sdedit", seed=0).translate(x[:1], ["a"], labels[:1], [["brill"]])[0]
    s0b = _translator(towns, method="sdedit", seed=0).translate(x[:1], ["a"], labels[:1], [["brill"]])[0]
    s1 = _translator(towns, method="sdedit", seed=1).translate(x[:1], ["a"], labels[:1], [["brill"]])[0]
    assert torch.equal(s0, s0b) and (s0 - s1).abs().mean() > 0.01


# -- the command: outputs, resume, processes ---------------------------------------------------
@pytest.fixture
def three_colors(tmp_path):
    from conftest import make_color_dataset

    return make_color_dataset(tmp_path / "data", n_per_label=2, labels=("red", "blue", "green"))


def _cfg(model, data, out, **kw):
    from diffmine.apps.translate.config import TranslateConfig

    return TranslateConfig(model=str(model), data=str(data), out=str(out), **{"to": "all", **FAST,
                                                                               "process_index": 0,
                                                                               "num_processes": 1, **kw})


def _pngs(out: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.rglob("*.png"))}


def test_to_all_outputs_resume_and_processes(tiny_model_dir, three_colors, tmp_path, monkeypatch):
    from diffmine.apps.translate import run as run_mod
    from diffmine.apps.translate.run import run_translate

    a = run_translate(_cfg(tiny_model_dir, three_colors, tmp_path / "a"), progress=False)
    rows = list(csv.DictReader(open(a / "translations.csv")))
    assert [r["image_id"] for r in rows] == [f"{lab}/img_{i:03d}" for lab in ("blue", "green", "red")
                                             for i in range(2) for _ in range(2)]
    assert all(r["target"] != r["source_label"] and r["method"] == "pnp" and (a / r["file"]).is_file() for r in rows)
    assert {(r["image_id"], r["target"]) for r in rows} == {
        (f"{s}/img_{i:03d}", t) for s in ("red", "green", "blue") for i in range(2)
        for t in ("red", "green", "blue") if t != s}
    pngs = _pngs(a)
    grids = [k for k in pngs if k.startswith("grids/")]
    assert len(grids) == 6 and all(pngs[g].shape[1] == 3 * (128 + 4) + 4 for g in grids)  # source + 2 targets, x4
    assert all(v.shape == (32, 32, 3) for k, v in pngs.items() if k.startswith("translations/"))
    html = (a / "index.html").read_text()
    assert html.count("<figure>") == 6 and all(g in html for g in grids)
    assert json.loads((a / "config.json").read_text())["to"] == "all"

    # killed after 5 files, then run again: the same outputs, finished files not redone
    calls = {"n": 0}
    real_save = run_mod.save_png

    def dying_save(path, pixels):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        real_save(path, pixels)

    monkeypatch.setattr(run_mod, "save_png", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_translate(_cfg(tiny_model_dir, three_colors, tmp_path / "b"), progress=False)
    monkeypatch.setattr(run_mod, "save_png", real_save)
    first = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*.png")}
    assert len(first) == 5 and not (tmp_path / "b" / "translations.csv").exists()
    run_translate(_cfg(tiny_model_dir, three_colors, tmp_path / "b"), progress=False)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    b = _pngs(tmp_path / "b")
    assert b.keys() == pngs.keys() and all(np.array_equal(b[k], pngs[k]) for k in pngs)
    assert (tmp_path / "b" / "translations.csv").read_text() == (a / "translations.csv").read_text()

    # two processes (images i::2) write what one does
    for i in range(2):
        run_translate(_cfg(tiny_model_dir, three_colors, tmp_path / "c", process_index=i, num_processes=2),
                      progress=False)
    run_translate(_cfg(tiny_model_dir, three_colors, tmp_path / "c"), progress=False)  # tables; nothing left to do
    c = _pngs(tmp_path / "c")
    assert c.keys() == pngs.keys() and all(np.array_equal(c[k], pngs[k]) for k in pngs)

    # other settings into the same folder are refused
    with pytest.raises(DataError, match="other settings \\(method"):
        run_translate(_cfg(tiny_model_dir, three_colors, a, method="sdedit"), progress=False)


def test_bad_input_one_line_each(tiny_model_dir, three_colors, tmp_path):
    from conftest import make_color_dataset
    from diffmine.apps.translate.run import run_translate

    def err(exc, **kw):
        with pytest.raises(exc) as e:
            run_translate(_cfg(tiny_model_dir, kw.pop("data", three_colors), tmp_path / "o", **kw), progress=False)
        assert "\n" not in str(e.value)
        return e.value

    e = err(ConfigError, to="purple")
    assert e.param == "to" and "blue, green, red" in str(e)
    one = make_color_dataset(tmp_path / "one", n_per_label=2, labels=("red",))
    assert "is the label of every image" in str(err(ConfigError, data=one, to="red"))
    assert "at least two labels" in str(err(ConfigError, data=one, to="all"))
    assert err(ConfigError, steps=0).param == "steps"
    assert err(ConfigError, steps=1001).param == "steps"
    assert err(ConfigError, strength=0.0, method="sdedit").param == "strength"
    assert err(ConfigError, strength=1.5, method="sdedit").param == "strength"
    assert err(ConfigError, strength=0.05, steps=10, method="sdedit").param == "strength"  # no step left
    assert err(ConfigError, inversion_steps=7).param == "inversion_steps"  # 5 sampling steps not among them
    assert err(ConfigError, inversion_steps=1000).param == "inversion_steps"  # would step past t = 999
    assert err(ConfigError, guidance=0.5).param == "guidance"
    assert not (tmp_path / "o").exists()  # all refused before any work


def test_labels_come_from_the_model(tmp_path):
    from conftest import make_color_dataset
    from diffmine.apps.translate.run import run_translate

    data = make_color_dataset(tmp_path / "d", n_per_label=1, size=64, labels=("red",))
    with pytest.raises(ConfigError, match="ashford, brill, corran, dunmore"):
        run_translate(_cfg(TOWNS_MODEL, data, tmp_path / "o", to="paris"), progress=False)


def test_unknown_layout_asks_for_a_mapping(tmp_path):
    from diffusers import UNet2DConditionModel

    from diffmine.apps.translate.layers import injection_layers

    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    with pytest.raises(DataError, match="no injection mapping for this UNet layout.*--layers FILE"):
        injection_layers(unet)
    mapping = tmp_path / "layers.json"
    mapping.write_text(json.dumps({"layouts": [{"name": "mine", "match": {"up_block_types": [
        "UpBlock2D", "CrossAttnUpBlock2D"]}, "residual": ["up_blocks.0.resnets.1"],
        "self_attention": ["up_blocks.1.attentions.0.transformer_blocks.0.attn1"]}]}))
    layers = injection_layers(unet, mapping)
    assert layers.name == "mine" and layers.residual == ("up_blocks.0.resnets.1",)
    assert (layers.residual_injection, layers.attention_injection) == (0.8, 0.5)  # named none: the published
    for bad, match in ((["up_blocks.9.resnets.0"], "does not have"),
                       (["up_blocks.1.attentions.0"], "is not a residual block")):
        mapping.write_text(json.dumps({"layouts": [{"name": "bad", "match": {}, "residual": bad,
                                                    "self_attention": []}]}))
        with pytest.raises(DataError, match=match):
            injection_layers(unet, mapping)
    mapping.write_text(json.dumps({"layouts": [{"name": "bad", "match": {}, "residual": [], "self_attention": [],
                                                "residual_injection": 1.5}]}))
    with pytest.raises(DataError, match=r"layers\.json: layout 'bad': residual_injection must be a share"):
        injection_layers(unet, mapping)


def test_injection_shares_come_from_the_layout_and_flags_override(towns):
    from diffmine.apps.translate.layers import injection_layers

    bundle = towns[0]
    layers = injection_layers(bundle.unet)
    assert layers.name == "diffmine-tiny" and (layers.residual_injection, layers.attention_injection) == (0.7, 0.5)
    tr = _translator(towns)
    assert (tr.residual_injection, tr.n_residual, tr.attention_injection, tr.n_attention) == (0.7, 35, 0.5, 25)
    tr = _translator(towns, residual_injection=0.8, steps=10)
    assert (tr.n_residual, tr.n_attention) == (8, 5)
    assert _translator(towns, method="sdedit").n_residual == 0
