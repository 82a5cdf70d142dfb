"""Translating images from their label to another one, in memory: Plug-and-Play and SDEdit (docs/method.md §5).

Plug-and-Play (Tumanyan et al. 2023): DDIM inversion of the image under its source prompt
(no guidance), then DDIM sampling from the inverted noise under the target prompt with
classifier-free guidance (null prompt as the negative), injecting the source's residual-block
features (the residual branch) for the first `residual_injection` share of the steps and its
self-attention queries and keys for the first `attention_injection` share; both shares default to
the UNet layout's in the layer mapping (the published 80 % / 50 % unless it names others). The
source branch is the inverted latent at each sampling timestep, run in the same forward as the
target rows:

    rows = [ source of each image | target rows, conditional | target rows, null prompt ]

so an image translated to three labels costs one source row, not three. SDEdit: noise the
image's latent to `strength` of the schedule, then the same guided DDIM sampling, no injection.

Schedulers are diffusers' DDIMScheduler / DDIMInverseScheduler built from the model's own
scheduler config. Everything is deterministic (DDIM with eta = 0, the VAE posterior mean);
SDEdit's noise comes from a generator seeded by (seed, image id, target), so an output does
not depend on the batch it was computed in.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Sequence

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from diffmine.core.embeddings import PromptEmbeddings
from diffmine.core.settings import ConfigError
from diffmine.core.prompts import PromptTemplate
from typicality.draws import image_generator

from diffmine.apps.translate.inject import InjectionState, feature_injection
from diffmine.apps.translate.layers import InjectionLayers, injection_layers


def steps_share(share: float, steps: int) -> int:
    """The first int(share * steps) sampling steps inject (pnp-diffusers' rounding); exact at 0.8 x 50 = 40."""
    return int(math.floor(share * steps + 1e-9))


class Translator:
    def __init__(self, bundle, prompts: PromptTemplate | None = None, *, method: str = "pnp", steps: int = 50,
                 guidance: float = 7.5, inversion_steps: int = 50, strength: float = 0.6,
                 residual_injection: float | None = None, attention_injection: float | None = None,
                 layers: InjectionLayers | str | None = None, seed: int = 0):
        if method not in ("pnp", "sdedit"):
            raise ConfigError("method", f"must be pnp or sdedit, got {method!r}")
        self.bundle, self.prompts = bundle, prompts or PromptTemplate()
        self.method, self.guidance, self.seed = method, float(guidance), int(seed)
        cfg = bundle.scheduler.config
        self.sampler = DDIMScheduler.from_config(cfg)
        self.sampler.set_timesteps(int(steps))
        self.timesteps = [int(t) for t in self.sampler.timesteps]
        self.start = 0
        self.layers: InjectionLayers | None = None
        self.residual_injection = self.attention_injection = 0.0  # sdedit injects nothing
        if method == "pnp":
            self.inverter = DDIMInverseScheduler.from_config(cfg)
            self.inverter.set_timesteps(int(inversion_steps))
            inverted = {int(t) for t in self.inverter.timesteps}
            missing = [t for t in self.timesteps if t not in inverted]
            if missing:
                raise ConfigError("inversion_steps", f"{inversion_steps} leaves no inverted latent at timestep "
                                  f"{missing[0]} of the {steps} sampling steps; use a multiple of steps")
            self.layers = layers if isinstance(layers, InjectionLayers) else injection_layers(bundle.unet, layers)
            # None: the layout's own shares (the published 80 % / 50 % unless its mapping names others)
            self.residual_injection = float(self.layers.residual_injection if residual_injection is None
                                            else residual_injection)
            self.attention_injection = float(self.layers.attention_injection if attention_injection is None
                                             else attention_injection)
        else:
            noised = min(int(steps * strength), steps)
            if noised < 1:
                raise ConfigError("strength", f"{strength} of {steps} steps leaves no step to denoise")
            self.start = steps - noised
        self.n_residual = steps_share(self.residual_injection, steps)
        self.n_attention = steps_share(self.attention_injection, steps)
        self.embeddings = PromptEmbeddings(bundle)

    # -- helpers --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.bundle.unet.device

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n, tokens, width) prompt embeddings; each distinct prompt text-encoded once per translator."""
        return self.embeddings(prompts)

    def _unet(self, z: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        unet = self.bundle.unet
        tt = torch.full((len(z),), t, dtype=torch.long, device=self.device)
        return unet(z.to(self.device, unet.dtype), tt, encoder_hidden_states=emb, return_dict=False)[0].float()

    # -- the two halves of Plug-and-Play ---------------------------------------------------
    @torch.no_grad()
    def invert(self, z0: torch.Tensor, source_prompts: Sequence[str]) -> dict[int, torch.Tensor]:
        """DDIM inversion under the source prompts: the latent at every sampling timestep."""
        emb = self.embed(source_prompts)
        keep = set(self.timesteps)
        z, traj = z0.float(), {}
        for t in self.inverter.timesteps:
            t = int(t)
            z = self.inverter.step(self._unet(z, t, emb), t, z).prev_sample
            if t in keep:
                traj[t] = z
        return traj

    @torch.no_grad()
    def sample(self, x: torch.Tensor, target_prompts: Sequence[str], traj: dict[int, torch.Tensor] | None = None,
               source_prompts: Sequence[str] | None = None, job_source: torch.Tensor | None = None) -> torch.Tensor:
        """Guided DDIM sampling from x (the latent at timesteps[start]); with `traj`, PnP injection.

        job_source[j]: the row of traj / source_prompts holding translation j's source.
        """
        n = len(x)
        cond = self.embed(target_prompts)
        guided = self.guidance != 1.0
        null = self.embed([self.prompts.null_prompt]).expand(n, -1, -1) if guided else None
        state = InjectionState()
        src_emb = self.embed(source_prompts) if traj is not None else None
        scope = feature_injection(self.bundle.unet, self.layers, state) if traj is not None else nullcontext()
        with scope:
            for i in range(self.start, len(self.timesteps)):
                t = self.timesteps[i]
                state.residual = traj is not None and i < self.n_residual
                state.attention = traj is not None and i < self.n_attention
                inject = state.residual or state.attention
                parts, embs = [x] + ([x] if guided else []), [cond] + ([null] if guided else [])
                s = 0
                if inject:  # the source rows first; every target row carries its source's features
                    s = len(traj[t])
                    parts, embs = [traj[t]] + parts, [src_emb] + embs
                    js = job_source.to(self.device)
                    state.rows = torch.cat([torch.arange(s, device=self.device)] + [js] * (1 + guided))
                else:
                    state.rows = None
                out = self._unet(torch.cat(parts), t, torch.cat(embs))[s:]
                if guided:
                    c, u = out.chunk(2)
                    out = u + self.guidance * (c - u)
                x = self.sampler.step(out, t, x).prev_sample
        return x

    # -- whole translations --------------------------------------------------------------
    @torch.no_grad()
    def translate(self, images: torch.Tensor, image_ids: Sequence[str], sources: Sequence[str],
                  targets: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Images (n, 3, H, W) in [-1, 1], each image's source label and target labels ->
        for each image a (len(targets[i]), 3, H, W) tensor of its translations in [-1, 1]."""
        jobs = [(i, tgt) for i, tg in enumerate(targets) for tgt in tg]
        if not jobs:
            return [torch.zeros((0, *images.shape[1:])) for _ in image_ids]
        z0 = self.bundle.encode_images(torch.as_tensor(images)).float()
        job_img = torch.tensor([i for i, _ in jobs])
        target_prompts = [self.prompts.prompt(t) for _, t in jobs]
        if self.method == "pnp":
            used = sorted({i for i, _ in jobs})  # invert only images that have a target
            local = {i: n for n, i in enumerate(used)}
            src_prompts = [self.prompts.prompt(sources[i]) for i in used]
            traj = self.invert(z0[used], src_prompts)
            job_source = torch.tensor([local[i] for i, _ in jobs])
            x = traj[self.timesteps[0]][job_source]
            z = self.sample(x, target_prompts, traj, src_prompts, job_source)
        else:
            noise = torch.stack([torch.randn(z0.shape[1:], generator=image_generator(
                self.seed, f"{image_ids[i]}\x00{t}", "sdedit")) for i, t in jobs]).to(z0.device)
            t0 = torch.tensor([self.timesteps[self.start]])
            x = self.sampler.add_noise(z0[job_img], noise, t0)
            z = self.sample(x, target_prompts)
        out = self.bundle.decode_latents(z.to(self.bundle.vae.dtype)).float().cpu()
        return [out[job_img == i] for i in range(len(image_ids))]

