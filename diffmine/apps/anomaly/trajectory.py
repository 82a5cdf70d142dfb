"""The trajectory score (docs/method.md §5.3): the error accumulated along a reverse DDIM trajectory.

From a partially noised latent z_s = sqrt(a_s) z0 + sqrt(1 - a_s) eps (s = `start` x T), the model
walks back to t = 0 with deterministic DDIM steps (diffusers' DDIMScheduler, eta = 0, null prompt).
At each step t -> t' the model's latent is compared with where a perfect model would be on the
same path, the forward point sqrt(a_t') z0 + sqrt(1 - a_t') eps (z0 itself at the last step):

    A(x) = mean over draws of  sum over steps  mean over channels (z_t'^model - z_t'^clean)^2

Errors compound: a model that does not know x drifts off the path and stays off. The sum is kept
per latent pixel (the anomaly map); its spatial mean is the score.
"""
from __future__ import annotations

from typing import Sequence

import torch
from diffusers import DDIMScheduler

from typicality.draws import image_generator


def ddim_timesteps(scheduler: DDIMScheduler, start: float, steps: int) -> torch.Tensor:
    """`steps` DDIM timesteps from about start x T down to the smallest, evenly spaced (descending)."""
    T = scheduler.config.num_train_timesteps
    t_start = max(1, int(round(start * T)))
    scheduler.set_timesteps(max(steps, int(round(steps * T / t_start))))
    ts = scheduler.timesteps[scheduler.timesteps <= t_start]
    return ts[:steps]


@torch.inference_mode()
def trajectory_maps(bundle, z0: torch.Tensor, image_ids: Sequence[str], null_embedding: torch.Tensor,
                    start: float = 0.3, steps: int = 10, draws: int = 2, seed: int = 0,
                    batch_size: int = 64) -> torch.Tensor:
    """(n, h, w) accumulated trajectory error of latents z0 (n, C, h, w); noise seeded per image id."""
    sched = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=True)
    ts = ddim_timesteps(sched, start, steps)
    ab = sched.alphas_cumprod.float()
    unet, dev = bundle.unet, bundle.unet.device
    # every (image, draw) is one row; all rows share the step schedule, so a batch steps together
    eps = torch.stack([torch.randn((draws,) + tuple(z.shape), generator=image_generator(seed, i, "trajectory"))
                       for i, z in zip(image_ids, z0)])  # (n, draws, C, h, w)
    n = len(z0)
    z0r = z0.float().cpu()[:, None].expand_as(eps).reshape(-1, *z0.shape[1:])
    eps = eps.reshape(-1, *z0.shape[1:])
    total = torch.zeros(len(eps), *z0.shape[2:], dtype=torch.float64)
    for b in range(0, len(eps), batch_size):
        e, x0 = eps[b:b + batch_size], z0r[b:b + batch_size]
        a0 = ab[int(ts[0])]
        z = a0.sqrt() * x0 + (1 - a0).sqrt() * e
        emb = null_embedding.to(dev, unet.dtype).expand(len(e), -1, -1)
        for t in ts:
            pred = unet(z.to(dev, unet.dtype), t.to(dev), encoder_hidden_states=emb, return_dict=False)[0]
            z = sched.step(pred.float().cpu(), int(t), z, eta=0.0).prev_sample
            prev = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps  # as step() does
            a_prev = ab[prev] if prev >= 0 else sched.final_alpha_cumprod
            clean = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
            total[b:b + len(e)] += (z - clean).square().mean(dim=1).double()
    return total.reshape(n, draws, *z0.shape[2:]).mean(dim=1).float()
