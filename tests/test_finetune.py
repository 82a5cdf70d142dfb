"""The finetuner on a real tiny model and real images: loss falls, resume is exact, export loads."""
import json

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from diffmine.core.prompts import PromptTemplate
from finetune.train import train
from finetune.config import TrainConfig


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), base="tiny", resolution=32, batch_size=8,
                prompt="A {label} square.", null_prompt="A square.", null_rate=0.1, samples_per_label=0,
                checkpoint_every=1000, log_every=1, adapt_vae="never")  # adaptation: tests/test_vae_adapt.py
    base.update(kw)
    return TrainConfig(**base)


def _unet_weights(out):
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def test_loss_falls_and_export_loads(color_dataset, tmp_path):
    out = tmp_path / "model"
    train(_cfg(color_dataset, out, max_steps=30, lr=1e-3, samples_per_label=2), progress=False)
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 30
    first, last = sum(r["loss"] for r in log[:5]) / 5, sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.8 * first
    assert (out / "samples.png").exists()
    info = json.loads((out / "diffmine_train.json").read_text())
    assert info["labels"] == ["blue", "red"] and info["steps"] == 30
    assert PromptTemplate.load(out).template == "A {label} square."
    pipe = StableDiffusionPipeline.from_pretrained(out)
    img = pipe("A red square.", num_inference_steps=2, height=32, width=32, output_type="np").images[0]
    assert img.shape == (32, 32, 3)


def test_resume_gives_same_weights_as_uninterrupted(color_dataset, tiny_model_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    base = str(tiny_model_dir)  # a saved SD folder: the finetuning path proper (no VAE training)
    train(_cfg(color_dataset, whole, base=base, max_steps=6), progress=False)
    train(_cfg(color_dataset, split, base=base, max_steps=3))  # "interrupted" after 3 steps
    train(_cfg(color_dataset, split, base=base, max_steps=6, resume=True), progress=False)
    a, b = _unet_weights(whole), _unet_weights(split)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(l)["step"] for l in (split / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_lora_and_ema_export_a_plain_unet(color_dataset, tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    torch.manual_seed(1)  # the global generator differs between the two runs: --seed alone draws the adapters
    train(_cfg(color_dataset, out, base=str(tiny_model_dir), max_steps=2, lora_rank=4, ema=True), progress=False)
    weights = _unet_weights(out)
    assert not any("lora" in k for k in weights)
    StableDiffusionPipeline.from_pretrained(out)
    # LoRA was applied: only the adapted projections' weights moved (their deltas folded in), and they did
    base = _unet_weights(tiny_model_dir)
    adapted = {k for k in base if k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))}
    moved = {k for k in base if not torch.equal(base[k], weights[k])}
    assert weights.keys() == base.keys() and moved and moved <= adapted, sorted(moved - adapted)[:3]
    # EMA was applied: the export is the moving average, not the last weights of the same run without it
    torch.manual_seed(2)
    last = _unet_weights(train(_cfg(color_dataset, tmp_path / "no-ema", base=str(tiny_model_dir), max_steps=2,
                                    lora_rank=4), progress=False))
    assert {k for k in base if not torch.equal(base[k], last[k])} == moved  # the same adapters trained
    assert all(not torch.equal(weights[k], last[k]) for k in moved)


def test_lora_init_comes_from_the_seed_not_the_global_generator(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    from finetune.train import _add_lora

    def adapters(seed, global_seed):
        unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
        torch.manual_seed(global_seed)
        _add_lora(unet, 4, seed)
        return {k: v for k, v in unet.state_dict().items() if "lora_A" in k}

    a, b, c = adapters(0, 1), adapters(0, 2), adapters(1, 1)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_mixed_precision_is_an_alias_of_the_runtimes_dtype(color_dataset, tiny_model_dir, tmp_path):
    import pytest

    from diffmine.core.placement import misplaced, record_forwards
    from diffmine.core.settings import ConfigError
    from finetune.config import precision_of

    with pytest.warns(UserWarning, match="--dtype bf16 on the CPU"), record_forwards(parts=("unet",)) as seen:
        train(_cfg(color_dataset, tmp_path / "bf16", base=str(tiny_model_dir), max_steps=1, mixed_precision="bf16"),
              progress=False)
    assert seen and misplaced(seen, "cpu", torch.bfloat16) == []  # the UNet computed under bf16 autocast

    assert _cfg(tmp_path, tmp_path / "m").precision == "auto"  # the runtime's --dtype auto, as every command
    assert _cfg(tmp_path, tmp_path / "m", mixed_precision="no").precision == "fp32"
    assert _cfg(tmp_path, tmp_path / "m", mixed_precision="bf16", dtype="bf16").precision == "bf16"
    assert precision_of({"mixed_precision": "no"}) == "fp32"  # a config.json written before --dtype
    with pytest.raises(ConfigError, match="give one of them"):
        _cfg(tmp_path, tmp_path / "m", mixed_precision="bf16", dtype="fp32").validate()


def test_random_flip_trains_on_each_images_own_mirror_and_resumes_exactly(color_dataset, tiny_model_dir, tmp_path):
    import numpy as np
    from PIL import Image

    from diffmine.core.images import to_tensor_array
    from diffmine.core.models import load_bundle

    base = str(tiny_model_dir)
    whole, split, plain = tmp_path / "whole", tmp_path / "split", tmp_path / "plain"
    train(_cfg(color_dataset, whole, base=base, max_steps=6, random_flip=True), progress=False)
    train(_cfg(color_dataset, split, base=base, max_steps=3, random_flip=True))
    train(_cfg(color_dataset, split, base=base, max_steps=6, random_flip=True, resume=True), progress=False)
    a, b = _unet_weights(whole), _unet_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the flips are drawn from the step's seed: resumable
    train(_cfg(color_dataset, plain, base=base, max_steps=6), progress=False)
    assert not all(torch.equal(a[k], v) for k, v in _unet_weights(plain).items())
    # the cache holds the latents of each image's mirror, encoded (an encoder is not mirror-symmetric)
    blob = torch.load(whole / "cache" / "inputs.pt")
    pixels = np.stack([to_tensor_array(Image.open(color_dataset / f"{i}.png").convert("RGB")) for i in blob["image_ids"]])
    with torch.no_grad():
        mirrored = load_bundle(base).encode_images(torch.from_numpy(np.ascontiguousarray(pixels[..., ::-1])))
    assert blob["mirrored"].shape == blob["latents"].shape
    torch.testing.assert_close(blob["mirrored"], mirrored.float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(blob["mirrored"], blob["latents"].flip(-1), atol=1e-3)


def test_the_export_names_its_base_as_given_so_its_fingerprint_does_not_depend_on_where_the_base_lies(
        color_dataset, tmp_path, monkeypatch):
    """A second checkout (the shipped base elsewhere) exports the same UNet config, so the typicality stores of
    a model stay valid when a finished run is resumed from there."""
    import shutil

    from diffmine.core import models
    from typicality.fingerprints import model_fingerprint

    here = train(_cfg(color_dataset, tmp_path / "here", max_steps=1), progress=False)
    moved = tmp_path / "checkout" / "tiny-towns-model"
    shutil.copytree(models.SMALL_BASE_DIR, moved, ignore=shutil.ignore_patterns("*.png", "train_log.jsonl"))
    monkeypatch.setitem(models.SMALL_BASES, "tiny", (moved, "towns"))
    there = train(_cfg(color_dataset, tmp_path / "there", max_steps=1), progress=False)
    assert json.loads((there / "unet" / "config.json").read_text())["_name_or_path"] == "tiny"
    assert model_fingerprint(here) == model_fingerprint(there)
