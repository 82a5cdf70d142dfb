"""The model bundle: real CLIP token ids, tiny SD folder round trip, scale factor from config."""
import torch
from diffusers import StableDiffusionPipeline

from diffmine.core.bundle import SDBundle
from diffmine.core.tiny import build_tiny_bundle


def test_tokenizer_matches_real_clip(tiny_bundle):
    assert tiny_bundle.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tiny_bundle.tokenizer) == 49408


def test_round_trip_and_pipeline(tiny_model_dir, tiny_bundle):
    bundle = SDBundle.from_pretrained(tiny_model_dir)
    assert bundle.vae_scale_factor == 4 and bundle.resolution == 32
    for a, b in zip(bundle.unet.parameters(), tiny_bundle.unet.parameters()):
        assert torch.equal(a, b)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    image = pipe("a photo", num_inference_steps=2, height=32, width=32, output_type="np").images[0]
    assert image.shape == (32, 32, 3)


def test_scale_factor_comes_from_vae_config():
    bundle = build_tiny_bundle(resolution=32, vae_factor=8)
    assert bundle.vae_scale_factor == 8 and bundle.resolution == 32
    z = bundle.encode_images(torch.zeros(1, 3, 32, 32))
    assert z.shape == (1, 4, 4, 4)
