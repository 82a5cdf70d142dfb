"""Plug-and-Play feature injection, registered for a scope and removed after it.

The source rows and the target rows of a translation run in ONE UNet forward. `rows` maps
every row of that batch to the row whose features it should carry: a source row to itself,
a target row (conditional or unconditional) to its image's source row. Injecting is then a
gather, `features[rows]`: the residual branch of the chosen residual blocks (the output of their
second convolution, before the block adds its shortcut) and the chosen self-attention layers'
queries and keys of every target row are replaced by its source's. The shortcut and the values
stay the target's own, exactly as pnp-diffusers injects (Tumanyan et al. 2023): replacing the
whole block output instead would also overwrite the target's skip path and hold the source's
layout more rigidly than the published method. The sampler switches the two kinds on and off per step.

`feature_injection(unet, layers, state)` installs a forward hook and attention processors
and restores the UNet's own processors on exit, whatever happened: a model someone else
owns (the typicality engine wraps the same processors) is never changed for good.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from diffmine.core.errors import DataError
from typicality.attention import attend, plain_attention, split_heads

from diffmine.apps.translate.layers import InjectionLayers


@dataclass
class InjectionState:
    rows: torch.Tensor | None = None  # (B,) long: the row whose features each row carries
    residual: bool = False            # inject the residual block's output in this forward
    attention: bool = False           # inject self-attention queries and keys in this forward


class QKInjection:
    """Self-attention with the queries and keys of `state.rows`; the wrapped processor otherwise."""

    def __init__(self, base, state: InjectionState):
        self.base, self.state = base, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        rows = self.state.rows
        if not self.state.attention or rows is None or encoder_hidden_states is not None:
            return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (split_heads(x, attn.heads) for x in (q[rows], k[rows], v))
        return attend(attn, q, k, v, attention_mask)


def _residual_hook(state: InjectionState):
    def hook(_module, _args, output):
        if state.residual and state.rows is not None:
            return output[state.rows]
        return None
    return hook


@contextmanager
def feature_injection(unet, layers: InjectionLayers, state: InjectionState):
    """Within the scope, `unet` injects what `state` says; outside it, the UNet is as it was."""
    before = unet.attn_processors
    procs = dict(before)
    for name in layers.self_attention:
        attn = unet.get_submodule(name)
        if not plain_attention(attn):
            raise DataError(f"self-attention layer '{name}' is not the plain SD layout the injection supports")
        procs[f"{name}.processor"] = QKInjection(before[f"{name}.processor"], state)
    handles = [unet.get_submodule(name).conv2.register_forward_hook(_residual_hook(state))
               for name in layers.residual]
    try:
        unet.set_attn_processor(procs)  # diffusers pops from the dict it is given: `procs` is ours
        yield state
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(dict(before))

