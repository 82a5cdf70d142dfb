"""Train a small autoencoder: tiny-scratch's VAE, or the fast one `--adapt-vae` trains on a user's images
(finetune/vae_adapt.py). SD's VAE is always used frozen."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from diffmine.core import autoencoders

KL_WEIGHT = 1e-6  # as in latent diffusion's KL-f autoencoders: a nearly deterministic code
CHECKPOINT_EVERY = 100  # steps; at 1-4 s a step on a CPU, a kill loses a few minutes at most


class VAEStopped(Exception):
    """The time limit came during VAE training: the state is in the checkpoint, a rerun continues it."""

    def __init__(self, step: int, steps: int):
        super().__init__(f"VAE training stopped at step {step} of {steps}")
        self.step, self.steps = step, steps


def _save(path: Path, step: int, vae, opt, sched, g: torch.Generator) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "rng": g.get_state()}, tmp)
    tmp.replace(path)


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch_size: int = 32, lr: float = 1e-3,
              seed: int = 0, progress: bool = True, checkpoint: str | Path | None = None,
              deadline: float | None = None, desc: str = "training VAE",
              on_step: Callable[[int, AutoencoderKL], None] | None = None) -> AutoencoderKL:
    """Fit `vae` to images (N, 3, H, W) in [-1, 1]; then set `scaling_factor` so latents have unit std.

    With `checkpoint`, the state is saved there atomically every CHECKPOINT_EVERY steps and a
    killed run continues from it exactly (weights, optimizer, schedule and random stream).
    `on_step(step, vae)` is called after each step (benchmarks measure the curve with it)."""
    g = torch.Generator().manual_seed(seed)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    start = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["rng"])
        start = int(state["step"])
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, disable=not progress)
    for step in bar:
        x = images[torch.randint(len(images), (batch_size,), generator=g)].to(vae.device)
        z, kl = autoencoders.encode_for_training(vae, x, g)
        loss = F.mse_loss(autoencoders.decode(vae, z), x) + KL_WEIGHT * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1, vae)
        if checkpoint is not None and (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
            _save(checkpoint, step + 1, vae, opt, sched, g)
        if deadline is not None and checkpoint is not None and time.time() >= deadline and step + 1 < steps:
            _save(checkpoint, step + 1, vae, opt, sched, g)
            bar.close()
            raise VAEStopped(step + 1, steps)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([autoencoders.encode(vae, images[i:i + 64].to(vae.device))[0] for i in range(0, len(images), 64)])
    # SD scales latents to ~unit variance (0.18215 for its VAE); measure ours the same way.
    vae.register_to_config(scaling_factor=float(1.0 / z.std().clamp_min(1e-6)))
    return vae
