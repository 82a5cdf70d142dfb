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
  default (`patch_features="vae+pixels"`) the VAE encoder's last feature map (encoder_features.py)
  beside the raw pixel patch two cells wide around the cell (patches.joint_vectors; each half divided
  by its median nearest-normal distance, measured at fit, patches.half_scales), or the VAE's map alone
  (`"vae"`), or DIFT (`"dift"`: UNet up_blocks[`patch_block`] at t = `patch_t`, `patch_draws` draws),
  or, for comparison, the null prompt's denoising errors (`"denoise"`: per draw and latent channel,
  logged, `patch_draws` draws over `t_range`; denoise_features.py), or raw pixel patches alone
  (`"pixels"`: `patch_size` px squares every half patch, pixel_features.py; no model features); each is
  averaged over its `patch_pool` x `patch_pool` neighbourhood (PatchCore's local aggregation is 3; 1
  keeps a one-cell defect's contrast) and, learned features only, L2-normalised. The normal images' patches
  form a memory bank (FAISS), subsampled to `coreset_ratio` of them and at most `bank_size` by greedy
  k-center `coreset` (PatchCore's) or at random, so fitting and scoring stay linear in the number of
  normal images. A patch's score is its distance to the nearest bank patch, found by an HNSW graph
  (`bank_search="hnsw"`; a found patch is never nearer than the nearest, rarely farther) or by the
  exact scan (`"exact"`); the image score is the mean of its `top_k` highest (1: the maximum, as
  PatchCore) or, with `image_score="top-k-or-mean"`, the larger of that and the mean of all its patch
  scores, each standardised by the normal images' (a global change of the texture moves every patch a
  little, the maximum hardly: patches.local_or_global); the map is the patch scores upsampled per tile
  and averaged where tiles overlap, at the image's own size. A training
  image's score leaves its own patches out of the bank (not 0 for itself). The defaults were chosen
  on the training and validation splits of diffmine.datasets.defects (benchmarks/anomaly_defects.py
  repeats the choice of features, pooling, stride and top-k on its validation split;
  benchmarks/anomaly_transfer.py repeats the choice of features, vae / vae+pixels / dift / pixels,
  and pooling on it, and reports on diffmine.datasets.defect_families, never used for a choice).

Each kind is a small class in kinds/ (its fit, its UNet rows per image, its scores and maps), chosen by
`score` from `kinds.KINDS`; the detector delegates to it (`kind`). The hyper-parameters are checked by
`config.parameter_constraints()`, scikit-learn's `_parameter_constraints`, which `AnomalyFitConfig`
checks its fields by too.

Images are scored in fixed groups of `group_size()` images (about one UNet batch each), the same
whatever the caller asks for, so an image's score does not depend on which images came with it
(`diffmine anomaly score` splits and resumes by these groups). The model is loaded through
`diffmine.core.runtime.Runtime` (`device`, `dtype`; a command hands its own with `use_runtime`).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from pyod.models.base import BaseDetector  # PyOD: imported by the anomaly command only (the `anomaly` extra)

from diffmine.core.settings import ConfigError, defaults
from diffmine.core.errors import DataError
from diffmine.core.inputs import ImageInput
from diffmine.core.partial import fixed_groups

from diffmine.apps.anomaly.config import SCORES, AnomalyFitConfig, parameter_constraints, validate_params
from diffmine.apps.anomaly.kinds import DRAW_KEY, KINDS, ScoreKind

_D = defaults(AnomalyFitConfig)  # the detector's defaults are the command's, written once there

__all__ = ["DiffusionDetector", "SCORES", "DRAW_KEY"]


class LoadedModel(NamedTuple):
    """The detector's model as loaded on its runtime: the pipeline bundle, its prompts, and the
    typicality estimator every denoising-error kind computes with (common random numbers)."""
    bundle: object
    prompts: object
    estimator: object


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

    _parameter_constraints = parameter_constraints()  # scikit-learn's declaration; AnomalyFitConfig's too

    def __init__(self, model=None, base=None, score=_D["score"], contamination=_D["contamination"],
                 normal_label=_D["normal_label"], draws=_D["draws"], t_range=_D["t_range"],
                 trajectory_start=_D["trajectory_start"], trajectory_steps=_D["trajectory_steps"],
                 finetune_steps=_D["finetune_steps"], finetune_lr=_D["finetune_lr"],
                 finetune_batch=_D["finetune_batch"], resolution=_D["resolution"], batch_size=_D["batch_size"],
                 seed=_D["seed"], work_dir=None, progress=False, n_neighbors=_D["n_neighbors"], device=_D["device"],
                 dtype=_D["dtype"], tile_stride=_D["tile_stride"], patch_features=_D["patch_features"],
                 patch_size=_D["patch_size"], patch_pool=_D["patch_pool"], patch_block=_D["patch_block"],
                 patch_t=_D["patch_t"], patch_draws=_D["patch_draws"], top_k=_D["top_k"],
                 image_score=_D["image_score"], coreset=_D["coreset"], coreset_ratio=_D["coreset_ratio"],
                 bank_size=_D["bank_size"], bank_search=_D["bank_search"]):
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
        self.image_score = image_score
        self.coreset = coreset
        self.coreset_ratio = coreset_ratio
        self.bank_size = bank_size
        self.bank_search = bank_search

    def use_runtime(self, runtime) -> "DiffusionDetector":
        """Run on `runtime` (a command's `Runtime`) instead of one started from `device`/`dtype`."""
        self._runtime = runtime
        self.unload()
        return self

    def runtime(self):
        """Where the model runs: the `Runtime` given to `use_runtime`, or one started from `device`/`dtype`."""
        if getattr(self, "_runtime", None) is None:
            from diffmine.core.runtime import Runtime

            # the detector computes every image it is given: one process, whatever launched it
            self._runtime = Runtime.one_process(None, device=self.device, dtype=self.dtype)
        return self._runtime

    def loaded(self) -> LoadedModel:
        """The fitted model (`model_path_`) loaded on `runtime()`, once."""
        if getattr(self, "_loaded", None) is None:
            from typicality.draws import make_draws
            from typicality.engine import TypicalityEstimator

            loaded = self.runtime().load(self.model_path_)
            est = TypicalityEstimator(loaded.bundle, loaded.prompts, draws=int(self.draws),
                                      t_range=tuple(self.t_range), seed=int(self.seed), batch_size=int(self.batch_size))
            # Common random numbers: every image sees the same (t, eps) draws, so score differences
            # between images are not draw noise, and a score does not depend on a file's name.
            est.draw_fn = lambda _id, shape: make_draws(est.draws, shape, est.seed, DRAW_KEY, est.t_range,
                                                        est.num_train_timesteps, est.schedule, est.antithetic)
            self._loaded = LoadedModel(loaded.bundle, loaded.prompts, est)
        return self._loaded

    def unload(self) -> None:
        """Forget the loaded model: the next use loads `model_path_` again (on `runtime()`)."""
        self._loaded = None

    @property
    def kind(self) -> ScoreKind:
        """The score kind `score` names (kinds.KINDS), bound to this detector."""
        if getattr(self, "_kind", None) is None or self._kind.name != self.score:
            self._kind = KINDS[self.score](self)
        return self._kind

    # -- validation ----------------------------------------------------------------------
    def _check_params(self) -> None:
        validate_params(self.get_params())
        if self.model is not None:
            self._model_folder(self.model, "model")

    @staticmethod
    def _model_folder(name, param: str) -> Path:
        """The model folder `name` stands for ("tiny": the shipped towns model), or ConfigError naming `param`."""
        from diffmine.core.models import resolve_model

        folder = Path(resolve_model(name, param))
        if not folder.is_dir():
            raise ConfigError(param, f"{name}: model folder does not exist")
        return folder

    # -- fitting -------------------------------------------------------------------------
    def fit(self, X, y=None):
        """Fit on normal images X: finetune (with `base`), score X, set the threshold from `contamination`."""
        self._check_params()
        inp = ImageInput(X)
        self.geometry_ = inp.geometry
        self.model_path_ = str(self._finetune(inp) if self.base is not None
                               else self._model_folder(self.model, "model").resolve())
        self.labels_known_ = model_labels(self.model_path_)
        self._kind = None
        self.kind.check_fit()
        self.unload()
        self._memo = None
        self.decision_scores_ = self.kind.fit(inp)
        self._set_n_classes(y)
        self._process_decision_scores()
        return self

    def _finetune(self, inp: ImageInput) -> Path:
        """Finetune `base` on the normal images (written as NORMAL_LABEL/*.png) with the project's finetuner."""
        from PIL import Image

        from diffmine.core.prompts import PromptTemplate
        from finetune.train import train
        from finetune.config import TrainConfig

        base = self._model_folder(self.base, "base")  # "tiny": the shipped pretrained small SD
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
                          samples_per_label=0, device=self.device, dtype=self.dtype,  # the detector's placement
                          # its figures were measured with the base's own VAE; adapting it here is not measured yet
                          adapt_vae="never"),
              progress=bool(self.progress))
        shutil.rmtree(work / "model" / "cache", ignore_errors=True)
        shutil.rmtree(work / "model" / "checkpoints", ignore_errors=True)
        return (work / "model").resolve()

    # -- scoring -------------------------------------------------------------------------
    @property
    def resolution_(self) -> int:
        return int(self.resolution or self.loaded().bundle.resolution)

    def group_size(self) -> int:
        """Images per fixed group: as many as one UNet batch holds (at least one)."""
        return max(1, int(self.batch_size) // self.kind.rows_per_image())

    def groups(self, inp: ImageInput) -> list[list[int]]:
        """The fixed groups of image indices that every image is computed in."""
        return fixed_groups(range(len(inp)), self.group_size())

    def score_group(self, inp: ImageInput, idx: list[int]) -> tuple[np.ndarray, torch.Tensor]:
        """(scores (n,), maps (n, h, w)) of the images `idx`, one of `groups(inp)`."""
        return self.kind.score_group(inp, idx)

    def check_geometry(self, inp: ImageInput) -> None:
        """DataError unless `inp`'s images have the size and channels the detector was fitted on."""
        g = inp.geometry
        if tuple(g) != tuple(self.geometry_):
            fh, fw, fc = self.geometry_
            raise DataError(f"images are {g[0]}x{g[1]} with {g[2]} channel(s); the detector was fitted on "
                            f"{fh}x{fw} with {fc} channel(s)")

    def scores_and_maps(self, inp: ImageInput) -> tuple[np.ndarray, torch.Tensor]:
        """(scores, maps) of every image of `inp`, group by group (remembered for the same images)."""
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

    def set_params(self, **params):
        """scikit-learn's set_params; scores remembered for the last images are dropped (another image score
        or setting reads the same patches differently)."""
        self.__dict__.pop("_memo", None)
        return super().set_params(**params)

    def remember(self, inp: ImageInput, scores: np.ndarray, maps: torch.Tensor) -> None:
        """Keep (scores, maps) of `inp`: decision_function, predict_proba, anomaly_maps reuse them."""
        self._memo = (inp.digest(), scores, maps)

    def decision_function(self, X):
        """Anomaly scores of X (higher = more anomalous), shape (n,)."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, ["decision_scores_", "threshold_", "labels_"])
        inp = ImageInput(X)
        self.check_geometry(inp)
        return self.scores_and_maps(inp)[0].copy()

    def anomaly_maps(self, X) -> np.ndarray:
        """(n, R, R) per-pixel anomaly maps at the model's resolution: the scores before the spatial mean.

        patches: (n, H, W), the stitched patch scores at the images' own size."""
        inp = ImageInput(X)
        self.check_geometry(inp)
        return self.kind.pixel_maps(self.scores_and_maps(inp)[1])

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
