"""The typicality engine: formula, draw schedule, batched loop, sharded store, resume, processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffmine.core.bundle import SDBundle
from diffmine.core.errors import DataError
from diffmine.core.seeds import stable_seed
from typicality.draws import make_draws, sample_timesteps
from typicality.engine import TypicalityEstimator, run_typicality
from typicality.formula import error_map, noisy_latents, to_epsilon, upsample
from typicality.store import TypicalityStore, merge_manifests

ROOT = Path(__file__).resolve().parents[1]
DRAWS = 8  # enough to exercise batching; the maths does not depend on it


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32))


def _maps(store: TypicalityStore) -> dict:
    return {(i, lab): (store.latent_map(i, lab), *store.error_maps(i, lab)) for i, lab in store.pairs()}


def _assert_same_maps(a: TypicalityStore, b: TypicalityStore, atol: float = 1e-5) -> None:
    assert a.image_ids == b.image_ids and a.labels == b.labels and a.pairs() == b.pairs()
    ma, mb = _maps(a), _maps(b)
    for key in ma:
        for x, y in zip(ma[key], mb[key]):
            np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=str(key))


def _run(model, data, out, **kw):
    kw = {"draws": DRAWS, "progress": False, "process_index": 0, "num_processes": 1, **kw}
    progress = kw.pop("progress")
    run_kw = {k: kw.pop(k) for k in ("process_index", "num_processes", "on_image") if k in kw}
    return run_typicality(model=str(model), data=str(data), out=str(out), progress=progress, **run_kw, **kw)


# -- draws and formula ------------------------------------------------------------------------
def test_seed_is_stable_and_per_image():
    # sha256-derived: the same in every process and Python session (hash() is salted per process).
    assert stable_seed(0, "draws", "a/b") == int.from_bytes(
        __import__("hashlib").sha256(b"0\x00draws\x00a/b").digest()[:8], "little") & (2**63 - 1)
    a, b = make_draws(10, (4, 8, 8), 0, "img1"), make_draws(10, (4, 8, 8), 0, "img1")
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.noise, b.noise)
    c = make_draws(10, (4, 8, 8), 0, "img2")
    assert not torch.equal(a.noise, c.noise)
    assert not torch.equal(a.noise, make_draws(10, (4, 8, 8), 1, "img1").noise)


def test_stratified_timesteps_one_per_stratum():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(60, (0.1, 0.7), 1000, "stratified", g)
    assert t.min() >= 100 and t.max() < 700
    assert torch.equal(torch.div(t - 100, 10, rounding_mode="floor"), torch.arange(60))  # stratum width 600/60
    u = sample_timesteps(1000, (0.1, 0.7), 1000, "uniform", g)
    assert u.min() >= 100 and u.max() < 700 and len(u.unique()) > 400


def test_antithetic_pairs_share_t_and_negate_noise():
    d = make_draws(6, (4, 2, 2), 0, "x", antithetic=True)
    assert torch.equal(d.timesteps[0::2], d.timesteps[1::2])
    assert torch.equal(d.noise[0::2], -d.noise[1::2])
    assert len(make_draws(5, (4, 2, 2), 0, "x", antithetic=True)) == 5


def test_formula_signs_and_prediction_types():
    eps = torch.randn(3, 4, 5, 5)
    en, ec = error_map(eps, torch.zeros_like(eps)), error_map(eps, eps)  # the label predicts eps exactly
    diff = en - ec
    assert diff.shape == (3, 5, 5) and torch.all(diff > 0) and torch.allclose(ec, torch.zeros(3, 5, 5))
    torch.testing.assert_close(diff, eps.square().mean(1))
    z0, ab = torch.randn(3, 4, 5, 5), torch.tensor([0.9, 0.5, 0.1])
    zt = noisy_latents(z0, eps, ab)
    v = ab.sqrt().view(-1, 1, 1, 1) * eps - (1 - ab).sqrt().view(-1, 1, 1, 1) * z0
    torch.testing.assert_close(to_epsilon(v, zt, ab, "v_prediction"), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(to_epsilon(z0, zt, ab, "sample"), eps, atol=1e-4, rtol=1e-4)


def _bilinear_reference(m: np.ndarray, H: int, W: int) -> np.ndarray:
    """Independent numpy bilinear resize, pixel centres aligned (align_corners=False)."""
    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    y0, y1, fy = axis(m.shape[0], H)
    x0, x1, fx = axis(m.shape[1], W)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bot = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


def test_upsample_non_square():
    m = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    for size in [(40, 24), (24, 40), (33, 17), (8, 6)]:
        got = upsample(torch.from_numpy(m), size).numpy()
        assert got.shape == size
        np.testing.assert_allclose(got, _bilinear_reference(m, *size), atol=1e-5)
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))  # a horizontal ramp stays a ramp, flat vertically
    up = upsample(torch.from_numpy(ramp), (16, 64)).numpy()
    assert np.allclose(up, up[0]) and np.all(np.diff(up[0]) >= 0)


# -- a model whose label provably helps in a known region ------------------------------------
class LabelOracleUNet(torch.nn.Module):
    """The real tiny UNet, plus knowledge the label prompt brings in a known region.

    Every row gets the UNet's null-prompt prediction; rows carrying any other prompt are given,
    inside `region`, the exact noise (the label 'tells' the image there). So for any draw
    err_cond = 0 in the region and err_cond = err_null outside: T > 0 exactly in the region, 0 elsewhere.
    """

    def __init__(self, unet, null_emb: torch.Tensor, z0: torch.Tensor, alphas_cumprod: torch.Tensor,
                 region: torch.Tensor):
        super().__init__()
        self.unet, self.null_emb, self.z0, self.ac, self.region = unet, null_emb, z0, alphas_cumprod, region

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, z_t, t, encoder_hidden_states, return_dict=True):
        base = self.unet(z_t, t, encoder_hidden_states=self.null_emb.expand(len(z_t), -1, -1)).sample
        ab = self.ac[t].view(-1, 1, 1, 1)
        exact = (z_t - ab.sqrt() * self.z0) / (1 - ab).sqrt()
        labelled = (encoder_hidden_states - self.null_emb).abs().amax(dim=(1, 2)) > 0
        return (torch.where(labelled.view(-1, 1, 1, 1) & self.region, exact, base),)


def test_typicality_positive_exactly_where_the_label_helps(tiny_bundle):
    b = tiny_bundle
    est = TypicalityEstimator(b, draws=12, batch_size=5)  # 5 rows: draws split across forwards
    image = _images(1)
    z0 = est.encode(image, ["x"])
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:5, 1:7] = True
    oracle = LabelOracleUNet(b.unet, b.encode_prompts([""]), z0, b.scheduler.alphas_cumprod, region)
    est.bundle = SDBundle(b.tokenizer, b.text_encoder, b.vae, oracle, b.scheduler)
    (res,) = est.estimate(image, ["x"], [["red"]])
    diff, en, ec = res.diff[0], res.err_null, res.err_cond[0]
    r = region.numpy()
    assert np.all(diff[r] > 0.05), "the label helps: typicality must be positive there"
    np.testing.assert_allclose(diff[~r], 0, atol=1e-5)  # and zero where it brings nothing
    np.testing.assert_allclose(ec[r], 0, atol=1e-4)
    np.testing.assert_allclose(diff, en - ec, atol=1e-5)


@pytest.mark.slow
def test_trained_model_typicality_peaks_where_the_label_decides():
    """Train a real tiny UNet briefly: the left half of each image is its label's colour, the right
    half noise shared by both labels. The label helps (T > 0) on the left, much less on the right,
    and the other label hurts (T < 0)."""
    from diffmine.core.tiny import build_tiny_bundle

    b = build_tiny_bundle(resolution=32, unet_channels=(32, 32, 64)).eval()
    rng = np.random.default_rng(0)

    def make(n, rgb):
        x = rng.uniform(-0.3, 0.3, (n, 3, 32, 32)).astype(np.float32)
        x[:, :, :, :16] = np.array(rgb, np.float32)[None, :, None, None]
        return torch.from_numpy(x)

    red, blue = make(64, (0.9, -0.8, -0.8)), make(64, (-0.8, -0.8, 0.9))
    # High noise levels, where the noisy image no longer tells the colour and the label does.
    est = TypicalityEstimator(b, draws=40, batch_size=80, t_range=(0.5, 1.0))
    ids = [str(i) for i in range(128)]
    z = est.encode(torch.cat([red, blue]), ids)
    b.vae.register_to_config(scaling_factor=b.vae.config.scaling_factor / float(z.std()))  # unit-variance latents
    z = est.encode(torch.cat([red, blue]), ids)
    emb = b.encode_prompts(["", "red", "blue"])
    labels = torch.tensor([1] * 64 + [2] * 64)
    unet = b.unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    ac = b.scheduler.alphas_cumprod
    for _ in range(300):  # a minimal finetuning loop: eps-MSE with 30 % null prompts (docs/method.md §1)
        idx = torch.randint(0, 128, (24,), generator=g)
        t = torch.randint(500, 1000, (24,), generator=g)
        eps = torch.randn(24, 4, 8, 8, generator=g)
        p = torch.where(torch.rand(24, generator=g) < 0.3, 0, labels[idx])
        loss = (unet(noisy_latents(z[idx], eps, ac[t]), t, encoder_hidden_states=emb[p]).sample - eps).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    unet.eval().requires_grad_(False)
    test_ids = [f"r{i}" for i in range(4)] + [f"b{i}" for i in range(4)]
    own = est.estimate(torch.cat([red[:4], blue[:4]]), test_ids, [["red"]] * 4 + [["blue"]] * 4)
    left = np.array([r.diff[0][:, :3].mean() for r in own])  # latent columns 0-2: the label's colour
    right = np.array([r.diff[0][:, 5:].mean() for r in own])  # 5-7: shared noise, clear of the border
    assert np.all(left > 0) and left.mean() > 2 * right.mean(), (left, right)
    wrong = est.estimate(red[:4], test_ids[:4], [["blue"]] * 4)
    wrong_left = np.array([r.diff[0][:, :3].mean() for r in wrong])
    assert np.all(wrong_left < 0) and wrong_left.mean() < -left.mean(), wrong_left


# -- invariance -------------------------------------------------------------------------------
def test_maps_do_not_depend_on_batch_size_or_order(tiny_bundle):
    images, ids = _images(5), [f"im{i}" for i in range(5)]
    conds = [["red"], ["blue"], ["red", "blue"], [("red", "blue")], ["red"]]
    a = TypicalityEstimator(tiny_bundle, draws=DRAWS, batch_size=64).estimate(images, ids, conds)
    b = TypicalityEstimator(tiny_bundle, draws=DRAWS, batch_size=3, vae_batch=2).estimate(
        images.flip(0), ids[::-1], conds[::-1])[::-1]
    for x, y in zip(a, b):
        assert x.image_id == y.image_id and x.labels == y.labels
        for u, v in [(x.diff, y.diff), (x.err_null, y.err_null), (x.err_cond, y.err_cond)]:
            np.testing.assert_allclose(u, v, atol=1e-5)
    assert a[3].labels == ["red|blue"] and a[2].labels == ["red", "blue"]


def test_prompt_shared_attention_equals_stock_attention(tiny_bundle):
    import copy

    from diffusers.models.attention_processor import AttnProcessor2_0

    from typicality.attention import SharedPromptAttention

    stock = copy.deepcopy(tiny_bundle)  # a private copy: other tests' estimators wrap the fixture's processors
    stock.unet.set_attn_processor(AttnProcessor2_0())
    images, ids = _images(4), [f"im{i}" for i in range(4)]
    conds = [["red"], ["blue", "red"], [("red", "blue")], ["blue"]]  # 4 distinct prompts, mixed per batch
    plain = TypicalityEstimator(stock, draws=DRAWS, batch_size=7, share_prompts=False)
    assert not any(isinstance(p, SharedPromptAttention) for p in stock.unet.attn_processors.values())
    want = plain.estimate(images, ids, conds)
    snapshot = copy.deepcopy(stock)
    before = stock.unet.attn_processors
    shared = TypicalityEstimator(stock, draws=DRAWS, batch_size=7)
    seen = []  # the wrapping is in place while the estimator runs...
    for x, y in zip(want, shared.estimate(images, ids, conds)):
        seen.append(all(isinstance(p, SharedPromptAttention) for p in stock.unet.attn_processors.values()))
        for u, v in [(x.diff, y.diff), (x.err_null, y.err_null), (x.err_cond, y.err_cond)]:
            np.testing.assert_allclose(u, v, rtol=0, atol=1e-6)
    # ...and gone after it: the caller's UNet has exactly the processors it had before.
    assert stock.unet.attn_processors == before and not any(seen)
    gen = shared.run([(ids, images, conds)])
    next(gen)
    assert all(isinstance(p, SharedPromptAttention) for p in stock.unet.attn_processors.values())
    gen.close()
    assert stock.unet.attn_processors == before
    # Other users of the UNet (DIFT features, sampling) call it without the keyword: unchanged.
    z, t, emb = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900]), torch.randn(3, 77, 64)
    with torch.no_grad():
        torch.testing.assert_close(stock.unet(z, t, emb).sample, snapshot.unet(z, t, emb).sample, rtol=0, atol=0)


def test_dtype_auto_is_fp32_on_cpu():
    from diffmine.core.runtime import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_sampled_latents_are_seeded_per_image(tiny_bundle):
    images, ids = _images(3), ["a", "b", "c"]
    mean = TypicalityEstimator(tiny_bundle, draws=4).estimate(images, ids, [["red"]] * 3)
    s1 = TypicalityEstimator(tiny_bundle, draws=4, sample_latents=True).estimate(images, ids, [["red"]] * 3)
    s2 = TypicalityEstimator(tiny_bundle, draws=4, sample_latents=True, vae_batch=1, batch_size=3).estimate(
        images[1:], ids[1:], [["red"]] * 2)
    np.testing.assert_allclose(s1[1].diff, s2[0].diff, atol=1e-5)
    assert not np.allclose(s1[0].err_null, mean[0].err_null)


def test_stream_keeps_only_a_chunk_in_memory(tiny_bundle):
    for workers in (1, 2):  # batches in flight: at most `workers`
        est = TypicalityEstimator(tiny_bundle, draws=4, batch_size=16, workers=workers)
        pulled = []

        def chunks():
            for k in range(6):
                pulled.append(k)
                yield [f"c{k}_{i}" for i in range(2)], _images(2, seed=k), [["red"]] * 2

        n = 0
        for res in est.run(chunks()):
            n += 1
            assert pulled[-1] <= int(res.image_id[1]) + workers, "results must stream out as images finish"
        assert n == 12


# -- the command: store, processes, resume ----------------------------------------------------
def test_run_typicality_store_api(tiny_model_dir, color_dataset, tmp_path):
    out = _run(tiny_model_dir, color_dataset, tmp_path / "own", shard_size=5, group=5)  # shards end at groups
    s = TypicalityStore.open(out)
    assert len(s.image_ids) == 12 and s.labels == ["blue", "red"]
    assert s.meta["draws"] == DRAWS and s.meta["resolution"] == 32 and s.meta["latent_size"] == [8, 8]
    assert s.pairs() == [(i, i.split("/")[0]) for i in s.image_ids]
    i = s.image_ids[0]
    assert s.latent_map(i, "blue").shape == (8, 8) and s.latent_map(i, "blue").dtype == np.float32
    en, ec = s.error_maps(i, "blue")
    np.testing.assert_allclose(s.latent_map(i, "blue"), en - ec, atol=1e-5)
    assert s.map(i, "blue").shape == (32, 32) and s.map(i, "blue", size=(48, 20)).shape == (48, 20)
    np.testing.assert_allclose(s.map(i, "blue", (48, 20)), _bilinear_reference(s.latent_map(i, "blue"), 48, 20),
                               atol=1e-5)
    with pytest.raises(KeyError):
        s.latent_map(i, "red")  # --labels own: an image of blue is not scored for red
    own = s.scores()
    assert own.shape == (12, 2) and np.isnan(own).sum() == 12
    assert len(list(out.glob("shard-*.safetensors"))) == 3 and not list(out.glob("manifest.part-*"))

    full = TypicalityStore.open(_run(tiny_model_dir, color_dataset, tmp_path / "all", labels="all"))
    matrix = full.scores()
    assert matrix.shape == (12, 2) and np.isfinite(matrix).all()
    np.testing.assert_allclose(full.scores("red"), matrix[:, 1])
    np.testing.assert_allclose(full.latent_map(i, "blue"), s.latent_map(i, "blue"), atol=1e-5)
    np.testing.assert_allclose(full.scores("blue")[0], s.latent_map(i, "blue").mean(), atol=1e-6)


def test_processes_split_and_merge_to_the_same_store(tiny_model_dir, color_dataset, tmp_path):
    one = TypicalityStore.open(_run(tiny_model_dir, color_dataset, tmp_path / "one", batch_size=6, group=4))
    out = tmp_path / "two"
    for rank in (1, 0):  # any order: each process writes its own shards
        _run(tiny_model_dir, color_dataset, out, process_index=rank, num_processes=2, batch_size=6, shard_size=4,
             group=4)
    assert len(list(out.glob("manifest.part-*.json"))) == 2
    # groups of 4 images are batched alone and dealt out 0, 1, 0: the maps are those of one process, bit for bit
    _assert_same_maps(one, TypicalityStore.open(out), atol=0)  # readable before the merge too
    merge_manifests(out)
    assert not list(out.glob("manifest.part-*.json"))
    _assert_same_maps(one, TypicalityStore.open(out), atol=0)
    # another batch size changes only the rounding
    _assert_same_maps(one, TypicalityStore.open(_run(tiny_model_dir, color_dataset, tmp_path / "b64", batch_size=64)))


def test_interrupted_run_resumes_to_the_same_maps(tiny_model_dir, color_dataset, tmp_path):
    ref = TypicalityStore.open(_run(tiny_model_dir, color_dataset, tmp_path / "ref"))
    out, seen = tmp_path / "resumed", []

    def interrupt(image_id):
        seen.append(image_id)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, color_dataset, out, shard_size=2, on_image=interrupt)
    assert len(TypicalityStore.open(out).image_ids) == 5  # finished images are kept
    again = []
    _run(tiny_model_dir, color_dataset, out, shard_size=2, batch_size=7, on_image=again.append)
    assert len(again) == 7 and not set(again) & set(seen)  # finished images are skipped
    _assert_same_maps(ref, TypicalityStore.open(out))


def test_killed_process_resumes_to_the_same_maps(tiny_model_dir, color_dataset, tmp_path):
    """SIGKILL in the middle of a run (no clean-up at all), then resume."""
    out = tmp_path / "killed"
    script = (f"import os, signal; from typicality.engine import run_typicality\n"
              f"n = []\n"
              f"def hook(i):\n"
              f"    n.append(i)\n"
              f"    if len(n) == 7: os.kill(os.getpid(), signal.SIGKILL)\n"
              f"run_typicality(model={str(tiny_model_dir)!r}, data={str(color_dataset)!r}, out={str(out)!r}, draws={DRAWS}, "
              f"shard_size=3, group=3, progress=False, on_image=hook)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(TypicalityStore.open(out).image_ids) == 6  # two full shards; the 7th image was in memory
    again = []
    _run(tiny_model_dir, color_dataset, out, group=3, on_image=again.append)
    assert len(again) == 6
    # whole groups were kept and redone: the maps of an uninterrupted run, bit for bit
    _assert_same_maps(TypicalityStore.open(_run(tiny_model_dir, color_dataset, tmp_path / "ref", group=3)),
                      TypicalityStore.open(out), atol=0)


def test_damaged_shard_is_detected(tiny_model_dir, color_dataset, tmp_path):
    out = _run(tiny_model_dir, color_dataset, tmp_path / "typ", shard_size=4, group=4)
    ref = _maps(TypicalityStore.open(out))
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["shards"][1]
    shard = out / entry["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = TypicalityStore.open(out)
    store.latent_map(manifest["shards"][0]["images"][0], "blue")  # other shards still read
    with pytest.raises(DataError, match=str(shard.name)):
        store.latent_map(entry["images"][0], entry["images"][0].split("/")[0])
    with pytest.raises(DataError, match="damaged"):
        _run(tiny_model_dir, color_dataset, out, shard_size=4, group=4)  # resuming checks the shards too
    shard.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(DataError, match=str(shard.name)):
        TypicalityStore.open(out).scores()
    shard.unlink()  # what the error message advises: its images (one whole group) are recomputed
    _run(tiny_model_dir, color_dataset, out, shard_size=4, group=4)
    for key, maps in _maps(TypicalityStore.open(out)).items():
        for x, y in zip(maps, ref[key]):
            np.testing.assert_array_equal(x, y)  # the group is batched as before: the same maps, bit for bit


def test_resume_with_other_settings_is_refused(tiny_model_dir, color_dataset, tmp_path):
    out = _run(tiny_model_dir, color_dataset, tmp_path / "typ")
    with pytest.raises(DataError, match="draws"):
        _run(tiny_model_dir, color_dataset, out, draws=DRAWS + 1)
    with pytest.raises(DataError, match="not a typicality store"):
        TypicalityStore.open(tmp_path)


def test_multi_label_images_and_cli(tiny_model_dir, tmp_path):
    from PIL import Image

    from diffmine.cli import main

    data = tmp_path / "xray"
    data.mkdir()
    rows = ["file_name,finding"]
    for k, lab in enumerate(["Mass", "Mass|Nodule", "Nodule"]):
        Image.fromarray(np.full((24, 40, 3), 60 * k, np.uint8)).save(data / f"{k}.png")  # non-square source
        rows.append(f"{k}.png,{lab}")
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "typ"
    assert main(["typicality", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--label-column", "finding", "--draws", "4", "--batch-size", "16"]) == 0
    s = TypicalityStore.open(out)
    # a multi-label image gets one map per label (the null branch shared), so mining finds it per label
    assert s.labels == ["Mass", "Nodule"]
    assert s.pairs() == [("0", "Mass"), ("1", "Mass"), ("1", "Nodule"), ("2", "Nodule")]
    assert s.map("1", "Nodule", size=(24, 40)).shape == (24, 40)
    null_mass, cond_mass = s.error_maps("1", "Mass")
    null_nodule, cond_nodule = s.error_maps("1", "Nodule")
    np.testing.assert_array_equal(null_mass, null_nodule)  # one null branch per draw serves both labels
    assert not np.array_equal(cond_mass, cond_nodule)
    assert main(["typicality", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2  # bad input: one clear line, exit code 2


@pytest.mark.slow
def test_accelerate_launch_two_processes(tiny_model_dir, color_dataset, tmp_path):
    out = tmp_path / "launched"
    # --multi_gpu selects accelerate's torchrun launcher; without CUDA the engine joins a gloo (CPU) group.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffmine",
           "typicality", "--model", str(tiny_model_dir), "--data", str(color_dataset), "--out", str(out),
           "--draws", str(DRAWS), "--shard-size", "2", "--group", "2"]  # full shards stay as each process wrote them
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name.split("-")[2] for p in out.glob("shard-*.safetensors")} == {"n2"}
    assert len({p.name.split("-")[1] for p in out.glob("shard-*.safetensors")}) == 2  # both ranks wrote
    assert not list(out.glob("manifest.part-*"))
    _assert_same_maps(TypicalityStore.open(_run(tiny_model_dir, color_dataset, tmp_path / "one", group=2)),
                      TypicalityStore.open(out), atol=0)  # bit for bit: each group is batched on its own
