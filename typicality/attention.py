"""Cross-attention keys and values computed once per distinct prompt, not once per UNet row.

A typicality batch has many rows but only a few distinct prompts (the null prompt and the
labels'). Stock diffusers processors project all 77 text tokens to keys and values for every
row; at the tiny model's 8x8 and 4x4 levels that is more work than the queries themselves.
`SharedPromptAttention` wraps whatever processor an attention layer has: given the keyword
`prompt_rows = (distinct embeddings (P, 77, d), row -> prompt index (B,))` it projects the P
prompts and gathers per row; for anything else (self-attention, no keyword, a layer with
masks, norms or residuals) it calls the wrapped processor unchanged. The result equals the
stock computation to float rounding.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


def plain_attention(attn) -> bool:
    """The SD v1.x attention layout `split_heads` / `attend` compute exactly (no norms, residual or rescale)."""
    return (attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
            and attn.rescale_output_factor == 1.0 and attn.norm_q is None and attn.norm_k is None)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, tokens, heads * d) -> (n, heads, tokens, d), as diffusers' SDPA processor lays them out."""
    return x.view(len(x), -1, heads, x.shape[-1] // heads).transpose(1, 2)


def attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention over `split_heads` tensors, heads merged back and projected out."""
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
    batch, heads, _, head_dim = out.shape
    out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class SharedPromptAttention:
    def __init__(self, base):
        self.base = base

    @staticmethod
    def _plain(attn) -> bool:
        """The SD v1.x cross-attention layout this shortcut reproduces exactly."""
        return plain_attention(attn) and not attn.norm_cross

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 prompt_rows: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
        if (prompt_rows is None or encoder_hidden_states is None or attention_mask is not None
                or hidden_states.ndim != 3 or not self._plain(attn)):
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        prompts, index = prompt_rows
        query = split_heads(attn.to_q(hidden_states), attn.heads)
        key = split_heads(attn.to_k(prompts), attn.heads)[index]
        value = split_heads(attn.to_v(prompts), attn.heads)[index]
        return attend(attn, query, key, value)


@contextmanager
def shared_prompt_projections(unet):
    """Within the block, every attention processor of `unet` is wrapped; after it, the UNet has
    exactly the processors it had before (the model belongs to the caller)."""
    if not hasattr(unet, "attn_processors"):  # not a diffusers UNet (test doubles): nothing to share
        yield False
        return
    before = unet.attn_processors
    if all(isinstance(p, SharedPromptAttention) for p in before.values()):
        yield True  # already wrapped by an enclosing block
        return
    unet.set_attn_processor({name: SharedPromptAttention(p) for name, p in before.items()})
    try:
        yield True
    finally:
        unet.set_attn_processor(before)
