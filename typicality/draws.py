"""The draw schedule: which (t, eps) pairs estimate an image's typicality (docs/method.md §2).

Every image owns a generator seeded from (seed, image id) through SHA-256, so its draws do
not depend on batch size, image order, process count or an interruption: a map is a
function of the image, the model and these settings only. Draws are made on the CPU so
they are also the same on every device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffmine.core.seeds import generator
from diffmine.core.settings import check_t_range

from typicality.config import PUBLISHED_T_RANGE, SCHEDULES  # written once, in the stage's config


def image_generator(seed: int, image_id: str, stream: str = "draws") -> torch.Generator:
    """The generator of one image's draws: seeded by (seed, stream, image id), so independent of batching."""
    return generator(int(seed), stream, image_id)


def timestep_bounds(t_range: tuple[float, float], num_train_timesteps: int) -> tuple[int, int]:
    """Fractions of the schedule -> integer timesteps [lo, hi); (0.1, 0.7) -> [100, 700) for T=1000."""
    check_t_range(t_range)
    lo, hi = (int(round(f * num_train_timesteps)) for f in t_range)
    if lo >= hi:
        raise ValueError(f"t range {tuple(t_range)} holds no whole timestep of the {num_train_timesteps}-step schedule")
    return lo, hi


def sample_timesteps(n: int, t_range: tuple[float, float], num_train_timesteps: int,
                     schedule: str, generator: torch.Generator) -> torch.Tensor:
    """n integer timesteps in [lo, hi): i.i.d. uniform, or one per equal-width stratum (in order).

    Stratifying keeps the estimator unbiased for the uniform-t expectation while removing
    the between-timestep part of its variance (the error's scale varies strongly with t).
    """
    lo, hi = timestep_bounds(t_range, num_train_timesteps)
    if schedule == "uniform":
        return torch.randint(lo, hi, (n,), generator=generator)
    if schedule != "stratified":
        raise ValueError(f"unknown timestep schedule {schedule!r}; choose one of {SCHEDULES}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    t = lo + torch.floor((torch.arange(n, dtype=torch.float64) + u) * (hi - lo) / n)
    return t.long().clamp_(lo, hi - 1)


@dataclass
class Draws:
    """One image's draws: timesteps (n,) int64 and noise (n, C, h, w) float32, on the CPU."""
    timesteps: torch.Tensor
    noise: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


def make_draws(n: int, latent_shape: tuple[int, ...], seed: int, image_id: str,
               t_range: tuple[float, float] = PUBLISHED_T_RANGE, num_train_timesteps: int = 1000,
               schedule: str = "stratified", antithetic: bool = False) -> Draws:
    """The n draws of one image.

    antithetic: draws come in pairs (t, eps), (t, -eps). The per-draw typicality has a term
    2 eps·(eps_c - eps_null) that is odd in eps; the pair cancels most of it. With an odd n
    the last pair keeps only its +eps half.
    """
    if n < 1:
        raise ValueError(f"draws must be >= 1, got {n}")
    g = image_generator(seed, image_id)
    m = math.ceil(n / 2) if antithetic else n
    t = sample_timesteps(m, t_range, num_train_timesteps, schedule, g)
    eps = torch.randn((m, *latent_shape), generator=g, dtype=torch.float32)
    if antithetic:
        t = t.repeat_interleave(2)[:n]
        eps = torch.stack([eps, -eps], dim=1).flatten(0, 1)[:n]
    return Draws(t, eps)
