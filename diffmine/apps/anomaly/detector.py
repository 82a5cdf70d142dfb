"""`DiffusionDetector`: a PyOD detector whose anomaly score is a diffusion model's denoising error.

It follows PyOD's conventions (BaseDetector does thresholds, labels_, predict, predict_proba,
predict_confidence) and scikit-learn's estimator contract (hyper-parameters stored untouched in
`__init__`, validated in `fit`, learned state in trailing-underscore attributes), so it drops in
where `IForest()` was. Score kinds (higher = more anomalous, each the spatial mean of its map):

* reconstruction: the null prompt's mean denoising error over the draws (the diffusion anomaly-detection
  score, docs/method.md §5), the store's
  `err_null`;
* atypicality: -T(x | normal label); when the model knows other labels, the margin
  max_{c != normal} T(x | c) - T(x | normal) (how much better another label explains x);
* trajectory: the denoising error accumulated along a reverse DDIM trajectory (trajectory.py);
* features: the distance of the image's diffusion features (DIFT, docs/method.md §4: UNet up_blocks[1]
  at t = 161, 8 draws; the whole feature map, flattened and L2-normalised) to its nearest
  normal images, by PyOD's KNN (intermediate diffusion states used as a representation,
  docs/method.md §5). Scale-free: unlike a denoising error it does not grow with how much an image
  contains, so sparse anomalies are not ranked as normal. Map: per cell, the feature distance to
  the nearest normal image at the same cell.
* patches: PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022,
  as anomalib implements it) on patch features at the image's own resolution. An image is cut into
  tiles of the model's resolution (or `resolution`), every `tile_stride` px (default: side by side),
  so a small defect keeps its size in pixels. Each tile gives one feature per latent cell: by
  default (`patch_features="vae"`) the VAE encoder's last feature map (encoder_features.py), or
  DIFT (`"dift"`: UNet up_blocks[`patch_block`] at t = `patch_t`, `patch_draws` draws), or, for
  comparison, the null prompt's denoising errors (`"denoise"`: per draw and latent channel, logged,
  `patch_draws` draws over `t_range`; denoise_features.py), or raw pixel patches (`"pixels"`:
  `patch_size` px squares every half patch, pixel_features.py; no model features at all); each is
  averaged over its `patch_pool` x `patch_pool` neighbourhood (PatchCore's local aggregation is 3; 1
  keeps a one-cell defect's contrast) and, learned features only, L2-normalised. The normal images' patches
  form a memory bank (FAISS, flat L2), subsampled to `coreset_ratio` of them and at most `bank_size`
  by greedy k-center `coreset` (PatchCore's) or at random, so fitting and scoring stay linear in the
  number of normal images. A patch's score is its distance to the nearest bank patch; the image
  score is the mean of its `top_k` highest (1: the maximum, as PatchCore); the map is the patch
  scores upsampled per tile and averaged where tiles overlap, at the image's own size. A training
  image's score leaves its own patches out of the bank (not 0 for itself). The defaults were chosen
  on the training and validation splits of diffmine.datasets.defects (benchmarks/anomaly_defects.py
  repeats the choice of features, pooling, stride and top-k on its validation split;
  benchmarks/anomaly_transfer.py repeats the choice of features, vae / dift / pixels, and pooling on it,
  and reports on diffmine.datasets.defect_families, never used for a choice).

Images are scored in fixed groups of `group_size_()` images (about one UNet batch each), the same
whatever the caller asks for, so an image's score does not depend on which images came with it
(`diffmine anomaly score` splits and resumes by these groups). The model is loaded through
`diffmine.core.runtime.Runtime` (`device`, `dtype`; a command hands its own with `use_runtime`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from pyod.models.base import BaseDetector  # PyOD: imported by the anomaly command only (the `anomaly` extra)

from diffmine.core.settings import ConfigError, check_t_range, defaults
from diffmine.core.errors import DataError
from diffmine.core.inputs import ImageInput
from diffmine.core.partial import fixed_groups

from diffmine.apps.anomaly.config import PATCH_FEATURES, SCORES, AnomalyFitConfig

_D = defaults(AnomalyFitConfig)  # the detector's defaults are the command's, written once there

__all__ = ["DiffusionDetector", "SCORES", "DRAW_KEY"]
DRAW_KEY = "anomaly"  # the one draw stream every image shares


def model_labels(model: str | Path) -> list[str]:
    """The labels a diffmine-finetuned model was trained on ([] when unknown)."""
    from diffmine.core.models import model_labels as labels_of

    return labels_of(model) or []


class DiffusionDetector(BaseDetector):
    """Anomaly detector from a diffusion model (a diffusers SD folder), fitted on normal images.

    model: a finetuned model folder to score with; or base: a model folder (or "tiny", the shipped
    towns model) finetuned here on the normal images under `normal_label` for `finetune_steps`.
    X: an array (N, H, W[, C]) of uint8 0..255 / float 0..1 images, a list of paths, or a folder.
    """

    def __init__(self, model=None, base=None, score=_D["score"], contamination=_D["contamination"],
                 normal_label=_D["normal_label"], draws=_D["draws"], t_range=_D["t_range"],
                 trajectory_start=_D["trajectory_start"], trajectory_steps=_D["trajectory_steps"],
                 finetune_steps=_D["finetune_steps"], finetune_lr=_D["finetune_lr"],
                 finetune_batch=_D["finetune_batch"], resolution=_D["resolution"], batch_size=_D["batch_size"],
                 seed=_D["seed"], work_dir=None, progress=False, n_neighbors=_D["n_neighbors"], device=_D["device"],
                 dtype=_D["dtype"], tile_stride=_D["tile_stride"], patch_features=_D["patch_features"],
                 patch_size=_D["patch_size"], patch_pool=_D["patch_pool"], patch_block=_D["patch_block"],
                 patch_t=_D["patch_t"], patch_draws=_D["patch_draws"], top_k=_D["top_k"], coreset=_D["coreset"],
                 coreset_ratio=_D["coreset_ratio"], bank_size=_D["bank_size"]):
        self.model = model
        self.base = base
        self.score = score
        self.contamination = contamination
        self.normal_label = normal_label
        self.draws = draws
        self.t_range = t_range
        self.trajectory_start = trajectory_start
        self.trajectory_steps = trajectory_steps
        self.finetune_steps = finetune_steps
        self.finetune_lr = finetune_lr
        self.finetune_batch = finetune_batch
        self.resolution = resolution
        self.batch_size = batch_size
        self.seed = seed
        self.work_dir = work_dir
        self.progress = progress
        self.n_neighbors = n_neighbors  # features: PyOD KNN's default
        self.device = device  # where the model runs (diffmine.core.runtime: auto, cpu, cuda, ...)
        self.dtype = dtype    # model precision (auto, fp32, fp16, bf16)
        self.tile_stride = tile_stride  # patches: the tiling and the memory bank (module docstring)
        self.patch_features = patch_features
        self.patch_size = patch_size
        self.patch_pool = patch_pool
        self.patch_block = patch_block
        self.patch_t = patch_t
        self.patch_draws = patch_draws
        self.top_k = top_k
        self.coreset = coreset
        self.coreset_ratio = coreset_ratio
        self.bank_size = bank_size

    def use_runtime(self, runtime) -> "DiffusionDetector":
        """Run on `runtime` (a command's `Runtime`) instead of one started from `device`/`dtype`."""
        self._rt = runtime
        self._runtime = None
        return self

    def _rt_(self):
        if getattr(self, "_rt", None) is None:
            from diffmine.core.runtime import Runtime

            # the detector computes every image it is given: one process, whatever launched it
            self._rt = Runtime.one_process(None, device=self.device, dtype=self.dtype)
        return self._rt

    # -- validation ----------------------------------------------------------------------
    def _check_params(self) -> None:
        c = self.contamination
        if isinstance(c, (int, float)) and not isinstance(c, bool) and not 0 < c <= 0.5:
            raise ConfigError("contamination", f"must be in (0, 0.5], got {c}")
        if self.score not in SCORES:
            raise ConfigError("score", f"must be one of {', '.join(SCORES)}, got {self.score!r}")
        if (self.model is None) == (self.base is None):
            raise ConfigError("model", "give either a model to score with or a base to finetune (not both)")
        if self.model is not None and not Path(self._model_folder()).is_dir():
            raise ConfigError("model", f"{self.model}: model folder does not exist")
        for name in ("draws", "trajectory_steps", "batch_size", "n_neighbors", "patch_draws", "patch_pool", "top_k",
                     "bank_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.patch_features not in PATCH_FEATURES:
            raise ConfigError("patch_features", f"must be one of {', '.join(PATCH_FEATURES)}, "
                              f"got {self.patch_features!r}")
        if int(self.patch_size) < 2:
            raise ConfigError("patch_size", f"must be >= 2, got {self.patch_size}")
        if int(self.patch_pool) % 2 != 1:
            raise ConfigError("patch_pool", f"must be odd, got {self.patch_pool}")
        check_t_range(self.t_range)
        if not 0 < self.trajectory_start <= 1:
            raise ConfigError("trajectory_start", f"must be in (0, 1], got {self.trajectory_start}")
        if self.tile_stride is not None and int(self.tile_stride) < 1:
            raise ConfigError("tile_stride", f"must be >= 1, got {self.tile_stride}")
        if self.coreset not in ("greedy", "random"):
            raise ConfigError("coreset", f"must be greedy or random, got {self.coreset!r}")
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError("coreset_ratio", f"must be in (0, 1], got {self.coreset_ratio}")

    def _model_folder(self) -> str:
        """`model` as the project's loader reads it: "tiny" stands for the shipped towns model."""
        from diffmine.core.models import resolve_model

        return resolve_model(self.model, "model")

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on normal images X: finetune (with `base`), score X, set the threshold from `contamination`."""
        self._check_params()
        inp = ImageInput(X)
        self.geometry_ = inp.geometry
        self.model_path_ = str(self._finetune(inp) if self.base is not None else Path(self._model_folder()).resolve())
        self.labels_known_ = model_labels(self.model_path_)
        if self.score == "atypicality" and self.labels_known_ and self.normal_label not in self.labels_known_:
            raise ConfigError("normal_label", f"'{self.normal_label}' is not a label of {self.model_path_} "
                              f"(labels: {', '.join(self.labels_known_)})")
        self._runtime = None
        self._memo = None
        if self.score == "features":
            self.train_features_ = np.concatenate([self._features(inp, g)[0] for g in self.groups(inp)])
            if len(self.train_features_) <= int(self.n_neighbors):
                raise ConfigError("n_neighbors", f"needs more than {self.n_neighbors} normal images, "
                                  f"got {len(self.train_features_)}")
            self._fit_knn()
            self.decision_scores_ = self.knn_.decision_scores_.copy()  # leave-one-out: not 0 for itself
        elif self.score == "patches":
            self.decision_scores_ = self._fit_bank(inp)
        else:
            self.decision_scores_ = self._scores_and_maps(inp)[0]
        self._set_n_classes(y)
        self._process_decision_scores()
        return self

    def _finetune(self, inp: ImageInput) -> Path:
        """Finetune `base` on the normal images (written as NORMAL_LABEL/*.png) with the project's finetuner."""
        from PIL import Image

        from diffmine.core.models import resolve_model
        from diffmine.core.prompts import PromptTemplate
        from finetune.train import train
        from finetune.config import TrainConfig

        base = Path(resolve_model(self.base, "base"))  # "tiny": the shipped pretrained small SD
        if not base.is_dir():
            raise ConfigError("base", f"{base}: base model folder does not exist")
        work = Path(self.work_dir) if self.work_dir else Path(tempfile.mkdtemp(prefix="diffmine-anomaly-"))
        data = work / "data" / self.normal_label
        shutil.rmtree(work / "data", ignore_errors=True)
        data.mkdir(parents=True)
        for i, image_id in enumerate(inp.ids):
            Image.fromarray(np.asarray(inp.rgb(i))).save(data / f"{i:06d}.png")
        prompts = PromptTemplate.load(base)
        train(TrainConfig(data=str(work / "data"), out=str(work / "model"), base=str(base), prompt=prompts.template,
                          null_prompt=prompts.null_prompt, null_rate=prompts.null_rate, resolution=self.resolution,
                          batch_size=int(self.finetune_batch), lr=float(self.finetune_lr),
                          max_steps=int(self.finetune_steps), checkpoint_every=10 ** 9, seed=int(self.seed),
                          samples_per_label=0, device=self.device, dtype=self.dtype),  # the detector's placement
              progress=bool(self.progress))
        shutil.rmtree(work / "model" / "cache", ignore_errors=True)
        shutil.rmtree(work / "model" / "checkpoints", ignore_errors=True)
        return (work / "model").resolve()

    def _fit_knn(self) -> None:
        from pyod.models.knn import KNN

        self.knn_ = KNN(n_neighbors=int(self.n_neighbors), contamination=self.contamination).fit(self.train_features_)

    def _fit_bank(self, inp: ImageInput) -> np.ndarray:
        """Build the patch memory bank from the normal images; their scores, each without its own patches."""
        from tqdm.auto import tqdm

        from diffmine.apps.anomaly.patches import bank_size_for, greedy_coreset, random_subset

        per_image = []
        with tqdm(total=len(inp), desc="anomaly fit (patches: features)", disable=not self.progress) as bar:
            for g in self.groups(inp):
                per_image += [v.reshape(-1, v.shape[-1]).half() for v in self._tile_patches(inp, g)]
                bar.update(len(g))
        owner = np.concatenate([np.full(len(v), i) for i, v in enumerate(per_image)])
        pool = torch.cat(per_image)
        k = bank_size_for(len(pool), self.coreset_ratio, self.bank_size)
        if self.progress:
            print(f"anomaly fit (patches): memory bank of {k} of {len(pool)} patches ({self.coreset})")
        pick = (greedy_coreset(pool, k, int(self.seed)) if self.coreset == "greedy"
                else random_subset(len(pool), k, int(self.seed)))
        self.bank_features_ = pool[torch.from_numpy(pick)].float().numpy()
        self.bank_owner_ = owner[pick]
        self._bank = None
        bank = self._bank_()
        return np.array([self._image_score(bank.distances(v.float().numpy(), exclude_owner=i))
                         for i, v in enumerate(per_image)])

    def _bank_(self):
        if getattr(self, "_bank", None) is None:
            from diffmine.apps.anomaly.patches import MemoryBank

            self._bank = MemoryBank(self.bank_features_, self.bank_owner_)
        return self._bank

    def _image_score(self, patch_scores: np.ndarray) -> float:
        from diffmine.apps.anomaly.patches import top_k_mean

        return top_k_mean(patch_scores, int(self.top_k))

    def tile_stride_(self) -> int:
        """Pixels between tiles: `tile_stride`, or one tile (side by side)."""
        return int(self.tile_stride or self.resolution_)

    def _tile_boxes(self) -> np.ndarray:
        from diffmine.apps.anomaly.patches import tile_boxes

        h, w, _ = self.geometry_
        return tile_boxes(h, w, self.resolution_, self.tile_stride_())

    def _tile_patches(self, inp: ImageInput, idx: list[int]) -> list[torch.Tensor]:
        """Per image of `idx`: (tiles, h, w, C) patch features of its tiles (patches.patch_vectors)."""
        from mining.features import DiftExtractor

        from diffmine.apps.anomaly.denoise_features import denoising_error_features
        from diffmine.apps.anomaly.encoder_features import vae_encoder_features
        from diffmine.apps.anomaly.patches import cut_tiles, patch_vectors
        from diffmine.apps.anomaly.pixel_features import pixel_patch_features

        bundle, prompts, est = self._load_runtime()
        tiles = [cut_tiles(inp.rgb(i), self.resolution_, self.tile_stride_()) for i in idx]
        batch = torch.from_numpy(np.concatenate(tiles))
        if self.patch_features == "vae":
            fmaps = vae_encoder_features(bundle.vae, batch, int(self.batch_size))
        elif self.patch_features == "pixels":
            fmaps = pixel_patch_features(batch, int(self.patch_size))
        elif self.patch_features == "denoise":
            fmaps = denoising_error_features(est, batch, self._patch_draws_(), int(self.batch_size))
        else:
            prompt = (prompts.prompt(self.normal_label) if self.normal_label in self.labels_known_
                      else prompts.null_prompt)
            draws = int(self.patch_draws)
            dift = DiftExtractor(bundle, t=int(self.patch_t), block=int(self.patch_block), draws=draws,
                                 seed=int(self.seed), batch_size=max(1, int(self.batch_size) // draws))
            fmaps = dift(batch, [prompt] * len(batch))
        # log denoising errors and pixels are on a common scale already: their size (an error, a brightness)
        # is the signal, not normalised away
        vectors = patch_vectors(fmaps, int(self.patch_pool), normalize=self.patch_features not in ("denoise", "pixels"))
        return list(vectors.split([len(t) for t in tiles]))

    def _patch_draws_(self):
        """denoise features: the `patch_draws` (timestep, noise) pairs every tile shares (common random numbers)."""
        from typicality.draws import make_draws

        bundle, _, est = self._load_runtime()
        side = self.resolution_ // bundle.vae_scale_factor
        shape = (int(bundle.unet.config.in_channels), side, side)
        return make_draws(int(self.patch_draws), shape, int(self.seed), DRAW_KEY, est.t_range,
                          est.num_train_timesteps, est.schedule, est.antithetic)

    def _patch_scores(self, inp: ImageInput, idx: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        """(scores (n,), stitched maps (n, H, W) at the images' own size) of the images `idx`."""
        from diffmine.apps.anomaly.patches import stitch

        bank, boxes = self._bank_(), self._tile_boxes()
        h, w, _ = self.geometry_
        scores, maps = [], []
        for v in self._tile_patches(inp, idx):
            d = bank.distances(v.reshape(-1, v.shape[-1]).numpy())
            scores.append(self._image_score(d))
            maps.append(stitch(torch.from_numpy(d.reshape(v.shape[:3])).float(), boxes, (h, w)))
        return np.array(scores), torch.stack(maps)

    # -- scoring -------------------------------------------------------------------------
    def _load_runtime(self):
        if getattr(self, "_runtime", None) is None:
            from typicality.draws import make_draws
            from typicality.engine import TypicalityEstimator

            loaded = self._rt_().load(self.model_path_)
            bundle, prompts = loaded.bundle, loaded.prompts
            est = TypicalityEstimator(bundle, prompts, draws=int(self.draws), t_range=tuple(self.t_range),
                                      seed=int(self.seed), batch_size=int(self.batch_size))
            # Common random numbers: every image sees the same (t, eps) draws, so score differences
            # between images are not draw noise, and a score does not depend on a file's name.
            est.draw_fn = lambda _id, shape: make_draws(est.draws, shape, est.seed, DRAW_KEY, est.t_range,
                                                        est.num_train_timesteps, est.schedule, est.antithetic)
            self._runtime = (bundle, prompts, est)
        return self._runtime

    @property
    def resolution_(self) -> int:
        return int(self.resolution or self._load_runtime()[0].resolution)

    def _rows_per_image(self) -> int:
        """UNet rows one image takes (its draws, times its prompts)."""
        if self.score == "features":
            from mining.features import DIFT_DRAWS

            return DIFT_DRAWS
        if self.score == "patches":
            return len(self._tile_boxes()) * (int(self.patch_draws) if self.patch_features in ("dift", "denoise") else 1)
        return int(self.draws) * (1 + len(self._conditions()))

    def group_size_(self) -> int:
        """Images per fixed group: as many as one UNet batch holds (at least one)."""
        return max(1, int(self.batch_size) // self._rows_per_image())

    def groups(self, inp: ImageInput) -> list[list[int]]:
        """The fixed groups of image indices that every image is computed in."""
        return fixed_groups(range(len(inp)), self.group_size_())

    def _features(self, inp: ImageInput, idx: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        """(n, D) flattened, L2-normalised DIFT feature maps, and (n, C, h, w) the maps, per-cell normalised."""
        from mining.features import DIFT_DRAWS, DiftExtractor, l2_normalize

        bundle, prompts, _ = self._load_runtime()
        # the normal label's prompt when the model was finetuned with it, else the null prompt
        prompt = prompts.prompt(self.normal_label) if self.normal_label in self.labels_known_ else prompts.null_prompt
        # DIFT runs every image with all its draws: batch_size // draws images make batch_size UNet rows
        dift = DiftExtractor(bundle, seed=int(self.seed), batch_size=max(1, int(self.batch_size) // DIFT_DRAWS))
        fmaps = dift(torch.from_numpy(inp.load(self.resolution_, idx)), [prompt] * len(idx))
        flat = l2_normalize(fmaps.reshape(len(fmaps), -1)).numpy()
        return flat, torch.nn.functional.normalize(fmaps, dim=1)

    def _feature_maps(self, flat: np.ndarray, cells: torch.Tensor) -> torch.Tensor:
        """Per cell, 1 - cosine similarity to the nearest normal image's features at that cell."""
        train = torch.from_numpy(self.train_features_)
        nearest = torch.cdist(torch.from_numpy(flat), train).argmin(dim=1)
        train_cells = torch.nn.functional.normalize(train[nearest].reshape(cells.shape), dim=1)
        return 1 - (cells * train_cells).sum(dim=1)

    def _conditions(self) -> list[str]:
        if self.score != "atypicality":
            return []
        others = [c for c in self.labels_known_ if c != self.normal_label]
        return [self.normal_label] + others

    def _latent_maps(self, inp: ImageInput, idx: list[int]) -> torch.Tensor:
        """(n, h, w) anomaly maps at latent resolution (higher = more anomalous) of images `idx`."""
        from diffmine.apps.anomaly.trajectory import trajectory_maps

        bundle, prompts, est = self._load_runtime()
        conds = self._conditions()
        images, ids = torch.from_numpy(inp.load(self.resolution_, idx)), [inp.ids[i] for i in idx]
        if self.score == "trajectory":
            z0 = est.encode(images, ids)
            null = est.embeddings([prompts.null_prompt])  # the estimator's cached null prompt
            return trajectory_maps(bundle, z0, [DRAW_KEY] * len(ids), null, self.trajectory_start,
                                   int(self.trajectory_steps), int(self.draws), int(self.seed), int(self.batch_size))
        results = est.estimate(images, ids, [conds] * len(ids))
        if self.score == "reconstruction":
            return torch.stack([torch.from_numpy(r.err_null) for r in results])
        maps = []
        for r in results:
            diff = torch.from_numpy(r.diff)  # (L, h, w): row 0 the normal label
            if len(diff) == 1:
                maps.append(-diff[0])
            else:  # margin to the label that explains x best (chosen on the whole image)
                best = 1 + int(diff[1:].mean(dim=(1, 2)).argmax())
                maps.append(diff[best] - diff[0])
        return torch.stack(maps)

    def score_group(self, inp: ImageInput, idx: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        """(scores (n,), latent maps (n, h, w)) of the images `idx`, one of `groups(inp)`."""
        if self.score == "features":
            flat, cells = self._features(inp, idx)
            return self.knn_.decision_function(flat), self._feature_maps(flat, cells)
        if self.score == "patches":
            return self._patch_scores(inp, idx)
        maps = self._latent_maps(inp, idx)
        return maps.double().mean(dim=(1, 2)).numpy(), maps

    def _check_geometry(self, inp: ImageInput) -> None:
        g = inp.geometry
        if tuple(g) != tuple(self.geometry_):
            fh, fw, fc = self.geometry_
            raise DataError(f"images are {g[0]}x{g[1]} with {g[2]} channel(s); the detector was fitted on "
                            f"{fh}x{fw} with {fc} channel(s)")

    def _scores_and_maps(self, inp: ImageInput) -> tuple[np.ndarray, torch.Tensor]:
        key = inp.digest()
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1], memo[2]
        from tqdm.auto import tqdm

        parts = []
        with tqdm(total=len(inp), desc=f"anomaly scores ({self.score})", disable=not self.progress) as bar:
            for g in self.groups(inp):
                parts.append(self.score_group(inp, g))
                bar.update(len(g))
        scores, maps = np.concatenate([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        self.remember(inp, scores, maps)
        return scores, maps

    def remember(self, inp: ImageInput, scores: np.ndarray, maps: torch.Tensor) -> None:
        """Keep (scores, latent maps) of `inp`: decision_function, predict_proba, anomaly_maps reuse them."""
        self._memo = (inp.digest(), scores, maps)

    def decision_function(self, X):
        """Anomaly scores of X (higher = more anomalous), shape (n,)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, ["decision_scores_", "threshold_", "labels_"])
        inp = ImageInput(X)
        self._check_geometry(inp)
        return self._scores_and_maps(inp)[0].copy()

    def anomaly_maps(self, X) -> np.ndarray:
        """(n, R, R) per-pixel anomaly maps at the model's resolution: the scores before the spatial mean.

        patches: (n, H, W), the stitched patch scores at the images' own size."""
        from typicality.formula import upsample

        inp = ImageInput(X)
        self._check_geometry(inp)
        maps = self._scores_and_maps(inp)[1]
        if self.score == "patches":
            return maps.numpy()
        return upsample(maps, (self.resolution_,) * 2).numpy()

    # PyOD's predict_proba reads X.shape[0]: give a list of paths a shape (an object array).
    def predict_proba(self, X, method="linear", return_confidence=False):
        return super().predict_proba(_shaped(X), method=method, return_confidence=return_confidence)

    def predict(self, X, return_confidence=False):
        return super().predict(_shaped(X), return_confidence=return_confidence)

    def predict_confidence(self, X):
        return super().predict_confidence(_shaped(X))


def _shaped(X):
    if isinstance(X, (list, tuple)) and X and isinstance(X[0], (str, Path)):
        return np.array([str(x) for x in X], dtype=object)
    if isinstance(X, (str, Path)):
        from diffmine.core.inputs import list_images

        return np.array([str(p) for p in list_images(X)[0]], dtype=object)
    return X
