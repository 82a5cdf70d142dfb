"""benchmarks/pooled_label_base.py: the small base with a pooled-prompt time embedding starts as the base did."""
import torch

from benchmarks.pooled_label_base import pooled_base
from diffmine.core.models import load_bundle


def test_the_second_label_path_starts_silent_and_carries_the_prompt_once_trained(tmp_path):
    base, pooled = load_bundle("tiny").eval(), load_bundle(str(pooled_base("tiny", tmp_path / "p", heads=8))).eval()
    assert pooled.unet.config.addition_embed_type == "text" and base.unet.config.addition_embed_type is None
    z = torch.randn(2, pooled.unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = pooled.encode_prompts(["ring", "tile"]).float()
    t = torch.tensor([300, 300])
    with torch.no_grad():
        same = base.unet(z, t, encoder_hidden_states=emb).sample
        assert torch.allclose(pooled.unet(z, t, encoder_hidden_states=emb).sample, same, atol=1e-6)
        pooled.unet.add_embedding.norm2.weight.fill_(1.0)  # as if finetuned: the prompt now reaches every block
        moved = pooled.unet(z, t, encoder_hidden_states=emb).sample
    assert (moved - same).abs().mean() > 1e-3
