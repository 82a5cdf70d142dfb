"""Train a small VAE from scratch (tiny models only: SD's VAE is used frozen)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

KL_WEIGHT = 1e-6  # as in latent diffusion's KL-f autoencoders: a nearly deterministic code


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 1e-3,
              seed: int = 0, progress: bool = True) -> AutoencoderKL:
    """Fit `vae` to images (N, 3, H, W) in [-1, 1]; then set `scaling_factor` so latents have unit std."""
    g = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    bar = tqdm(range(steps), desc="training VAE", disable=not progress)
    for _ in bar:
        x = images[torch.randint(len(images), (batch_size,), generator=g)].to(vae.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(x.device)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + KL_WEIGHT * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i:i + 64].to(vae.device)).latent_dist.mean for i in range(0, len(images), 64)])
    # SD scales latents to ~unit variance (0.18215 for its VAE); measure ours the same way.
    vae.register_to_config(scaling_factor=float(1.0 / z.std().clamp_min(1e-6)))
    return vae
