"""The finetuner: one `accelerate` loop that adapts an SD UNet to labeled images (docs/method.md §1).

It runs on the runtime every command runs on (`Runtime.start_training`: accelerate's `Accelerator`
placed by the same policy): the models go to the runtime's device; the frozen parts encode in its
dtype, and the UNet, whose weights stay float32, computes its forwards under autocast to that dtype.

VAE latents and prompt embeddings are computed once and cached; only the UNet trains. All
randomness of a step (its batch, noise, timesteps, null-prompt dropout) is drawn from
generators seeded by (seed, step, process), so `--resume` continues exactly where a run stopped.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from finetune import checkpoints
from diffmine.core.files import output_folder, write_json
from diffmine.core.lock import writer_lock
from diffmine.core.runtime import Runtime, resolve_dtype
from diffmine.core.bundle import SDBundle
from diffmine.core.settings import ConfigError, read_config_file, resume_keys, save_config, to_dict
from diffmine.core.dataset import LabeledImages
from diffmine.core.errors import DataError
from diffmine.core.models import SCRATCH_BASE, load_bundle, resolve_model
from diffmine.core.seeds import stable_seed
from finetune.config import ADAPT_VAE_STEPS, SCRATCH_VAE_STEPS, TrainConfig, precision_of
from finetune.vae_train import VAEStopped

CROP_MARGIN = 8  # random crops: images are cached 1/8 larger, each sample takes a random window


_T0 = time.time()
_T_RUN = _T0


def _phase(text: str, progress: bool) -> None:
    """Say which phase starts (and how long the command has run), so no phase is a silent wait."""
    if progress:
        print(f"[finetune {time.time() - _T0:6.1f} s] {text}", flush=True)


# -- model ---------------------------------------------------------------------------------
def _base_bundle(cfg: TrainConfig, decoded, rt: Runtime, progress: bool) -> SDBundle:
    """The frozen parts and the UNet to train. `tiny-scratch` trains its VAE first, once, cached
    under a key of everything that shapes it (a different resolution or seed gets a new one)."""
    if cfg.base != SCRATCH_BASE:
        _phase(f"loading base model {cfg.base}", progress)
        return load_bundle(cfg.base, text_encoder=cfg.text_encoder)
    resolution = cfg.resolution or 64
    steps = cfg.vae_steps if cfg.vae_steps is not None else SCRATCH_VAE_STEPS
    key = stable_seed("tiny-scratch", resolution, cfg.seed, steps, decoded.key) % 10**12
    cached = Path(cfg.out, "cache", f"base-{key:012d}")
    if not cached.exists():
        if rt.is_main:
            from diffmine.core.tiny import build_tiny_bundle
            from finetune.vae_train import train_vae

            checkpoint = Path(cfg.out, "cache", f"vae-{key:012d}.pt")
            _phase(f"resuming the small VAE's training from {checkpoint} ({steps} steps in all)" if checkpoint.exists()
                   else f"training the small VAE from scratch ({steps} steps; slow on a CPU, once per "
                   "resolution/seed)", progress)
            bundle = build_tiny_bundle(resolution=resolution, seed=cfg.seed)
            _, images = decoded(bundle.resolution)
            bundle.vae.to(rt.device)  # trained in float32, as the UNet's weights
            train_vae(bundle.vae, torch.from_numpy(images), steps, seed=cfg.seed, progress=progress,
                      checkpoint=checkpoint,
                      deadline=None if cfg.max_minutes is None else _T_RUN + 60 * cfg.max_minutes)
            bundle.vae.to("cpu")
            with output_folder(cached, owned=None) as tmp:  # a cache entry: replaced whole
                bundle.save_pretrained(tmp)
        rt.wait()
    return load_bundle(cached)


# -- cached inputs -------------------------------------------------------------------------
def _cache(cfg: TrainConfig, data: LabeledImages, decoded, bundle: SDBundle, rt: Runtime,
           resolution: int, progress: bool, vae_key=None) -> dict:
    """Latents (posterior means) of every image and embeddings of every distinct prompt, once, by the
    frozen VAE and text encoder on the runtime's device in its dtype (kept as float32).

    With random crops the images are encoded at `resolution` + 1/8 and each step takes a random
    latent window of the training size (the VAE is local, so a latent crop ~ the crop's latent)."""
    path = Path(cfg.out, "cache", "inputs.pt")
    prompts_t = cfg.prompt_template()
    key = stable_seed([r.image_id for r in data], [r.labels for r in data], resolution, cfg.base, vae_key,
                      prompts_t.template, prompts_t.null_prompt, str(rt.dtype), cfg.random_flip)
    blob = torch.load(path) if rt.is_main and path.exists() else None
    if rt.is_main and (blob is None or blob["key"] != key):
        _phase(f"encoding {len(data)} images and their prompts once (cached in {path.parent})", progress)
        records, images = decoded(resolution)
        bundle.vae.to(rt.device, rt.dtype)
        bundle.text_encoder.to(rt.device, rt.dtype)
        def encode(arrays):
            return torch.cat([bundle.encode_images(torch.from_numpy(arrays[i:i + 32])).float().cpu()
                              for i in tqdm(range(0, len(arrays), 32), desc="encoding latents",
                                            disable=not progress)])

        latents = encode(images)
        # the mirror's own latents: an encoder is not mirror-symmetric, so flipping latents is not the same
        mirrored = encode(np.ascontiguousarray(images[..., ::-1])) if cfg.random_flip else None
        prompts = [prompts_t.null_prompt] + sorted({prompts_t.prompt(r.labels) for r in records})
        index = {p: i for i, p in enumerate(prompts)}
        blob = {
            "key": key, "image_ids": [r.image_id for r in records], "latents": latents, "mirrored": mirrored,
            "prompts": prompts, "embeddings": bundle.encode_prompts(prompts).float().cpu(),
            "prompt_index": torch.tensor([index[prompts_t.prompt(r.labels)] for r in records]),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
        bundle.vae.to("cpu", torch.float32)
        bundle.text_encoder.to("cpu", torch.float32)
    rt.wait()
    return blob if rt.is_main else torch.load(path)


# -- LoRA ----------------------------------------------------------------------------------
def _add_lora(unet, rank: int, seed: int) -> None:
    """LoRA adapters on the attention projections; their gaussian init is drawn from `seed`, not from
    whatever the global random state happens to be, so --seed fixes the whole run."""
    from peft import LoraConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed(seed, "lora"))
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                    target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


def _merged_unet(unet):
    """The plain UNet to export: LoRA deltas folded into the base weights."""
    if getattr(unet, "peft_config", None):
        unet.fuse_lora()
        unet.unload_lora()
    return unet


# -- the loop ------------------------------------------------------------------------------
def _batch(step: int, cfg: TrainConfig, n: int, rt: Runtime) -> torch.Tensor:
    """Indices of this process's share of global batch `step`: epoch permutations seeded by (seed, epoch)."""
    world = rt.world
    per_epoch = math.ceil(n / (cfg.batch_size * world))
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(cfg.seed, "epoch", epoch)))
    start = (k * world + rt.rank) * cfg.batch_size
    return perm[torch.arange(start, start + cfg.batch_size) % n]  # the last batch wraps around


def _total_steps(cfg: TrainConfig, n: int, world: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return cfg.epochs_or_default * math.ceil(n / (cfg.batch_size * world))


def _check_out(cfg: TrainConfig, out: Path, rt: Runtime) -> None:
    """No silent overwrite of a finished model; no resume under other settings than the checkpoint's."""
    has_run = (out / "model_index.json").exists() or checkpoints.latest(out) is not None
    if has_run and not cfg.resume:
        raise DataError(f"{out}: already holds a model or a run's checkpoints; pass --resume to continue "
                        "it, or choose another --out")
    saved = out / "config.json"
    if cfg.resume and has_run and saved.exists():
        before, now = read_config_file(saved), to_dict(cfg)
        same = [k for k in resume_keys(TrainConfig) if k != "dtype"]  # the precision: compared resolved, below
        diff = [(k, before[k], now[k]) for k in same if k in before and before[k] != now[k]]
        if resolve_dtype(precision_of(before), rt.device) != rt.dtype:
            diff.append(("dtype", precision_of(before), precision_of(now)))
        if diff:
            raise ConfigError(diff[0][0], f"differs from the run being resumed in {out} (" + "; ".join(
                f"{k}: {was!r} there, {now!r} now" for k, was, now in diff) + ")")


def _crop_latents(latents: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random size x size window of each latent (random-crop augmentation, docs/method.md §1)."""
    n, _, h, w = latents.shape
    ys = torch.randint(0, h - size + 1, (n,), generator=g).tolist()
    xs = torch.randint(0, w - size + 1, (n,), generator=g).tolist()
    return torch.stack([z[:, y:y + size, x:x + size] for z, y, x in zip(latents, ys, xs)])


def train(cfg: TrainConfig, progress: bool = True, again: str = "--resume continues") -> Path:
    """Finetune `cfg.base` on `cfg.data`; returns the output folder (a diffusers SD folder).

    Everything is checked before any work; a run that fails before its first checkpoint leaves
    no output folder behind. `again`: how the caller's user continues a stopped run (a command
    that runs the finetuner, as `diffmine assets`, has no --resume of its own)."""
    cfg.validate()
    if cfg.base != SCRATCH_BASE:
        resolve_model(cfg.base, "base")  # a mistyped folder fails here, not after minutes
    out = Path(cfg.out)
    rt = Runtime.start_training(cfg, dtype=cfg.precision)  # --mixed-precision, when given, names the dtype
    with writer_lock(out, rt):  # one writer per model folder (all processes of a launch are one)
        _check_out(cfg, out, rt)
        created = not out.exists()
        global _T_RUN
        _T_RUN = time.time()  # --max-minutes counts from here when the VAE trains first
        try:
            return _train(cfg, out, rt, progress, again)
        except VAEStopped as stop:
            _phase(f"stopped after {cfg.max_minutes} min in VAE training at step {stop.step} of {stop.steps}; "
                   f"{again}", progress)
            return out
        except BaseException:
            keep = out.exists() and (checkpoints.latest(out) is not None or any(out.glob("cache/base-*"))
                                     or any(out.glob("cache/vae-*")))  # VAE training states and adapted VAEs
            if created and out.exists() and not keep:
                import shutil
                shutil.rmtree(out, ignore_errors=True)
            raise


def _train(cfg: TrainConfig, out: Path, rt: Runtime, progress: bool, again: str) -> Path:
    acc = rt.accelerator
    progress = progress and acc.is_local_main_process
    data = LabeledImages(cfg.data, cfg.label_column, cfg.skip_bad)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
    memo: dict[int, tuple] = {}

    def decoded(resolution: int):  # images are decoded at most once, shared by VAE training and caching
        if resolution not in memo:
            _phase(f"decoding {len(data)} images at {resolution} px", progress)
            memo[resolution] = data.load_arrays(resolution, progress=progress)
        return memo[resolution]
    decoded.key = stable_seed([r.image_id for r in data])

    bundle = _base_bundle(cfg, decoded, rt, progress)
    size = cfg.resolution or bundle.resolution
    recon, vae_key = _adapted_vae(cfg, bundle, data, decoded, size, rt, progress)
    factor = bundle.vae_scale_factor
    if size % (factor * 2 ** (len(bundle.unet.config.block_out_channels) - 1)):
        raise ConfigError("resolution", f"must be a multiple of {factor * 2 ** (len(bundle.unet.config.block_out_channels) - 1)} "
                          f"px for {cfg.base}, got {size}")
    cache_size = size + (-(-size // CROP_MARGIN // factor) * factor if cfg.random_crop else 0)
    inputs = _cache(cfg, data, decoded, bundle, rt, cache_size, progress, vae_key)
    memo.clear()
    latents, emb, prompt_index = inputs["latents"], inputs["embeddings"], inputs["prompt_index"]
    n = len(latents)
    null_rate = cfg.prompt_template().null_rate

    unet = bundle.unet.to(rt.device, torch.float32)  # trained weights stay float32 (rt.autocast below)
    unet.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.lora_rank:
        unet.requires_grad_(False)
        _add_lora(unet, cfg.lora_rank, cfg.seed)
        if vae_key is not None:  # new latents: the fresh input and output layers must learn them whole
            unet.conv_in.requires_grad_(True)
            unet.conv_out.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)  # constant (docs/method.md §1), kept in state
    unet, opt, lr_sched = acc.prepare(unet, opt, lr_sched)  # placed by the runtime (device_placement=False)
    ema = None
    if cfg.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.ema_decay)
        ema.to(rt.device)
        acc.register_for_checkpointing(ema)

    step = 0
    found = checkpoints.latest(out) if cfg.resume else None
    if found:
        _phase(f"resuming from {found[0]} (step {found[1]})", progress)
        acc.load_state(str(found[0]))
        step = found[1]
        if ema is not None:  # load_state restores the EMA's shadow weights on the CPU
            ema.to(rt.device)
    total = _total_steps(cfg, n, rt.world)
    log_path = out / "train_log.jsonl"
    elapsed_before = 0.0
    if rt.is_main:  # drop log lines written after the checkpoint we resume from
        old = [json.loads(l) for l in log_path.read_text().splitlines()] if (found and log_path.exists()) else []
        old = [r for r in old if r["step"] <= step]
        elapsed_before = old[-1]["elapsed_s"] if old else 0.0  # elapsed time goes on across resumes
        log_path.write_text("".join(json.dumps(r) + "\n" for r in old))

    sched = bundle.scheduler
    dev = rt.device
    alphas = sched.alphas_cumprod.to(dev)
    emb, latents_dev = emb.to(dev), latents.to(dev)
    mirrored_dev = inputs["mirrored"].to(dev) if cfg.random_flip else None
    latent_size = size // factor
    start, losses = time.time(), []
    _phase(f"finetuning the UNet: steps {step} -> {total}, batch {cfg.batch_size}, {size} px", progress)
    bar = tqdm(total=total, initial=step, desc="finetuning UNet", disable=not progress, dynamic_ncols=True)
    while step < total:
        idx = _batch(step, cfg, n, rt).to(dev)
        g = torch.Generator().manual_seed(stable_seed(cfg.seed, "step", step, rt.rank))
        z0 = latents_dev[idx]
        if cfg.random_flip:
            mirror = (torch.rand(len(idx), generator=g) < 0.5).to(dev)
            z0 = torch.where(mirror[:, None, None, None], mirrored_dev[idx], z0)
        if cfg.random_crop:
            z0 = _crop_latents(z0, latent_size, g)
        noise = torch.randn(z0.shape, generator=g).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=g).to(dev)
        drop = (torch.rand(len(idx), generator=g) < null_rate).to(dev)
        cond = torch.where(drop[:, None, None], emb[0], emb[prompt_index.to(dev)[idx]])
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with acc.accumulate(unet), rt.autocast():
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
            if rt.is_main:
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": step, "loss": mean, "lr": lr_sched.get_last_lr()[0],
                                        "elapsed_s": round(elapsed_before + time.time() - start, 2)}) + "\n")
        timed_out = cfg.max_minutes is not None and (time.time() - start) / 60 >= cfg.max_minutes
        timed_out = bool(acc.reduce(torch.tensor(float(timed_out), device=dev), "max").item())
        if step % cfg.checkpoint_every == 0 or step == total or timed_out:
            checkpoints.save(acc, out, step)
        if timed_out:
            _phase(f"stopped after {cfg.max_minutes} min at step {step}; {again}", progress)
            break
    bar.close()

    unet = acc.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(params)
    if rt.is_main:
        _phase(f"exporting the diffusers folder to {out}", progress)
        _export(cfg, bundle, _merged_unet(unet), data, step, elapsed_before + time.time() - start, size, progress,
                recon, rt)
    rt.wait()
    return out


def _reconstruction(cfg: TrainConfig, bundle: SDBundle, data: LabeledImages, size: int, rt: Runtime,
                    warn: bool = True) -> dict:
    """The VAE's reconstruction PSNR on a sample of the training images (warned when low), in float32."""
    from diffmine.core.reconstruction import check_reconstruction, dataset_loader

    bundle.vae.to(rt.device)
    try:
        return check_reconstruction(bundle.vae, dataset_loader(data, size), len(data), size, what=cfg.data,
                                    warn=warn)
    finally:
        bundle.vae.to("cpu")


def _adapted_vae(cfg: TrainConfig, bundle: SDBundle, data: LabeledImages, decoded, size: int,
                 rt: Runtime, progress: bool) -> tuple[dict, str | None]:
    """Measure the base's VAE on the user's images and, when --adapt-vae asks for it, train it on
    them first (finetune/vae_adapt.py). Returns the run's reconstruction figures and a key of the
    adapted VAE (None when the base's own is kept); every process ends with the same VAE."""
    from finetune import vae_adapt

    key = None
    recon = {}
    if rt.is_main:
        recon = _reconstruction(cfg, bundle, data, size, rt, warn=False)
        if cfg.base != SCRATCH_BASE and vae_adapt.wanted(cfg.adapt_vae, bundle.vae, recon):
            steps = cfg.vae_steps if cfg.vae_steps is not None else ADAPT_VAE_STEPS
            key = (cfg.base, size, cfg.seed, steps, decoded.key, vae_adapt.design(cfg.adapt_vae_downsampling))
            # trained in float32, whatever the runtime's dtype
            fresh = vae_adapt.starting_autoencoder(bundle.vae, cfg.seed, cfg.adapt_vae_downsampling).to(rt.device)
            what = "its VAE" if fresh is bundle.vae else "a fast autoencoder"
            _phase(f"the base reconstructs these images at {recon['reconstruction_psnr_db']:.1f} dB (floor "
                   f"{recon['reconstruction_floor_db']:g} dB): training {what} on them first ({steps} "
                   f"steps, --adapt-vae {cfg.adapt_vae}; 'never' skips this)", progress)
            _, images = decoded(size)
            deadline = None if cfg.max_minutes is None else _T_RUN + 60 * cfg.max_minutes
            bundle.vae, seconds = vae_adapt.adapt(fresh, torch.from_numpy(images), Path(cfg.out, "cache"), key,
                                                  steps, cfg.seed, progress, deadline)
            bundle.vae.to("cpu").eval().requires_grad_(False)
            before = recon["reconstruction_psnr_db"]
            recon = _reconstruction(cfg, bundle, data, size, rt)
            recon.update(vae_adapted_steps=steps, vae_adapt_seconds=round(seconds, 1),
                         reconstruction_before_adapt_psnr_db=before)
            _phase(f"VAE adapted: {before:.1f} dB -> {recon['reconstruction_psnr_db']:.1f} dB on "
                   f"{recon['reconstruction_images']} of these images; the UNet learns its "
                   f"{fresh.config.latent_channels}-channel latents", progress)
        else:
            from diffmine.core.reconstruction import warn_if_low

            warn_if_low(recon, cfg.data)
    if rt.world > 1:
        key = rt.broadcast(key)
        if key is not None and not rt.is_main:  # the main process cached it before this barrier
            bundle.vae = vae_adapt.load_adapted(Path(cfg.out, "cache"), key)
    bundle.unet = vae_adapt.fit_unet(bundle.unet, bundle.vae.config.latent_channels, cfg.seed)
    return recon, (None if key is None else repr(key))


def _export(cfg: TrainConfig, bundle: SDBundle, unet, data: LabeledImages, step: int, seconds: float,
            size: int, progress: bool, recon: dict, rt: Runtime) -> None:
    """Write the diffusers SD folder (components swapped in atomically), prompts, run info, and samples
    drawn on the runtime's device in its dtype."""
    out = Path(cfg.out)
    unet = unet.to("cpu", torch.float32).eval()
    # the folder says its resolution, and its base as named, not where it was read from: the UNet's config (and so
    # the model's fingerprint) is the same from any checkout, and a resumed finished run keeps its typicality stores
    unet.register_to_config(sample_size=size // bundle.vae_scale_factor, _name_or_path=str(cfg.base))
    bundle.unet = unet
    with output_folder(out, owned=()) as tmp:  # the components swap in together; checkpoints and caches stay
        bundle.save_pretrained(tmp)
    prompts = cfg.prompt_template()
    prompts.save(out)
    info = to_dict(cfg)
    info.update(labels=data.labels, resolution=size, steps=step, train_seconds=round(seconds, 1), **recon)
    write_json(out / "diffmine_train.json", info)
    if cfg.samples_per_label:
        from finetune.samples import sample_grid

        _phase("drawing samples.png", progress)
        sample_grid(rt.place(bundle.eval()), prompts, data.labels, out / "samples.png", per_label=cfg.samples_per_label,
                    seed=cfg.seed)
