"""The finetuner: one `accelerate` loop that adapts an SD UNet to labeled images (METHOD.md §1).

VAE latents and prompt embeddings are computed once and cached; only the UNet trains. All
randomness of a step (its batch, noise, timesteps, null-prompt dropout) is drawn from
generators seeded by (seed, step, process), so `--resume` continues exactly where a run stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import checkpoints
from .atomic import replace_dir, write_json
from .bundle import SDBundle
from .dataset import LabeledImages
from .prompts import PromptTemplate

DEFAULT_EPOCHS = 100  # METHOD.md §1: ~100 epochs


@dataclass
class TrainConfig:
    data: str
    out: str
    base: str = "runwayml/stable-diffusion-v1-5"
    text_encoder: str | None = None
    label_column: str = "label"
    skip_bad: bool = False
    prompts: PromptTemplate = field(default_factory=PromptTemplate)
    resolution: int | None = None
    batch_size: int = 32
    # METHOD.md §1: AdamW, constant lr 1e-4, betas (0.9, 0.999), wd 1e-2, eps 1e-8, clip 1.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    max_steps: int | None = None
    epochs: int | None = None
    max_minutes: float | None = None
    vae_steps: int | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema: bool = False
    ema_decay: float = 0.999
    lora_rank: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    seed: int = 0
    samples_per_label: int = 4
    log_every: int = 10
    progress: bool = True


def _seed(*parts) -> int:
    """A stable 63-bit seed from any parts (Python's hash() changes between runs)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


# -- model ---------------------------------------------------------------------------------
def _base_bundle(cfg: TrainConfig, decoded, acc: Accelerator) -> SDBundle:
    """The frozen parts and the UNet to train. `--base tiny` trains its VAE first, once, cached."""
    if cfg.base != "tiny":
        return SDBundle.from_pretrained(cfg.base, text_encoder=cfg.text_encoder)
    cached = Path(cfg.out, "cache", "base")
    if not cached.exists():
        if acc.is_main_process:
            from .tiny import build_tiny_bundle
            from .vae_train import train_vae

            bundle = build_tiny_bundle(resolution=cfg.resolution or 64, seed=cfg.seed)
            _, images = decoded(bundle.resolution)
            steps = cfg.vae_steps if cfg.vae_steps is not None else 1000
            bundle.vae.to(acc.device)
            train_vae(bundle.vae, torch.from_numpy(images), steps, seed=cfg.seed, progress=cfg.progress)
            bundle.vae.to("cpu")
            tmp = cached.with_name(".base.tmp")
            bundle.save_pretrained(tmp)
            replace_dir(tmp, cached)
        acc.wait_for_everyone()
    return SDBundle.from_pretrained(cached)


# -- cached inputs -------------------------------------------------------------------------
def _cache(cfg: TrainConfig, data: LabeledImages, decoded, bundle: SDBundle, acc: Accelerator) -> dict:
    """Latents (posterior means) of every image and embeddings of every distinct prompt, once."""
    path = Path(cfg.out, "cache", "inputs.pt")
    resolution = bundle.resolution
    key = _seed([r.image_id for r in data], [r.labels for r in data], resolution, cfg.base,
                cfg.prompts.template, cfg.prompts.null_prompt)
    blob = torch.load(path) if acc.is_main_process and path.exists() else None
    if acc.is_main_process and (blob is None or blob["key"] != key):
        records, images = decoded(resolution)
        bundle.vae.to(acc.device)
        bundle.text_encoder.to(acc.device)
        latents = torch.cat([bundle.encode_images(torch.from_numpy(images[i:i + 32])).float().cpu()
                             for i in tqdm(range(0, len(images), 32), desc="encoding latents",
                                           disable=not cfg.progress)])
        prompts = [cfg.prompts.null_prompt] + sorted({cfg.prompts.prompt(r.labels) for r in records})
        index = {p: i for i, p in enumerate(prompts)}
        blob = {
            "key": key, "image_ids": [r.image_id for r in records], "latents": latents,
            "prompts": prompts, "embeddings": bundle.encode_prompts(prompts).float().cpu(),
            "prompt_index": torch.tensor([index[cfg.prompts.prompt(r.labels)] for r in records]),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
        bundle.vae.to("cpu")
        bundle.text_encoder.to("cpu")
    acc.wait_for_everyone()
    return blob if acc.is_main_process else torch.load(path)


# -- LoRA ----------------------------------------------------------------------------------
def _add_lora(unet, rank: int) -> None:
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


def _merged_unet(unet):
    """The plain UNet to export: LoRA deltas folded into the base weights."""
    if getattr(unet, "peft_config", None):
        unet.fuse_lora()
        unet.unload_lora()
    return unet


# -- the loop ------------------------------------------------------------------------------
def _batch(step: int, cfg: TrainConfig, n: int, acc: Accelerator) -> torch.Tensor:
    """Indices of this process's share of global batch `step`: epoch permutations seeded by (seed, epoch)."""
    world = acc.num_processes
    per_epoch = math.ceil(n / (cfg.batch_size * world))
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(cfg.seed, "epoch", epoch)))
    start = (k * world + acc.process_index) * cfg.batch_size
    return perm[torch.arange(start, start + cfg.batch_size) % n]  # the last batch wraps around


def _total_steps(cfg: TrainConfig, n: int, world: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return (cfg.epochs or DEFAULT_EPOCHS) * math.ceil(n / (cfg.batch_size * world))


def train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    acc = Accelerator(mixed_precision=cfg.mixed_precision)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    data = LabeledImages(cfg.data, cfg.label_column, cfg.skip_bad)
    memo: dict[int, tuple] = {}

    def decoded(resolution: int):  # images are decoded at most once, shared by VAE training and caching
        if resolution not in memo:
            memo[resolution] = data.load_arrays(resolution, progress=cfg.progress)
        return memo[resolution]

    bundle = _base_bundle(cfg, decoded, acc)
    inputs = _cache(cfg, data, decoded, bundle, acc)
    memo.clear()
    latents, emb, prompt_index = inputs["latents"], inputs["embeddings"], inputs["prompt_index"]
    n = len(latents)

    unet = bundle.unet
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.lora_rank:
        unet.requires_grad_(False)
        _add_lora(unet, cfg.lora_rank)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)  # constant (METHOD.md §1), kept in state
    unet, opt, lr_sched = acc.prepare(unet, opt, lr_sched)
    ema = None
    if cfg.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay)
        ema.to(acc.device)
        acc.register_for_checkpointing(ema)

    step = 0
    found = checkpoints.latest(out) if cfg.resume else None
    if found:
        acc.load_state(str(found[0]))
        step = found[1]
        if ema is not None:  # load_state restores the EMA's shadow weights on the CPU
            ema.to(acc.device)
    total = _total_steps(cfg, n, acc.num_processes)
    log_path = out / "train_log.jsonl"
    if acc.is_main_process:  # drop log lines written after the checkpoint we resume from
        old = log_path.read_text().splitlines() if (found and log_path.exists()) else []
        log_path.write_text("".join(l + "\n" for l in old if json.loads(l)["step"] <= step))

    sched = bundle.scheduler
    alphas = sched.alphas_cumprod.to(acc.device)
    emb, latents_dev = emb.to(acc.device), latents.to(acc.device)
    start, losses = time.time(), []
    bar = tqdm(total=total, initial=step, desc="finetuning UNet", disable=not (cfg.progress and acc.is_local_main_process))
    while step < total:
        idx = _batch(step, cfg, n, acc).to(acc.device)
        g = torch.Generator().manual_seed(_seed(cfg.seed, "step", step, acc.process_index))
        z0 = latents_dev[idx]
        noise = torch.randn(z0.shape, generator=g).to(acc.device)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g).to(acc.device)
        drop = (torch.rand(len(idx), generator=g) < cfg.prompts.null_rate).to(acc.device)
        cond = torch.where(drop[:, None, None], emb[0], emb[prompt_index.to(acc.device)[idx]])
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with acc.accumulate(unet), acc.autocast():
            pred = unet(zt, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(pred.float(), noise)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % cfg.log_every == 0 or step == total:
            mean = sum(losses) / len(losses)
            losses = []
            bar.set_postfix(loss=f"{mean:.4f}")
            if acc.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "loss": mean, "lr": lr_sched.get_last_lr()[0],
                                        "elapsed_s": round(time.time() - start, 2)}) + "\n")
        timed_out = cfg.max_minutes is not None and (time.time() - start) / 60 >= cfg.max_minutes
        timed_out = bool(acc.reduce(torch.tensor(float(timed_out), device=acc.device), "max").item())
        if step % cfg.checkpoint_every == 0 or step == total or timed_out:
            checkpoints.save(acc, out, step)
        if timed_out:
            break
    bar.close()

    unet = acc.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(params)
    if acc.is_main_process:
        _export(cfg, bundle, _merged_unet(unet), data, step, time.time() - start)
    acc.wait_for_everyone()
    return out


def _export(cfg: TrainConfig, bundle: SDBundle, unet, data: LabeledImages, step: int, seconds: float) -> None:
    """Write the diffusers SD folder (components swapped in atomically), prompts, run info and samples."""
    out = Path(cfg.out)
    bundle.unet = unet.to("cpu", torch.float32).eval()
    tmp = out / ".export.tmp"
    bundle.save_pretrained(tmp)
    for part in sorted(p.name for p in tmp.iterdir()):
        if (tmp / part).is_dir():
            replace_dir(tmp / part, out / part)
        else:
            (tmp / part).replace(out / part)
    tmp.rmdir()
    cfg.prompts.save(out)
    info = {k: v for k, v in asdict(cfg).items() if k != "prompts"}
    info.update(labels=data.labels, resolution=bundle.resolution, steps=step, train_seconds=round(seconds, 1))
    write_json(out / "diffmine_train.json", info)
    if cfg.samples_per_label:
        from .samples import sample_grid

        sample_grid(bundle, cfg.prompts, data.labels, out / "samples.png", per_label=cfg.samples_per_label,
                    seed=cfg.seed)
