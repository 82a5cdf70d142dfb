"""The batched typicality loop, and `run_typicality` (the `diffmine typicality` command, on the job engine).

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

from diffmine.core import autoencoders
from diffmine.core.bundle import scale_latents
from diffmine.core.job import Job, run_job
from diffmine.core.settings import defaults, load_config, resume_keys, save_config, to_dict
from diffmine.core.embeddings import PromptEmbeddings
from diffmine.core.errors import DataError
from diffmine.core.partial import fixed_groups, say_resuming
from diffmine.core.prompts import PromptTemplate
from diffmine.core.reconstruction import check_reconstruction, dataset_loader

from typicality.attention import shared_prompt_projections
from typicality.config import TypicalityConfig
from typicality.draws import Draws, image_generator, make_draws
from typicality.fingerprints import data_fingerprint, model_fingerprint
from typicality.formula import error_map, noisy_latents, to_epsilon
from typicality.store import (ImageResult, ShardWriter, check_resumable, finished_images, merge_manifests,
                              recover_orphans, verify_shards)

_D = defaults(TypicalityConfig)  # the estimator's keyword defaults are the stage's config defaults
DEFAULT_DRAWS, DEFAULT_SCHEDULE, DEFAULT_ANTITHETIC = _D["draws"], _D["schedule"], _D["antithetic"]

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

    def __init__(self, bundle, prompts: PromptTemplate | None = None, draws: int = _D["draws"],
                 t_range: tuple[float, float] = _D["t_range"], schedule: str = _D["schedule"],
                 antithetic: bool = _D["antithetic"], seed: int = _D["seed"], batch_size: int = _D["batch_size"],
                 sample_latents: bool = _D["sample_latents"], vae_batch: int = 8, workers: int | None = None,
                 draw_fn: Callable[[str, tuple[int, ...]], Draws] | None = None, share_prompts: bool = True):
        self.bundle = bundle
        # Cross-attention keys/values once per distinct prompt: the UNet's processors are wrapped
        # only while `run` is active, and restored after it.
        self.share_prompts = share_prompts
        self._shared = False
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
        self.embeddings = PromptEmbeddings(bundle)
        self.embed([self.prompts.null_prompt])  # row 0: the null prompt

    @property
    def device(self) -> torch.device:
        return self.bundle.unet.device

    # -- encoding (once per prompt, once per image) --------------------------------------
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """Row indices of `prompts` in the embedding table, text-encoding only unseen ones."""
        return self.embeddings.index(prompts)

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
            mean, std = autoencoders.encode(vae, images[i:i + self.vae_batch].to(vae.device, vae.dtype))
            z = mean.float()
            if self.sample_latents and std is not None:  # a deterministic autoencoder has no posterior
                noise = torch.stack([torch.randn(z.shape[1:], generator=image_generator(self.seed, j, "vae"))
                                     for j in image_ids[i:i + self.vae_batch]])
                z = z + std.float() * noise.to(z.device)
            out.append(z)
        return scale_latents(vae, torch.cat(out))

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
        if not self.share_prompts:
            yield from self._run(chunks)
            return
        with shared_prompt_projections(self.bundle.unet) as wrapped:
            self._shared = wrapped
            try:
                yield from self._run(chunks)
            finally:
                self._shared = False

    def _run(self, chunks) -> Iterator[ImageResult]:
        workers = self.workers or (1 if self.device.type != "cpu" else torch.get_num_threads())
        if workers <= 1:
            for batch in self._batches(chunks):
                yield from self._accumulate(batch, self._errors(batch, self.embeddings.table))
            return
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
        pending: deque = deque()
        try:
            for batch in self._batches(chunks):
                pending.append((batch, pool.submit(self._errors, batch, self.embeddings.table)))
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
        if self._shared:
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


def model_identity(bundle, prompts: PromptTemplate, model: str, resolution: int) -> dict:
    """What the model fixes about the maps (recorded in the store and checked on resume / by mine)."""
    latent = resolution // bundle.vae_scale_factor
    sched = bundle.scheduler.config
    return {"model_fingerprint": model_fingerprint(model), "template": prompts.template,
            "null_prompt": prompts.null_prompt, "prediction_type": getattr(sched, "prediction_type", "epsilon"),
            "num_train_timesteps": int(sched.num_train_timesteps), "resolution": int(resolution),
            "latent_size": [latent, latent], "torch_dtype": str(bundle.unet.dtype).replace("torch.", "")}


class TypicalityJob(Job):
    """`diffmine typicality` on the job engine: its lifecycle is the engine's; its finished images are
    kept in the store itself (`store.ShardWriter`: shards end at group ends), not in partial results."""

    def __init__(self, config: TypicalityConfig, progress: bool = True, overrides: dict | None = None,
                 on_image: Callable[[str], None] | None = None):
        super().__init__(config, progress)
        self.overrides, self.on_image = overrides or {}, on_image

    def check(self) -> None:
        from diffmine.core.models import resolve_model

        resolve_model(self.config.model)  # a bad model name fails before the data is scanned

    def runtime(self):
        from diffmine.core.runtime import Runtime

        return Runtime.start(self.config, **self.overrides)

    def load(self, rt) -> None:
        from diffmine.core.dataset import LabeledImages

        cfg = self.config
        self.dataset = dataset = LabeledImages(cfg.data, cfg.label_column, cfg.skip_bad)
        loaded = rt.load(cfg.model)
        model, bundle, prompts = loaded.path, loaded.bundle, loaded.prompts
        _check_labels(cfg, model, dataset.labels, loaded.labels)
        self.est = TypicalityEstimator(bundle, prompts, cfg.draws, cfg.t_range, cfg.schedule, cfg.antithetic,
                                       cfg.seed, cfg.batch_size, cfg.sample_latents)
        self.resolution = resolution = int(cfg.resolution or bundle.resolution)
        if cfg.labels == "own":  # each label of an image on its own: mining and localisation read per-label maps
            self.conditions = {r.image_id: [(lab,) for lab in r.labels] for r in dataset}
        else:
            self.conditions = {r.image_id: [(lab,) for lab in dataset.labels] for r in dataset}
        self.store_labels = list(dataset.labels)
        settings_meta = {k: v for k, v in to_dict(cfg).items() if k in resume_keys(TypicalityConfig)}
        meta = {**settings_meta, **model_identity(bundle, prompts, model, resolution),
                "data_fingerprint": data_fingerprint(dataset.records, dataset.root)}
        meta["map_keys"] = sorted(meta)  # everything above must match for a resume
        meta.update(model=os.path.abspath(model) if Path(model).exists() else model, data=os.path.abspath(cfg.data),
                    label_column=cfg.label_column)
        meta.update(check_reconstruction(bundle.vae, dataset_loader(dataset, resolution), len(dataset), resolution,
                                         what=cfg.data, warn=rt.is_main))  # recorded, not a map key
        self.meta = meta
        self.ids, self.phase = [r.image_id for r in dataset.records], f"typicality ({self.est.draws} draws/image)"

    def work(self, rt, bar, on_group=None) -> dict | None:
        cfg, dataset, out, rank, world = self.config, self.dataset, self.out, rt.rank, rt.world
        # Resume: every process reads the same store; images are split before dropping finished ones,
        # so no process depends on what another has written since.
        check_resumable(out, self.meta)
        if rt.is_main:
            recovered = recover_orphans(out, self.meta, self.store_labels, rank, world)  # their manifest was deleted
        rt.wait()
        verify_shards(out)
        done = finished_images(out)
        if rt.is_main:
            say_resuming(sum(r.image_id in done for r in dataset.records), len(dataset), out,
                         f" ({recovered} shard(s) listed again from their files)" if recovered else "")
        # Fixed groups of `group` images in dataset order, group k for process k % world. A group's
        # draws share forwards only with each other, and shards end at group ends, so a map is the same
        # bit for bit whatever the process count, and a killed run resumes whole groups.
        mine = [g for k, g in enumerate(fixed_groups(dataset.records, cfg.group)) if k % world == rank]
        todo = [g for g in ([r for r in g if r.image_id not in done] for g in mine) if g]
        bar.update(sum(map(len, mine)) - sum(map(len, todo)))
        created = not out.exists()
        writer = ShardWriter(out, self.meta, self.store_labels, rank, world, cfg.shard_size, cfg.shard_seconds,
                             grouped=True)
        if rank == 0:
            save_config(cfg, out)  # beside the maps from the start: a killed store says what it holds
        finished = 0
        try:
            for group in todo:
                chunk = self._chunk(group)
                for result in self.est.run([chunk] if chunk is not None else []):
                    writer.add(result)
                    finished += 1
                    bar.update(1)
                    if self.on_image is not None:
                        self.on_image(result.image_id)
                writer.end_group()
        except BaseException:
            writer.close()  # finished images are kept even when the run is interrupted
            if created and rank == 0 and finished == 0 and not done:
                import shutil
                shutil.rmtree(out, ignore_errors=True)  # nothing computed: leave no empty folder behind
            raise
        writer.close()
        rt.wait()
        return {} if rt.is_main and rt.launched else None  # the main process merges the processes' manifests

    def _chunk(self, group):
        """(ids, images, conditions) of a group's readable images; None when none is (with skip_bad)."""
        try:
            recs, arrays = self.dataset.load_arrays(self.resolution, group)
        except DataError:  # with skip_bad, only a group of nothing but bad images gets here
            if not self.config.skip_bad:
                raise
            return None
        return [r.image_id for r in recs], torch.from_numpy(arrays), [self.conditions[r.image_id] for r in recs]

    def publish(self, results) -> Path:
        merge_manifests(self.out, compact_to=self.config.shard_size)
        return self.out


def run_typicality(config: TypicalityConfig | None = None, progress: bool = True, *,
                   process_index: int | None = None, num_processes: int | None = None,
                   on_image: Callable[[str], None] | None = None, **settings) -> Path:
    """Score every image of `config.data` with `config.model`; write (or resume) the store `config.out`.

    Settings come as a TypicalityConfig or as its field names (keyword arguments).
    labels: "own" scores each image for each of its own labels (a multi-label image gets one map
    per label, all sharing the null branch); "all" for every label of the dataset (the image x
    label score matrix). Under `accelerate launch` process i takes images i::n and writes its own
    shards; the main process merges the manifests. process_index/num_processes simulate that split
    (tests); the caller then merges with `store.merge_manifests`. on_image(image_id) is called as
    each image finishes.
    """
    cfg = config if config is not None else load_config(TypicalityConfig, None, **settings)
    if config is not None and settings:
        raise TypeError("pass either a TypicalityConfig or settings as keywords, not both")
    overrides = {k: v for k, v in (("process_index", process_index), ("num_processes", num_processes))
                 if v is not None}
    run_job(TypicalityJob(cfg, progress, overrides, on_image))
    return Path(cfg.out)


def _check_labels(cfg: TypicalityConfig, model: str, labels: Sequence[str], known: list[str] | None) -> None:
    """Labels the model was never trained on give meaningless maps: refuse, unless --force."""
    if known is None:
        return
    unseen = [lab for lab in labels if lab not in known]
    if not unseen:
        return
    text = (f"{cfg.data}: label(s) {', '.join(unseen)} were not among the labels {model} was trained on "
            f"({', '.join(known)})")
    if not cfg.force:
        raise DataError(text + "; pass --force to score them anyway")
    import warnings
    warnings.warn(text + "; scoring them anyway (--force)", stacklevel=3)
