"""The batched typicality loop, and `run_typicality` (the `diffmine typicality` command).

Work is a stream of units (image, draw). A UNet forward takes as many units as fit in
`batch_size` rows, each unit contributing one row per prompt (null first, then its labels)
that share its (t, eps) — so batches mix images and draws, and every label of a draw is
scored against the same null prediction. Each image is VAE-encoded once, each distinct
prompt text-encoded once; per image only running sums (float64) are kept, and an image
leaves memory as soon as its last draw is in.
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from finetune.errors import DataError
from finetune.prompts import PromptTemplate

from .attention import share_prompt_projections
from .draws import Draws, image_generator, make_draws
from .formula import error_map, noisy_latents, to_epsilon
from .store import (ImageResult, ShardWriter, check_resumable, finished_images, merge_manifests,
                    verify_shards)

# METHOD.md §2 publishes N = 100 i.i.d. draws, t uniform in [0.1T, 0.7T). The same accuracy
# takes fewer draws: stratified t removes the between-timestep variance (the map's scale falls
# ~5x from t = 100 to 700) and antithetic pairs (eps, -eps) cancel the part of the per-draw
# difference that is odd in eps, 2 eps·(eps_c - eps_null). Measured on the shipped tiny towns
# model (160 images, 3 seeds, against 4000 stratified draws): the published N = 100 uniform
# reaches correlation 0.9899; stratified + antithetic reaches 0.9894 at N = 50 and 0.9913 at
# N = 64, stratified alone 0.9859 at 64 (benchmarks/typicality_convergence.py). 64 keeps a margin.
DEFAULT_DRAWS = 64
DEFAULT_SCHEDULE = "stratified"
DEFAULT_ANTITHETIC = True
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Condition = tuple[str, ...]  # the labels of one prompt: one label, or a multi-label set


def condition_key(cond: Condition) -> str:
    """Store key of a condition: the label, or the multi-label set joined by '|' (dataset convention)."""
    return "|".join(cond)


@dataclass
class _Running:
    """An image in flight: its latent, draws and running sums of both branches' error maps."""
    image_id: str
    labels: list[str]
    prompt_rows: torch.Tensor  # (1 + L,) indices into the prompt embeddings: null, then each label
    z0: torch.Tensor
    draws: Draws
    null: torch.Tensor = field(init=False)
    cond: torch.Tensor = field(init=False)
    done: int = 0

    def __post_init__(self):
        h, w = self.z0.shape[-2:]
        self.null = torch.zeros(h, w, dtype=torch.float64)
        self.cond = torch.zeros(len(self.labels), h, w, dtype=torch.float64)

    def result(self) -> ImageResult:
        n = self.done
        # Mean of differences == difference of means; float64 sums keep it exact to float32.
        return ImageResult(self.image_id, self.labels, ((self.null - self.cond) / n).float().numpy(),
                           (self.null / n).float().numpy(), (self.cond / n).float().numpy())


class TypicalityEstimator:
    """Typicality maps T(x|c) for batches of images, with a fixed model, prompts and draw schedule.

    batch_size counts UNet rows (an (image, draw) unit takes 1 + its number of labels); a unit
    is never split, so null and label rows of a draw always share one forward.
    draw_fn(image_id, latent_shape) -> Draws replaces the seeded schedule (benchmarks feed it
    another implementation's draws). share_prompts=False runs the stock attention (benchmarks).
    """

    def __init__(self, bundle, prompts: PromptTemplate | None = None, draws: int = DEFAULT_DRAWS,
                 t_range: tuple[float, float] = (0.1, 0.7), schedule: str = DEFAULT_SCHEDULE,
                 antithetic: bool = DEFAULT_ANTITHETIC, seed: int = 0, batch_size: int = 64,
                 sample_latents: bool = False, vae_batch: int = 8, workers: int | None = None,
                 draw_fn: Callable[[str, tuple[int, ...]], Draws] | None = None, share_prompts: bool = True):
        self.bundle = bundle
        # Cross-attention keys/values once per distinct prompt, on the UNet wrapped here only.
        self._shared_unet = bundle.unet if share_prompts else None
        if share_prompts:
            share_prompt_projections(bundle.unet)
        self.prompts = prompts or PromptTemplate()
        self.draws, self.t_range, self.schedule, self.antithetic = int(draws), tuple(t_range), schedule, antithetic
        self.seed, self.batch_size = seed, int(batch_size)
        self.sample_latents, self.vae_batch = sample_latents, vae_batch
        self.draw_fn = draw_fn
        self.workers = workers  # None: one per CPU thread on the CPU, 1 on an accelerator
        sched = bundle.scheduler.config
        self.num_train_timesteps = int(sched.num_train_timesteps)
        self.prediction_type = getattr(sched, "prediction_type", "epsilon")
        self.alphas_cumprod = bundle.scheduler.alphas_cumprod.float().cpu()
        self._prompt_row: dict[str, int] = {}
        self._emb: torch.Tensor | None = None
        self.embed([self.prompts.null_prompt])  # row 0: the null prompt

    @property
    def device(self) -> torch.device:
        return self.bundle.unet.device

    # -- encoding (once per prompt, once per image) --------------------------------------
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Row indices of `prompts` in the embedding table, text-encoding only unseen ones."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._prompt_row))
        for i in range(0, len(new), 64):
            emb = self.bundle.encode_prompts(new[i:i + 64]).to(self.device, self.bundle.unet.dtype)
            self._emb = emb if self._emb is None else torch.cat([self._emb, emb])
        for p in new:
            self._prompt_row[p] = len(self._prompt_row)
        return torch.tensor([self._prompt_row[p] for p in prompts], dtype=torch.long)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor | np.ndarray, image_ids: Sequence[str]) -> torch.Tensor:
        """Images (n, 3, H, W) in [-1, 1] -> scaled latents (n, C, h, w) float32 on the device.

        Posterior mean by default; with sample_latents a posterior sample whose noise comes from
        a generator seeded by (seed, image id), so it too is independent of batching.
        """
        vae = self.bundle.vae
        images = torch.as_tensor(images)
        out = []
        for i in range(0, len(images), self.vae_batch):
            dist = vae.encode(images[i:i + self.vae_batch].to(vae.device, vae.dtype)).latent_dist
            z = dist.mean.float()
            if self.sample_latents:
                noise = torch.stack([torch.randn(z.shape[1:], generator=image_generator(self.seed, j, "vae"))
                                     for j in image_ids[i:i + self.vae_batch]])
                z = z + dist.std.float() * noise.to(z.device)
            out.append(z)
        shift = getattr(vae.config, "shift_factor", None) or 0.0  # as SDBundle.encode_images
        return (torch.cat(out) - shift) * vae.config.scaling_factor

    def draws_for(self, image_id: str, latent_shape: tuple[int, ...]) -> Draws:
        if self.draw_fn is not None:
            return self.draw_fn(image_id, latent_shape)
        return make_draws(self.draws, latent_shape, self.seed, image_id, self.t_range, self.num_train_timesteps,
                          self.schedule, self.antithetic)

    # -- the loop ------------------------------------------------------------------------
    def run(self, chunks: Iterable[tuple[Sequence[str], torch.Tensor | np.ndarray, Sequence[Sequence[Condition]]]]
            ) -> Iterator[ImageResult]:
        """Stream results for chunks of (image ids, images, conditions per image), as images finish.

        Only the current chunk and the images still in flight are in memory. On the CPU, batches
        run in `workers` threads of one intra-op thread each: the tiny per-layer ops of a UNet
        forward parallelise poorly inside one call, whole forwards side by side do not.
        """
        workers = self.workers or (1 if self.device.type != "cpu" else torch.get_num_threads())
        if workers <= 1:
            for batch in self._batches(chunks):
                yield from self._accumulate(batch, self._errors(batch, self._emb))
            return
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
        pending: deque = deque()
        try:
            for batch in self._batches(chunks):
                pending.append((batch, pool.submit(self._errors, batch, self._emb)))
                if len(pending) >= workers:  # results are taken in submission order: sums do not depend on timing
                    b, f = pending.popleft()
                    yield from self._accumulate(b, f.result())
            while pending:
                b, f = pending.popleft()
                yield from self._accumulate(b, f.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)

    def estimate(self, images: torch.Tensor | np.ndarray, image_ids: Sequence[str],
                 conditions: Sequence[Sequence[Condition | str]]) -> list[ImageResult]:
        """All results for one set of images, in input order (tests, notebooks, benchmarks)."""
        by_id = {r.image_id: r for r in self.run([(image_ids, images, conditions)])}
        return [by_id[i] for i in image_ids]

    def _units(self, chunks) -> Iterator[tuple[_Running, int]]:
        for ids, images, conditions in chunks:
            z0 = self.encode(images, ids)
            for image_id, z, conds in zip(ids, z0, conditions):
                conds = [(c,) if isinstance(c, str) else tuple(c) for c in conds]
                rows = self.embed([self.prompts.null_prompt] + [self.prompts.prompt(c) for c in conds])
                running = _Running(image_id, [condition_key(c) for c in conds], rows, z,
                                   self.draws_for(image_id, tuple(z.shape)))
                for k in range(len(running.draws)):
                    yield running, k

    def _batches(self, chunks) -> Iterator[list[tuple[_Running, int]]]:
        batch, rows = [], 0
        for unit in self._units(chunks):
            batch.append(unit)
            rows += len(unit[0].prompt_rows)
            if rows >= self.batch_size:
                yield batch
                batch, rows = [], 0
        if batch:
            yield batch

    @torch.inference_mode()
    def _errors(self, batch: list[tuple[_Running, int]], emb: torch.Tensor) -> torch.Tensor:
        """One UNet forward: (rows, h, w) squared-error maps, rows grouped per unit (null first)."""
        unet, dev = self.bundle.unet, self.device
        t = torch.stack([r.draws.timesteps[k] for r, k in batch])
        eps = torch.stack([r.draws.noise[k] for r, k in batch]).to(dev)
        alpha_bar = self.alphas_cumprod[t].to(dev)
        z_t = noisy_latents(torch.stack([r.z0 for r, _ in batch]), eps, alpha_bar)
        per_unit = torch.tensor([len(r.prompt_rows) for r, _ in batch])
        rep = torch.repeat_interleave(torch.arange(len(batch)), per_unit).to(dev)  # row -> unit
        prompt_rows = torch.cat([r.prompt_rows for r, _ in batch]).to(dev)
        kwargs = {}
        if unet is self._shared_unet:
            distinct, index = torch.unique(prompt_rows, return_inverse=True)
            kwargs["cross_attention_kwargs"] = {"prompt_rows": (emb[distinct], index)}
        pred = unet(z_t[rep].to(unet.dtype), t.to(dev)[rep], encoder_hidden_states=emb[prompt_rows],
                    return_dict=False, **kwargs)[0]
        pred = to_epsilon(pred.float(), z_t[rep], alpha_bar[rep], self.prediction_type)
        return error_map(eps[rep], pred).double().cpu()

    @staticmethod
    def _accumulate(batch: list[tuple[_Running, int]], err: torch.Tensor) -> Iterator[ImageResult]:
        pos = 0
        for r, _ in batch:
            n = len(r.prompt_rows)
            r.null += err[pos]
            r.cond += err[pos + 1:pos + n]
            r.done += 1
            pos += n
            if r.done == len(r.draws):
                yield r.result()


def resolve_dtype(dtype, device: torch.device) -> torch.dtype | None:
    """"auto" (the default): bfloat16 on a GPU that has it, float32 elsewhere.

    On an H100, bf16 at batch 256 ran an SD-v1.5 UNet 4.8x faster per draw than fp32 at batch 64
    (benchmarks/results/GPU.md). Its rounding is small next to the draws' Monte-Carlo noise: on the
    tiny model (CPU) the maps' correlation with precise fp32 maps went from 0.9920 to 0.9912
    (benchmarks/typicality_speed.py --bf16). Error maps are always summed in float64. CPUs keep
    fp32, so that maps there stay exact to float32 (bf16 was 1.46x on this project's 2-core CPU).
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        fast_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if fast_bf16 else None
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def run_typicality(model, data, out, draws: int | None = None, t_range: tuple[float, float] = (0.1, 0.7),
                   labels: str = "own", batch_size: int = 64, seed: int = 0, schedule: str = DEFAULT_SCHEDULE,
                   label_column: str = "label", skip_bad: bool = False, sample_latents: bool = False,
                   progress: bool = True, *, antithetic: bool | None = None, dtype="auto",
                   resolution: int | None = None, shard_size: int | None = None, load_chunk: int = 16,
                   process_index: int | None = None, num_processes: int | None = None,
                   on_image: Callable[[str], None] | None = None) -> Path:
    """Score every image of `data` with the model in `model`; write (or resume) the store `out`.

    labels: "own" scores each image for its own label (a multi-label image for its label set,
    one prompt); "all" for every label of the dataset (the image x label score matrix).
    Under `accelerate launch` process i takes images i::n and writes its own shards; the main
    process merges the manifests. process_index/num_processes simulate that split (tests);
    the caller then merges with `store.merge_manifests`. on_image(image_id) is called as each
    image finishes.
    """
    from tqdm.auto import tqdm

    from finetune.bundle import SDBundle
    from finetune.dataset import LabeledImages, MULTI_LABEL_SEP

    if labels not in ("own", "all"):
        raise ValueError(f"labels must be 'own' or 'all', got {labels!r}")
    state = None
    if process_index is None:
        from accelerate import PartialState
        # cpu=True without CUDA: under `accelerate launch --multi_gpu` (torchrun) a CPU-only machine
        # then forms a gloo group instead of running n unaware copies.
        state = PartialState(cpu=not torch.cuda.is_available())
        rank, world, device = state.process_index, state.num_processes, state.device
    else:
        rank, world = int(process_index), int(num_processes or 1)
        device = torch.device("cpu")
    torch_dtype = resolve_dtype(dtype, torch.device(device))
    out = Path(out)
    dataset = LabeledImages(data, label_column, skip_bad)
    bundle = SDBundle.from_pretrained(model).eval().to(device, torch_dtype)
    prompts = PromptTemplate.load(model) if Path(str(model)).is_dir() else PromptTemplate()
    antithetic = DEFAULT_ANTITHETIC if antithetic is None else bool(antithetic)
    est = TypicalityEstimator(bundle, prompts, draws or DEFAULT_DRAWS, t_range, schedule, antithetic, seed,
                              batch_size, sample_latents)
    resolution = int(resolution or bundle.resolution)
    latent = resolution // bundle.vae_scale_factor
    assert MULTI_LABEL_SEP == "|"  # condition_key joins label sets the way the dataset splits them
    if labels == "own":
        conditions = {r.image_id: [r.labels] for r in dataset}
        store_labels = sorted({condition_key(r.labels) for r in dataset})
    else:
        conditions = {r.image_id: [(lab,) for lab in dataset.labels] for r in dataset}
        store_labels = list(dataset.labels)
    model_id = os.path.abspath(model) if Path(str(model)).exists() else str(model)
    meta = {"model": model_id, "data": os.path.abspath(data), "resolution": resolution, "latent_size": [latent, latent],
            "draws": est.draws, "t_range": [float(x) for x in t_range], "schedule": schedule,
            "antithetic": antithetic, "seed": int(seed), "labels_mode": labels, "sample_latents": bool(sample_latents),
            "template": prompts.template, "null_prompt": prompts.null_prompt,
            "prediction_type": est.prediction_type, "dtype": str(bundle.unet.dtype).replace("torch.", ""),
            "num_train_timesteps": est.num_train_timesteps, "label_column": label_column}

    # Resume: every process reads the same store; images are split before dropping finished ones,
    # so no process depends on what another has written since.
    check_resumable(out, meta)
    verify_shards(out)
    done = finished_images(out)
    todo = [r for r in dataset.records[rank::world] if r.image_id not in done]
    writer = ShardWriter(out, meta, store_labels, rank, world, shard_size)

    def chunks():
        for i in range(0, len(todo), load_chunk):
            try:
                recs, arrays = dataset.load_arrays(resolution, todo[i:i + load_chunk])
            except DataError:  # with skip_bad, only a chunk of nothing but bad images gets here
                if not skip_bad:
                    raise
                continue
            yield [r.image_id for r in recs], torch.from_numpy(arrays), [conditions[r.image_id] for r in recs]

    bar = tqdm(total=len(todo), unit="img", desc=f"typicality ({est.draws} draws/image)",
               disable=not progress or rank != 0)
    try:
        for result in est.run(chunks()):
            writer.add(result)
            bar.update(1)
            if on_image is not None:
                on_image(result.image_id)
    finally:
        writer.close()  # finished images are kept even when the run is interrupted
        bar.close()
    if state is not None:
        state.wait_for_everyone()
    if rank == 0 and (state is not None or world == 1):
        merge_manifests(out)
    return out
