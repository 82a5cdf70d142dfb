"""Which UNet layers Plug-and-Play injects: data (layers.json), matched on the UNet's config, never guessed.

A layout is identified by UNet config values (block types, layers per block). A UNet whose
layout is in no mapping is an error that asks for one (`--layers FILE`, same format as
layers.json); the named modules are checked to exist and to be the right kind.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from finetune.errors import DataError

DEFAULT_LAYERS = Path(__file__).with_name("layers.json")
MATCH_KEYS = ("down_block_types", "up_block_types", "layers_per_block")


@dataclass(frozen=True)
class InjectionLayers:
    name: str
    residual: tuple[str, ...]        # modules whose output the source's replaces (conv features)
    self_attention: tuple[str, ...]  # attention modules whose queries/keys the source's replace


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _read(path: Path) -> list[dict]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        layouts = doc["layouts"]
        for e in layouts:
            e["match"], e["residual"], e["self_attention"]  # noqa: B018 - presence check
    except FileNotFoundError:
        raise DataError(f"{path}: layer mapping file does not exist") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a layer mapping (expected {{'layouts': [{{'name', 'match', 'residual', "
                        f"'self_attention'}}]}}; {type(exc).__name__}: {exc})") from None
    return layouts


def describe_layout(unet) -> str:
    cfg = unet.config
    return ", ".join(f"{k}={_plain(cfg.get(k))}" for k in MATCH_KEYS)


def injection_layers(unet, mapping: str | Path | None = None) -> InjectionLayers:
    """The layers to inject for this UNet: the user's mapping first, then the shipped one."""
    layouts = (_read(mapping) if mapping else []) + _read(DEFAULT_LAYERS)
    cfg = unet.config
    for e in layouts:
        if all(_plain(cfg.get(k)) == _plain(v) for k, v in e["match"].items()):
            layers = InjectionLayers(str(e.get("name", "?")), tuple(e["residual"]), tuple(e["self_attention"]))
            _check_modules(unet, layers, mapping or DEFAULT_LAYERS)
            return layers
    raise DataError(f"no injection mapping for this UNet layout ({describe_layout(unet)}); pass --layers FILE "
                    f"naming its residual and self-attention layers (format: {DEFAULT_LAYERS})")


def _check_modules(unet, layers: InjectionLayers, source) -> None:
    from diffusers.models.attention_processor import Attention

    for name in layers.residual + layers.self_attention:
        try:
            module = unet.get_submodule(name)
        except AttributeError:
            raise DataError(f"{source}: layout '{layers.name}' names '{name}', which this UNet does not have") from None
        if name in layers.self_attention and (not isinstance(module, Attention) or module.is_cross_attention):
            raise DataError(f"{source}: layout '{layers.name}': '{name}' is not a self-attention layer")
