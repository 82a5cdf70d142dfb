"""Where every UNet and VAE forward really ran: a recorder for tests and benchmarks.

    with record_forwards() as seen:          # every UNet / VAE encoder / VAE decoder call from here
        run_typicality(cfg)
    assert all(f.compute == torch.bfloat16 and f.device == "cuda" for f in seen)

The classes' forwards are wrapped (not one instance's), so a model a command loads itself is
recorded too: a command that bypassed the runtime shows up as a forward in the wrong place. The
VAE is recorded at its `Encoder` / `Decoder`, which `vae.encode`/`vae.decode` and the code that
calls `vae.encoder` directly (anomaly patch features) all go through. `before(forward)` runs
ahead of each call (the end-to-end benchmark stops a phase there when its time is up).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

PARTS = ("unet", "vae.encoder", "vae.decoder")


@dataclass(frozen=True)
class Forward:
    part: str                      # one of PARTS
    device: str                    # device type of the weights: "cpu", "cuda", ...
    weights: torch.dtype
    inputs: torch.dtype            # dtype of the sample/latent the call was given
    autocast: torch.dtype | None   # autocast dtype active for that device type, None when off

    @property
    def compute(self) -> torch.dtype:
        """The precision the call computes in: autocast's when on, else the weights'."""
        return self.autocast or self.weights

    @property
    def placement(self) -> tuple[str, torch.dtype, torch.dtype]:
        return self.device, self.weights, self.inputs


def _classes() -> dict[str, tuple[type, ...]]:
    """part -> the classes whose forward is that part (either autoencoder family, diffmine.core.autoencoders)."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.autoencoders import autoencoder_dc
    from diffusers.models.autoencoders.vae import Decoder, Encoder

    return {"unet": (UNet2DConditionModel,), "vae.encoder": (Encoder, autoencoder_dc.Encoder),
            "vae.decoder": (Decoder, autoencoder_dc.Decoder)}


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, AttributeError):  # a device type autocast does not know
        pass
    return None


def _set_forwards(forwards: dict[type, Callable]) -> None:
    for cls, forward in forwards.items():
        cls.forward = forward


class Recording(list):
    """The Forwards recorded so far (a list), and `paused()`: a block run with the plain forwards
    (torch.compile would otherwise trace the recorder into its graph)."""

    def __init__(self, originals: dict[type, Callable], spies: dict[type, Callable]):
        super().__init__()
        self._originals, self._spies = originals, spies

    @contextmanager
    def paused(self) -> Iterator[None]:
        _set_forwards(self._originals)
        try:
            yield
        finally:
            _set_forwards(self._spies)


@contextmanager
def record_forwards(parts: tuple[str, ...] = PARTS,
                    before: Callable[[Forward], None] | None = None) -> Iterator[Recording]:
    """Record a Forward per call of the given parts while the block runs; originals restored after."""
    classes = _classes()
    unknown = sorted(set(parts) - set(classes))
    if unknown:
        raise ValueError(f"unknown parts {unknown}; known: {list(classes)}")
    part_of = {cls: name for name in parts for cls in classes[name]}
    originals = {cls: cls.forward for cls in part_of}
    spies: dict[type, Callable] = {}
    seen = Recording(originals, spies)

    def wrap(name, forward):
        def spy(self, sample, *args, **kwargs):
            p = next(self.parameters())
            f = Forward(name, p.device.type, p.dtype, sample.dtype, _autocast_dtype(p.device.type))
            seen.append(f)
            if before is not None:
                before(f)
            return forward(self, sample, *args, **kwargs)
        return spy

    spies.update({cls: wrap(part_of[cls], forward) for cls, forward in originals.items()})
    try:
        _set_forwards(spies)
        yield seen
    finally:
        _set_forwards(originals)


def misplaced(seen: list[Forward], device: str, dtypes: dict[str, torch.dtype] | torch.dtype) -> list[Forward]:
    """The forwards not on `device` (a type: "cuda") or not computing in their part's dtype.
    `dtypes`: one dtype for every part, or part prefix -> dtype ("unet", "vae")."""
    def expected(part: str) -> torch.dtype:
        if isinstance(dtypes, torch.dtype):
            return dtypes
        return dtypes[part.split(".")[0]] if part.split(".")[0] in dtypes else dtypes[part]
    return [f for f in seen if f.device != device or f.compute != expected(f.part)]
