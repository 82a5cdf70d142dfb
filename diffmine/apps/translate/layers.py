"""Which UNet layers Plug-and-Play injects, and for how long: data (layers.json), matched on the UNet's config.

A layout is identified by UNet config values (block types, layers per block). A UNet whose
layout is in no mapping is an error that asks for one (`--layers FILE`, same format as
layers.json); the named modules are checked to exist and to be the right kind.

The injection shares are part of a layout's calibration like its layers: a layout that does not
name them gets the published ones (Tumanyan et al. 2023, pnp-diffusers: 80 % / 50 % of 50 steps,
found for SD); `--residual-injection` / `--attention-injection` override both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffmine.core.errors import DataError

DEFAULT_LAYERS = Path(__file__).with_name("layers.json")
MATCH_KEYS = ("down_block_types", "up_block_types", "layers_per_block")
PUBLISHED_RESIDUAL_SHARE = 0.8   # docs/method.md §5: the first 80 % of the sampling steps
PUBLISHED_ATTENTION_SHARE = 0.5  # docs/method.md §5: the first 50 %


@dataclass(frozen=True)
class InjectionLayers:
    name: str
    residual: tuple[str, ...]        # residual blocks whose residual branch the source's replaces
    self_attention: tuple[str, ...]  # attention modules whose queries/keys the source's replace
    residual_injection: float = PUBLISHED_RESIDUAL_SHARE    # share of the steps injecting the residual
    attention_injection: float = PUBLISHED_ATTENTION_SHARE  # share of the steps injecting queries/keys


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
            source = mapping or DEFAULT_LAYERS
            name = str(e.get("name", "?"))
            shares = {k: _share(e, k, name, source) for k in ("residual_injection", "attention_injection") if k in e}
            layers = InjectionLayers(name, tuple(e["residual"]), tuple(e["self_attention"]), **shares)
            _check_modules(unet, layers, source)
            return layers
    raise DataError(f"no injection mapping for this UNet layout ({describe_layout(unet)}); pass --layers FILE "
                    f"naming its residual and self-attention layers (format: {DEFAULT_LAYERS})")


def _share(entry: dict, key: str, name: str, source) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DataError(f"{source}: layout '{name}': {key} must be a share of the steps in [0, 1], got {value!r}")
    return float(value)


def _check_modules(unet, layers: InjectionLayers, source) -> None:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for name in layers.residual + layers.self_attention:
        try:
            module = unet.get_submodule(name)
        except AttributeError:
            raise DataError(f"{source}: layout '{layers.name}' names '{name}', which this UNet does not have") from None
        if name in layers.residual and not isinstance(module, ResnetBlock2D):
            raise DataError(f"{source}: layout '{layers.name}': '{name}' is not a residual block (ResnetBlock2D)")
        if name in layers.self_attention and (not isinstance(module, Attention) or module.is_cross_attention):
            raise DataError(f"{source}: layout '{layers.name}': '{name}' is not a self-attention layer")
