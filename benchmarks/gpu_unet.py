#!/usr/bin/env python3
"""GPU throughput benchmark for an SD-v1.5-sized UNet (random weights, no downloads).

Measures, on CUDA (or on CPU with --smoke and a tiny UNet, for sanity checks):

1. typicality forward throughput: draws/s, one draw = a (null prompt, label prompt) pair of
   UNet samples, batched as one forward of batch 2*draws under torch.inference_mode();
   over dtype (fp32 / tf32 / bf16 / fp16), batch size, attention processor (SDPA =
   diffusers AttnProcessor2_0 vs classic math AttnProcessor), channels_last, SDPA kernel,
   fused QKV, and torch.compile on the best eager config (compile time reported apart);
2. finetuning step throughput: images/s of an epsilon-MSE step with fused AdamW, fp32 vs
   bf16 autocast, with and without gradient checkpointing, plus peak memory;
3. DIFT feature extraction (forward hook on up_blocks[1]) at t=161 with 8 noise draws per
   image, full forward vs stopping the forward once the hooked block has run.

Every section has a time budget; results are written to --json-out after every measurement
so a run cut short keeps what it measured. Output: human-readable lines, then ONE JSON line.

    python benchmarks/gpu_unet.py --smoke              # CPU, tiny UNet, seconds
    python benchmarks/gpu_unet.py --json-out out.json  # CUDA, full SD-v1.5 size
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_layout import UNET as _SD15_UNET  # noqa: E402  the published config, written once there

# SD v1.5 unet/config.json without its _class/_version keys.
SD15_UNET_CONFIG = {k: v for k, v in _SD15_UNET.items() if not k.startswith("_")}

# Tiny stand-in for --smoke (same block types, so every code path is exercised on CPU).
TINY_UNET_CONFIG = dict(
    SD15_UNET_CONFIG,
    block_out_channels=[32, 64],
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=4,
    down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    sample_size=8,
)

TEXT_LEN = 77
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DIFT_T = 161
DIFT_DRAWS = 8


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_tf32(on: bool) -> None:
    """'tf32' = TF32 for matmuls too; 'fp32' = PyTorch defaults (strict fp32 matmul, cuDNN conv TF32)."""
    torch.backends.cuda.matmul.allow_tf32 = on


def bench(fn, device, warmup=2, min_reps=3, max_reps=15, target_s=1.0):
    """Median seconds per call of fn (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    t0 = time.perf_counter()
    while True:
        if device.type == "cuda":
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            a = time.perf_counter()
            fn()
            times.append(time.perf_counter() - a)
        if len(times) >= max_reps or (len(times) >= min_reps and time.perf_counter() - t0 >= target_s):
            break
    return statistics.median(times), times


def reset_mem(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device):
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return None


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a = a.double()
    ref = ref.double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


class Results:
    """Accumulates figures; rewrites the JSON file after every update (partial runs keep data)."""

    def __init__(self, path: str | None):
        self.path = path
        self.d: dict = {}

    def put(self, key, value):
        self.d[key] = value
        self.flush()

    def sub(self, key, name, value):
        self.d.setdefault(key, {})[name] = value
        self.flush()

    def get(self, key, name=None):
        v = self.d.get(key)
        if name is None:
            return v
        return (v or {}).get(name)

    def flush(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.d, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


def build_unet(cfg: dict, device: torch.device):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):  # initialise directly on the device (fast for 860M params)
        unet = UNet2DConditionModel(**cfg)
    return unet.eval().requires_grad_(False)


def set_attention(unet, kind: str):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor() if kind == "math" else AttnProcessor2_0())


def sdpa_kernel_ctx(name: str | None):
    if not name:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "mathsdpa": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([backend])


class Ctx:
    """Shared state of one benchmark process."""

    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.device = torch.device("cuda" if (torch.cuda.is_available() and not args.cpu) else "cpu")
        self.cfg = TINY_UNET_CONFIG if self.smoke else SD15_UNET_CONFIG
        self.text_dim = self.cfg["cross_attention_dim"]
        self.lat = [8, 4] if self.smoke else [64, 32]  # latent sides: 512 px and 256 px images
        self.res = Results(args.json_out)
        self.unet_fp32 = None
        self.copies: dict = {}

    # one model per weight dtype, made from the same fp32 weights
    def unet(self, wdtype: torch.dtype):
        if self.unet_fp32 is None:
            t = time.perf_counter()
            self.unet_fp32 = build_unet(self.cfg, self.device)
            n = sum(p.numel() for p in self.unet_fp32.parameters())
            log(f"built UNet2DConditionModel: {n / 1e6:.1f} M params in {time.perf_counter() - t:.1f} s")
            self.res.put("unet_params_m", round(n / 1e6, 1))
        if wdtype == torch.float32:
            return self.unet_fp32
        if wdtype not in self.copies:
            self.copies[wdtype] = copy.deepcopy(self.unet_fp32).to(wdtype)
        return self.copies[wdtype]

    def drop_copies(self):
        self.copies.clear()
        reset_mem(self.device)


def typicality_inputs(ctx: Ctx, batch: int, lat: int, dtype, channels_last: bool, seed: int = 0):
    """batch UNet samples = batch/2 draws: first half null prompt, second half label prompt."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dev = ctx.device
    draws = max(1, batch // 2)
    x = torch.randn(2 * draws, 4, lat, lat, generator=g).to(dev, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (draws,), generator=g).repeat(2).to(dev)
    null = torch.randn(1, TEXT_LEN, ctx.text_dim, generator=g).expand(draws, -1, -1)
    cond = torch.randn(1, TEXT_LEN, ctx.text_dim, generator=g).expand(draws, -1, -1)
    emb = torch.cat([null, cond]).to(dev, dtype).contiguous()
    return x, t, emb


# ----------------------------------------------------------------------------------------------
# 0. device ceilings and FLOP count


def section_ceiling(ctx: Ctx):
    dev = ctx.device
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        log(f"device: {p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB")
        n = 8192
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        sec, _ = bench(lambda: a @ b, dev, warmup=3, min_reps=10, max_reps=20, target_s=0.2)
        tf = 2 * n**3 / sec / 1e12
        log(f"bf16 8192^3 matmul: {tf:.0f} TFLOP/s")
        ctx.res.put("matmul_bf16_tflops", round(tf, 1))
        del a, b
    # FLOPs of one UNet sample at each latent size (conv, matmul, attention as counted by torch).
    from torch.utils.flop_counter import FlopCounterMode

    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    unet = ctx.unet(dt)
    for lat in ctx.lat:
        x, t, emb = typicality_inputs(ctx, 2, lat, dt, False)
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            unet(x[:1], t[:1], encoder_hidden_states=emb[:1])
        gf = fc.get_total_flops() / 1e9
        log(f"UNet forward, latent {lat}x{lat}: {gf:.0f} GFLOP per sample")
        ctx.res.sub("flops_per_sample_gflop", f"lat{lat}", round(gf, 2))


# ----------------------------------------------------------------------------------------------
# 1. typicality forward


def typ_name(lat, dtype, batch, attn="sdpa", cl=False, extra=""):
    return f"lat{lat}_{dtype}_b{batch}_{attn}" + ("_cl" if cl else "") + (f"_{extra}" if extra else "")


def run_typicality(ctx: Ctx, lat, dtype_name, batch, attn="sdpa", cl=False, kernel=None, fused=False,
                   extra="", deadline=None, target_s=1.0):
    name = typ_name(lat, dtype_name, batch, attn, cl, extra)
    if deadline is not None and time.monotonic() > deadline:
        log(f"  skip {name}: section budget spent")
        ctx.res.sub("typicality_skipped", name, "budget")
        return None
    dev = ctx.device
    dt = DTYPES[dtype_name]
    set_tf32(dtype_name == "tf32")
    unet = ctx.unet(dt)
    if fused:
        unet = copy.deepcopy(unet)
        unet.fuse_qkv_projections()
    else:
        set_attention(unet, attn)
    if cl:
        unet.to(memory_format=torch.channels_last)
    reset_mem(dev)
    try:
        x, t, emb = typicality_inputs(ctx, batch, lat, dt, cl)

        def step():
            with torch.inference_mode(), sdpa_kernel_ctx(kernel):
                return unet(x, t, encoder_hidden_states=emb).sample

        out = step()
        finite = bool(torch.isfinite(out).all())
        sec, times = bench(step, dev, target_s=target_s)
        draws_s = (batch // 2) / sec
        mem = peak_gb(dev)
        flops = ctx.res.get("flops_per_sample_gflop", f"lat{lat}")
        tfl = f", {flops * batch / sec / 1e3:.0f} TFLOP/s" if flops else ""
        log(f"  {name:42s} {draws_s:9.1f} draws/s  ({sec * 1e3:8.1f} ms/fwd, {len(times)} reps, "
            f"peak {mem} GB{tfl}){'' if finite else '  NON-FINITE OUTPUT'}")
        ctx.res.sub("typicality_draws_per_s", name, round(draws_s, 2))
        ctx.res.sub("typicality_ms_per_forward", name, round(sec * 1e3, 2))
        if mem is not None:
            ctx.res.sub("typicality_peak_mem_gb", name, mem)
        if not finite:
            ctx.res.sub("typicality_nonfinite", name, True)
        return draws_s
    except Exception as exc:  # OOM or unsupported kernel: record and go on
        msg = "OOM" if is_oom(exc) else f"{type(exc).__name__}: {str(exc)[:200]}"
        log(f"  {name:42s} FAILED: {msg}")
        ctx.res.sub("typicality_errors", name, msg)
        return None
    finally:
        if cl:
            unet.to(memory_format=torch.contiguous_format)
        if not fused:
            set_attention(unet, "sdpa")
        set_tf32(False)
        reset_mem(dev)


def accuracy_check(ctx: Ctx):
    """Relative error of each dtype / attention path against fp32 strict, same inputs (fresh)."""
    lat = ctx.lat[0]
    batch = 4
    outs = {}
    for dname in ("fp32", "tf32", "bf16", "fp16"):
        for attn in ("sdpa", "math") if dname in ("fp32", "bf16") else ("sdpa",):
            dt = DTYPES[dname]
            set_tf32(dname == "tf32")
            unet = ctx.unet(dt)
            set_attention(unet, attn)
            x, t, emb = typicality_inputs(ctx, batch, lat, dt, False, seed=123)
            try:
                with torch.inference_mode():
                    outs[(dname, attn)] = unet(x, t, encoder_hidden_states=emb).sample.float().cpu()
            except Exception as exc:
                log(f"  accuracy {dname}/{attn}: FAILED {type(exc).__name__}: {str(exc)[:150]}")
            finally:
                set_attention(unet, "sdpa")
                set_tf32(False)
    ref = outs.get(("fp32", "math"))
    if ref is None:
        return
    for (dname, attn), o in outs.items():
        if (dname, attn) == ("fp32", "math"):
            continue
        e = rel_err(o, ref) if torch.isfinite(o).all() else float("nan")
        log(f"  rel err vs fp32/math: {dname}/{attn}: {e:.2e}")
        ctx.res.sub("accuracy_rel_err_vs_fp32", f"{dname}_{attn}", None if math.isnan(e) else float(f"{e:.3e}"))


def section_typicality(ctx: Ctx, budget_s: float):
    dev = ctx.device
    deadline = time.monotonic() + budget_s
    L, S = ctx.lat
    if ctx.smoke:
        B_main, B_sweep, B_math = 4, [2, 4, 8], 4
    else:
        B_main, B_sweep, B_math = 64, [8, 32, 64, 128, 256], 32
    log(f"\n== 1. typicality forward (draws/s; one draw = null + label prompt; budget {budget_s:.0f} s)")
    log("  accuracy (B=4, fresh random inputs):")
    accuracy_check(ctx)
    R = ctx.res
    # cuDNN autotuning off vs on (everything after this runs with it on)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
        off = run_typicality(ctx, L, "bf16", B_main, extra="nocudnnbench", deadline=deadline)
        torch.backends.cudnn.benchmark = True
    else:
        off = None
    # dtypes at the main batch
    v = {d: run_typicality(ctx, L, d, B_main, deadline=deadline) for d in ("bf16", "fp16", "fp32", "tf32")}
    if off and v["bf16"]:
        R.put("cudnn_benchmark_gain", round(v["bf16"] / off, 3))
    if v["bf16"] and v["fp32"]:
        R.put("bf16_over_fp32", round(v["bf16"] / v["fp32"], 2))
    if v["tf32"] and v["fp32"]:
        R.put("tf32_over_fp32", round(v["tf32"] / v["fp32"], 2))
    if v["fp16"] and v["bf16"]:
        R.put("fp16_over_bf16", round(v["fp16"] / v["bf16"], 3))
    half = "fp16" if (v["fp16"] or 0) > (v["bf16"] or 0) * 1.03 else "bf16"
    # attention: SDPA vs classic math at a batch where math still fits comfortably
    a_sdpa = run_typicality(ctx, L, "bf16", B_math, deadline=deadline)
    a_math = run_typicality(ctx, L, "bf16", B_math, attn="math", deadline=deadline)
    if a_sdpa and a_math:
        R.put("sdpa_over_math", round(a_sdpa / a_math, 2))
    f_sdpa = run_typicality(ctx, L, "fp32", B_math, deadline=deadline) if not ctx.smoke else None
    f_math = run_typicality(ctx, L, "fp32", B_math, attn="math", deadline=deadline) if not ctx.smoke else None
    if f_sdpa and f_math:
        R.put("sdpa_over_math_fp32", round(f_sdpa / f_math, 2))
    # batch sweep
    for b in B_sweep:
        if R.get("typicality_draws_per_s", typ_name(L, "bf16", b)) is None:
            run_typicality(ctx, L, "bf16", b, deadline=deadline)
    # channels_last at the main batch and the largest
    cl = run_typicality(ctx, L, "bf16", B_main, cl=True, deadline=deadline)
    if cl and v["bf16"]:
        R.put("channels_last_gain", round(cl / v["bf16"], 3))
    run_typicality(ctx, L, "bf16", B_sweep[-2], cl=True, deadline=deadline)
    if half == "fp16":
        run_typicality(ctx, L, "fp16", B_sweep[-2], deadline=deadline)
    # 256 px images (32x32 latents)
    for b in B_sweep[1:] + ([512] if not ctx.smoke else []):
        run_typicality(ctx, S, "bf16", b, deadline=deadline)
    run_typicality(ctx, S, "fp32", B_main, deadline=deadline)
    run_typicality(ctx, S, "bf16", B_main, attn="math", deadline=deadline)
    # lower priority: SDPA kernel choice and fused QKV projections
    if dev.type == "cuda":
        for k in ("flash", "efficient", "cudnn"):
            run_typicality(ctx, L, "bf16", B_main, kernel=k, extra=f"k-{k}", deadline=deadline)
    run_typicality(ctx, L, "bf16", B_main, fused=True, extra="fusedqkv", deadline=deadline)
    ctx.drop_copies()
    # best eager config at 512 px
    best = None
    for name, val in (R.get("typicality_draws_per_s") or {}).items():
        if name.startswith(f"lat{L}_") and (best is None or val > best[1]):
            best = (name, val)
    if best:
        R.put("best_eager_typicality_config", best[0])
        R.put("best_typicality_config", best[0])
        R.put("best_typicality_draws_per_s", best[1])
        log(f"  best eager at lat{L}: {best[0]} = {best[1]:.1f} draws/s")


# ----------------------------------------------------------------------------------------------
# 2. finetuning step


def run_train(ctx: Ctx, mode: str, batch: int, ckpt: bool, deadline: float):
    name = f"{mode}_b{batch}" + ("_ckpt" if ckpt else "")
    if time.monotonic() > deadline:
        log(f"  skip {name}: section budget spent")
        ctx.res.sub("train_skipped", name, "budget")
        return None
    dev = ctx.device
    lat = ctx.lat[0]
    unet = ctx.unet(torch.float32)
    unet.train().requires_grad_(True)
    if ckpt:
        unet.enable_gradient_checkpointing()
    opt = None
    reset_mem(dev)
    try:
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-6, weight_decay=1e-2, fused=dev.type == "cuda")
        g = torch.Generator(device="cpu").manual_seed(batch)
        x0 = torch.randn(batch, 4, lat, lat, generator=g).to(dev)
        noise = torch.randn(batch, 4, lat, lat, generator=g).to(dev)
        t = torch.randint(0, 1000, (batch,), generator=g).to(dev)
        emb = torch.randn(batch, TEXT_LEN, ctx.text_dim, generator=g).to(dev)
        ab = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, device=dev) ** 2
        ab = torch.cumprod(1 - ab, 0)[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        amp = (torch.autocast(dev.type, dtype=torch.bfloat16) if mode == "bf16amp" else nullcontext())
        set_tf32(mode == "tf32")  # 'fp32' = PyTorch defaults (strict fp32 matmul, cuDNN conv TF32)

        def step():
            with amp:
                pred = unet(xt, t, encoder_hidden_states=emb).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        sec, times = bench(step, dev, warmup=2, min_reps=3, max_reps=8, target_s=1.5)
        ips = batch / sec
        mem = peak_gb(dev)
        log(f"  train {name:22s} {ips:8.1f} images/s ({sec * 1e3:8.1f} ms/step, {len(times)} reps, peak {mem} GB)")
        ctx.res.sub("train_images_per_s", name, round(ips, 2))
        ctx.res.sub("train_ms_per_step", name, round(sec * 1e3, 2))
        if mem is not None:
            ctx.res.sub("train_peak_mem_gb", name, mem)
        return ips
    except Exception as exc:
        msg = "OOM" if is_oom(exc) else f"{type(exc).__name__}: {str(exc)[:200]}"
        log(f"  train {name:22s} FAILED: {msg}")
        ctx.res.sub("train_errors", name, msg)
        if is_oom(exc):
            ctx.res.sub("train_peak_mem_gb", name, "OOM")
        return None
    finally:
        set_tf32(False)
        opt = None  # frees the optimizer state before the next configuration
        for p in unet.parameters():
            p.grad = None
        if ckpt:
            unet.disable_gradient_checkpointing()
        unet.eval().requires_grad_(False)
        reset_mem(dev)


def section_train(ctx: Ctx, budget_s: float):
    deadline = time.monotonic() + budget_s
    ctx.drop_copies()
    batches = [2, 4] if ctx.smoke else [8, 16, 32]
    log(f"\n== 2. finetuning step (epsilon MSE, fused AdamW, lat {ctx.lat[0]}; budget {budget_s:.0f} s)")
    # priority order: the likely default first, fp32 last
    for mode in ctx.args.train_modes.split(","):
        for ckpt in (False, True):
            for b in batches:
                run_train(ctx, mode, b, ckpt, deadline)
    R = ctx.res
    a = R.get("train_images_per_s", f"bf16amp_b{batches[0]}")
    f = R.get("train_images_per_s", f"fp32_b{batches[0]}")
    if a and f:
        R.put("train_bf16amp_over_fp32", round(a / f, 2))
    a2 = R.get("train_images_per_s", f"bf16amp_b{batches[0]}_ckpt")
    if a and a2:
        R.put("train_ckpt_slowdown", round(a / a2, 2))


# ----------------------------------------------------------------------------------------------
# 3. DIFT features


class _Stop(Exception):
    pass


def section_dift(ctx: Ctx, budget_s: float):
    from diffusers import DDPMScheduler

    deadline = time.monotonic() + budget_s
    dev = ctx.device
    lat = ctx.lat[0]
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear")
    log(f"\n== 3. DIFT features (up_blocks[1] hook, t={DIFT_T}, {DIFT_DRAWS} draws/image, lat {lat}; "
        f"budget {budget_s:.0f} s)")
    variants = [("bf16", 1, False), ("bf16", 1, True), ("bf16", 8, False), ("bf16", 8, True), ("fp32", 1, False)]
    if ctx.smoke:
        variants = [("bf16", 1, False), ("bf16", 1, True), ("fp32", 2, True)]
    for dname, n_img, early in variants:
        name = f"{dname}_{n_img}img_b{n_img * DIFT_DRAWS}" + ("_earlystop" if early else "_full")
        if time.monotonic() > deadline:
            log(f"  skip {name}: section budget spent")
            continue
        dt = DTYPES[dname]
        unet = ctx.unet(dt)
        feats = {}

        def hook(_m, _i, out):
            feats["f"] = out
            if early:
                raise _Stop

        h = unet.up_blocks[1].register_forward_hook(hook)
        reset_mem(dev)
        try:
            g = torch.Generator(device="cpu").manual_seed(7)
            z0 = torch.randn(n_img, 4, lat, lat, generator=g).to(dev, dt)
            emb = torch.randn(n_img, TEXT_LEN, ctx.text_dim, generator=g).to(dev, dt)
            z0r = z0.repeat_interleave(DIFT_DRAWS, 0)
            embr = emb.repeat_interleave(DIFT_DRAWS, 0)
            t = torch.full((n_img * DIFT_DRAWS,), DIFT_T, device=dev, dtype=torch.long)

            def step():
                with torch.inference_mode():
                    noise = torch.randn_like(z0r)
                    zt = sched.add_noise(z0r, noise, t)
                    try:
                        unet(zt, t, encoder_hidden_states=embr)
                    except _Stop:
                        pass
                    f = feats["f"]
                    return f.view(n_img, DIFT_DRAWS, *f.shape[1:]).float().mean(1)

            f = step()
            sec, times = bench(step, dev, target_s=1.0)
            ips = n_img / sec
            log(f"  dift {name:30s} {ips:8.1f} images/s ({sec * 1e3:7.1f} ms/batch, feature {tuple(f.shape[1:])}, "
                f"peak {peak_gb(dev)} GB)")
            ctx.res.sub("dift", name, round(ips, 2))
        except Exception as exc:
            msg = "OOM" if is_oom(exc) else f"{type(exc).__name__}: {str(exc)[:200]}"
            log(f"  dift {name} FAILED: {msg}")
            ctx.res.sub("dift_errors", name, msg)
        finally:
            h.remove()
            reset_mem(dev)
    d = ctx.res.get("dift") or {}
    main = d.get(f"bf16_1img_b{DIFT_DRAWS}_full")
    if main:
        ctx.res.put("dift_images_per_s", main)
    es = d.get(f"bf16_1img_b{DIFT_DRAWS}_earlystop")
    if main and es:
        ctx.res.put("dift_earlystop_gain", round(es / main, 2))
    if d:
        best = max(d.items(), key=lambda kv: kv[1])
        ctx.res.put("dift_best", {"config": best[0], "images_per_s": best[1]})
    ctx.drop_copies()


# ----------------------------------------------------------------------------------------------
# 4. torch.compile (in a child process with a hard timeout: a stuck compile cannot eat the run)


def compile_worker(args):
    """Child: eager vs compiled throughput of one typicality config; writes a JSON file."""
    ctx = Ctx(args)
    dev = ctx.device
    out = {"mode": args.compile_mode, "config": None}

    def dump():
        with open(args.worker_out, "w") as f:
            json.dump(out, f)

    lat, dname, batch, cl = args.w_lat, args.w_dtype, args.w_batch, bool(args.w_cl)
    out["config"] = typ_name(lat, dname, batch, "sdpa", cl)
    torch.backends.cudnn.benchmark = True
    set_tf32(dname == "tf32")
    dt = DTYPES[dname]
    unet = ctx.unet(dt)
    if dt != torch.float32:
        ctx.unet_fp32 = None  # keep only the copy we use
        reset_mem(dev)
    if cl:
        unet.to(memory_format=torch.channels_last)
    x, t, emb = typicality_inputs(ctx, batch, lat, dt, cl)
    draws = batch // 2

    def run(m):
        with torch.inference_mode():
            return m(x, t, encoder_hidden_states=emb).sample

    sec, _ = bench(lambda: run(unet), dev, target_s=1.0)
    out["eager_draws_per_s"] = round(draws / sec, 2)
    ref = run(unet).float()
    dump()
    log(f"  [compile {args.compile_mode}] eager {out['config']}: {draws / sec:.1f} draws/s")
    kw = {} if args.compile_mode == "default" else {"mode": args.compile_mode}
    cunet = torch.compile(unet, **kw)
    t0 = time.perf_counter()
    o = run(cunet)
    sync(dev)
    out["compile_time_s"] = round(time.perf_counter() - t0, 1)
    dump()
    log(f"  [compile {args.compile_mode}] first call (compile) {out['compile_time_s']} s")
    out["rel_err_vs_eager"] = float(f"{rel_err(o.float(), ref):.3e}")
    sec_c, times = bench(lambda: run(cunet), dev, warmup=3, target_s=1.5)
    out["compiled_draws_per_s"] = round(draws / sec_c, 2)
    out["speedup"] = round(sec / sec_c, 3)
    dump()
    log(f"  [compile {args.compile_mode}] compiled: {draws / sec_c:.1f} draws/s ({len(times)} reps), "
        f"x{sec / sec_c:.3f} over eager, rel err vs eager {out['rel_err_vs_eager']:.1e}")


def section_compile(ctx: Ctx, budget_s: float, modes):
    log(f"\n== 4. torch.compile on the best eager typicality config (budget {budget_s:.0f} s)")
    R = ctx.res
    best = R.get("best_eager_typicality_config")
    L = ctx.lat[0]
    # parse e.g. lat64_bf16_b128_sdpa_cl ; compile only plain sdpa configs (no kernel/fused extras)
    cands = {n: v for n, v in (R.get("typicality_draws_per_s") or {}).items()
             if n.startswith(f"lat{L}_") and n.split("_")[3] == "sdpa" and len(n.split("_")) <= 5
             and not n.endswith("nocudnnbench")}
    if cands:
        best = max(cands.items(), key=lambda kv: kv[1])[0]
    if not best:
        best = typ_name(L, "bf16", 4 if ctx.smoke else 64)
    parts = best.split("_")
    dname, batch, cl = parts[1], int(parts[2][1:]), parts[-1] == "cl"
    deadline = time.monotonic() + budget_s
    ctx.drop_copies()
    # the parent's GPU memory is free for the child: drop the parent's models
    ctx.unet_fp32 = None
    reset_mem(ctx.device)
    for mode in modes:
        left = deadline - time.monotonic()
        if left < 45:
            log(f"  skip compile mode {mode}: {left:.0f} s left")
            R.sub("compile", mode, {"skipped": "budget"})
            continue
        wout = os.path.join(ctx.args.tmpdir, f"compile_{mode}.json")
        if os.path.exists(wout):
            os.remove(wout)
        cmd = [sys.executable, os.path.abspath(__file__), "--compile-worker", "--compile-mode", mode,
               "--w-lat", str(L), "--w-dtype", dname, "--w-batch", str(batch), "--w-cl", str(int(cl)),
               "--worker-out", wout] + (["--smoke"] if ctx.smoke else []) + (["--cpu"] if ctx.args.cpu else [])
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, start_new_session=True)
        status = "ok"
        try:
            rc = proc.wait(timeout=left)
            if rc != 0:
                status = f"exit {rc}"
        except subprocess.TimeoutExpired:
            status = f"timeout after {left:.0f} s"
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        res = {}
        if os.path.exists(wout):
            with open(wout) as f:
                res = json.load(f)
        res["status"] = status
        res["wall_s"] = round(time.monotonic() - t0, 1)
        log(f"  compile {mode}: {status}, {res}")
        R.sub("compile", mode, res)
    # headline figures from the best finished mode
    done = {m: r for m, r in (R.get("compile") or {}).items() if r.get("compiled_draws_per_s")}
    if done:
        m, r = max(done.items(), key=lambda kv: kv[1]["compiled_draws_per_s"])
        R.put("compile_over_eager", r["speedup"])
        R.put("compile_best_mode", m)
        R.put("compile_time_s", {mm: rr.get("compile_time_s") for mm, rr in done.items()})
        if r["compiled_draws_per_s"] > (R.get("best_typicality_draws_per_s") or 0):
            R.put("best_typicality_config", f"{r['config']}_compile-{m}")
            R.put("best_typicality_draws_per_s", r["compiled_draws_per_s"])


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny UNet, tiny sizes (CPU-friendly sanity run)")
    ap.add_argument("--cpu", action="store_true", help="force CPU even when CUDA is there")
    ap.add_argument("--json-out", default=None, help="JSON file rewritten after every measurement")
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--sections", default=None,
                    help="comma list of ceiling,typicality,train,dift,compile (default: all; --smoke: all but compile)")
    ap.add_argument("--total-budget", type=float, default=480,
                    help="seconds for all sections together; each section gets min(its budget, what is left)")
    ap.add_argument("--budget-typicality", type=float, default=150)
    ap.add_argument("--budget-train", type=float, default=100)
    ap.add_argument("--budget-dift", type=float, default=30)
    ap.add_argument("--budget-compile", type=float, default=200)
    ap.add_argument("--train-modes", default="bf16amp,fp32", help="comma list of bf16amp, fp32, tf32")
    ap.add_argument("--compile-modes", default="default,max-autotune-no-cudagraphs")
    # child-process arguments (compile worker)
    ap.add_argument("--compile-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compile-mode", default="default", help=argparse.SUPPRESS)
    ap.add_argument("--w-lat", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--w-dtype", help=argparse.SUPPRESS)
    ap.add_argument("--w-batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--w-cl", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.compile_worker:
        args.json_out = None
        compile_worker(args)
        return

    import tempfile

    args.tmpdir = args.tmpdir or tempfile.mkdtemp(prefix="gpu_unet_")
    if args.smoke:
        torch.set_num_threads(min(4, os.cpu_count() or 1))
    ctx = Ctx(args)
    import diffusers

    R = ctx.res
    dev = ctx.device
    R.put("device", torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu")
    R.put("smoke", bool(args.smoke))
    R.put("torch", torch.__version__)
    R.put("diffusers", diffusers.__version__)
    log(f"gpu_unet benchmark: device={R.get('device')} torch={torch.__version__} "
        f"diffusers={diffusers.__version__} smoke={args.smoke}")
    budgets = {"typicality": args.budget_typicality, "train": args.budget_train, "dift": args.budget_dift,
               "compile": args.budget_compile}
    if args.sections is None:
        args.sections = "ceiling,typicality,train,dift" + ("" if args.smoke else ",compile")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    t_all = time.monotonic()
    end_all = t_all + args.total_budget
    for s in sections:
        t0 = time.monotonic()
        if s in budgets:
            budgets[s] = max(0.0, min(budgets[s], end_all - t0))
        try:
            if s == "ceiling":
                section_ceiling(ctx)
            elif s == "typicality":
                section_typicality(ctx, budgets[s])
            elif s == "train":
                section_train(ctx, budgets[s])
            elif s == "dift":
                section_dift(ctx, budgets[s])
            elif s == "compile":
                section_compile(ctx, budgets[s], [m.strip() for m in args.compile_modes.split(",") if m.strip()])
            else:
                log(f"unknown section {s}")
        except Exception:
            log(f"section {s} FAILED:\n{traceback.format_exc()}")
            R.sub("section_errors", s, traceback.format_exc()[-500:])
        R.sub("section_wall_s", s, round(time.monotonic() - t0, 1))
    R.put("total_wall_s", round(time.monotonic() - t_all, 1))
    log("\n== summary")
    for k in ("best_typicality_config", "best_typicality_draws_per_s", "bf16_over_fp32", "tf32_over_fp32",
              "fp16_over_bf16", "sdpa_over_math", "channels_last_gain", "cudnn_benchmark_gain",
              "compile_over_eager", "compile_time_s", "dift_images_per_s", "dift_earlystop_gain",
              "train_bf16amp_over_fp32", "train_ckpt_slowdown"):
        log(f"  {k}: {R.get(k)}")
    print(json.dumps(R.d, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
