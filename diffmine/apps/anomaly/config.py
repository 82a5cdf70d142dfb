"""Settings of `diffmine anomaly fit` and `diffmine anomaly score`, and the score kinds they name."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from os import PathLike
from functools import cache

from diffmine.core.runtime_settings import RuntimeSettings
from mining.config import DIFT_BLOCK, DIFT_T
from typicality.config import PUBLISHED_T_RANGE
from diffmine.core.settings import ConfigError, check, check_required, check_t_range, option, skip_bad_option

# The score kinds (detector.py documents each). Here, not in detector.py: the config must not
# import PyOD, so every other command starts without the anomaly extra.
SCORES = ("reconstruction", "atypicality", "trajectory", "features", "patches")
CORESETS = ("greedy", "random")
# how a patch finds its nearest bank patch (patches.MemoryBank): a FAISS HNSW graph, or the exact flat scan
BANK_SEARCHES = ("hnsw", "exact")
# how a patch detector turns its patch scores into an image score (patches.image_score)
IMAGE_SCORES = ("top-k", "top-k-or-mean")
# encoder_features.py / mining.features.DiftExtractor / denoise_features.py / pixel_features.py / the
# first and the last side by side (patches.joint_vectors)
PATCH_FEATURES = ("vae", "dift", "denoise", "pixels", "vae+pixels")

# Fewer draws than mining's 64: an image-level score averages the whole map, which needs fewer
# draws than a per-pixel map to rank images stably.
ANOMALY_DRAWS = 16


@dataclass
class AnomalyFitConfig(RuntimeSettings):
    data: str | None = option(None, "folder of normal images (any layout; every image under it)", required=True)
    out: str | None = option(None, "detector folder to write", required=True)
    model: str | None = option(None, "model folder to score with, or 'tiny' (the shipped towns model; enough "
                               "for --score features) (give this or --base)")
    base: str | None = option(None, "model to finetune on the normal images: 'tiny' (the shipped towns model) "
                              "or a model folder")
    score: str = option("reconstruction", "anomaly score", choices=SCORES)
    contamination: float = option(0.1, "expected share of anomalies: the threshold is the training scores' "
                                  "1 - contamination quantile (PyOD's rule)")
    normal_label: str = option("normal", "label of the normal data (the label --base finetunes with; "
                               "atypicality scores -T(x | this label))")
    draws: int = option(ANOMALY_DRAWS, "noise draws per image (trajectory: noise draws per trajectory)")
    t_range: tuple[float, float] = option(PUBLISHED_T_RANGE, "timestep range as fractions of T", source="docs/method.md §2")
    trajectory_start: float = option(0.3, "trajectory: partial noising level as a fraction of T")
    trajectory_steps: int = option(10, "trajectory: DDIM steps back to t = 0")
    finetune_steps: int = option(200, "finetuning steps with --base")
    finetune_lr: float = option(1e-4, "finetuning learning rate with --base", source="docs/method.md §1")
    finetune_batch: int = option(16, "finetuning batch size with --base")
    resolution: int | None = option(None, "image size the model sees (default: the model's)")
    batch_size: int = option(64, "UNet rows per forward")
    seed: int = option(0, "seed of draws and finetuning")
    n_neighbors: int = option(5, "features: nearest normal images whose distance is the score (as PyOD's KNN)")
    skip_bad: bool = skip_bad_option()
    force: bool = option(False, "replace the detector already in --out")
    # patches (PatchCore on patch features of tiles at the image's own resolution, detector.py)
    tile_stride: int | None = option(None, "patches: pixels between tiles of --resolution px (default: one "
                                     "tile, tiles side by side; less: tiles overlap, smoother maps, more work)")
    patch_features: str = option("vae+pixels", "patches: what a patch is described by: the VAE encoder's last "
                                 "feature map beside raw pixel patches two latent cells wide (vae+pixels), the "
                                 "VAE's map alone (vae), DIFT features (dift: --patch-block, --patch-t, "
                                 "--patch-draws) or, for comparison, denoising errors (denoise: --patch-draws over "
                                 "--t-range) or raw pixel patches alone (pixels: --patch-size px, every half patch)",
                                 choices=PATCH_FEATURES)
    patch_size: int = option(8, "patches: side in px of a pixel patch with --patch-features pixels (one "
                             "every half patch)")
    patch_pool: int = option(1, "patches: cells each patch feature is averaged over, per side (1: none, a "
                             "one-cell defect keeps its contrast; 3: PatchCore's 3x3 neighbourhood)")
    patch_block: int = option(DIFT_BLOCK, "patches: UNet up block whose output cells are the patch features",
                              source="docs/method.md §4")
    patch_t: int = option(DIFT_T, "patches: timestep of the DIFT features", source="docs/method.md §4")
    patch_draws: int = option(2, "patches: noise draws the DIFT features average over (denoise: draws, each "
                              "its own feature components)")
    top_k: int = option(1, "patches: the image score is the mean of its top-k patch scores (1: the maximum, "
                        "as PatchCore)")
    image_score: str = option("top-k-or-mean", "patches: the image score: the mean of its top-k patch scores "
                              "(top-k), or the larger of that and the mean of all its patch scores, each in "
                              "standard deviations of the normal images' (top-k-or-mean: a texture changed over "
                              "the whole image moves every patch a little and none much)", choices=IMAGE_SCORES)
    coreset: str = option("greedy", "patches: how the memory bank is subsampled (greedy k-center, as "
                          "PatchCore, or random)", choices=CORESETS)
    coreset_ratio: float = option(0.1, "patches: share of the normal patches the memory bank keeps "
                                  "(PatchCore's coreset ratio)")
    bank_size: int = option(16384, "patches: the most patches the memory bank keeps (fit and scoring stay "
                            "linear in the number of normal images)")
    bank_search: str = option("hnsw", "patches: how a patch finds its nearest bank patch: a FAISS HNSW graph "
                              "(hnsw: several times faster, the exact nearest for all but a few patches in ten "
                              "thousand, never nearer) or a full scan (exact)", choices=BANK_SEARCHES)

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
        validate_params(asdict(self))


@cache
def parameter_constraints() -> dict:
    """The detector's hyper-parameters -> their allowed values, as scikit-learn's `_parameter_constraints`
    (any one constraint of a list will do); `AnomalyFitConfig` checks its fields of the same names by it."""
    from numbers import Integral, Real

    from sklearn.utils._param_validation import Interval

    def at_least(low):
        return [Interval(Integral, low, None, closed="left")]

    positive = at_least(1)
    odd, timestep_range = _custom_constraints()
    return {
        "model": [str, PathLike, None], "base": [str, PathLike, None], "score": _one_of(SCORES),
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
        "draws": positive, "t_range": [timestep_range()],
        "trajectory_start": [Interval(Real, 0, 1, closed="right")], "trajectory_steps": positive,
        "finetune_steps": positive, "finetune_batch": positive, "resolution": at_least(8) + [None],
        "batch_size": positive, "n_neighbors": positive, "tile_stride": positive + [None],
        "patch_features": _one_of(PATCH_FEATURES), "patch_size": at_least(2), "patch_pool": [odd()],
        "patch_block": at_least(0), "patch_t": at_least(0), "patch_draws": positive, "top_k": positive,
        "image_score": _one_of(IMAGE_SCORES),
        "coreset": _one_of(CORESETS), "coreset_ratio": [Interval(Real, 0, 1, closed="right")],
        "bank_size": positive, "bank_search": _one_of(BANK_SEARCHES),
    }


def validate_params(values: dict) -> None:
    """Check `values` (a config's fields or a detector's get_params()) by `parameter_constraints()`:
    a ConfigError naming the first bad one, in one line ("draws must be >= 1, got 0")."""
    from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints

    for name, constraints in parameter_constraints().items():
        if name not in values:
            continue
        try:
            validate_parameter_constraints({name: constraints}, {name: values[name]}, caller_name=name)
        except InvalidParameterError:
            raise ConfigError(name, _must_be(constraints, values[name])) from None
    check((values.get("model") is None) != (values.get("base") is None), "model",
          "or base: give exactly one of them (a model to score with, or a base to finetune)")


def _one_of(choices: tuple[str, ...]) -> list:
    from sklearn.utils._param_validation import StrOptions

    allowed = StrOptions(set(choices))
    allowed.in_order = choices  # as the help lists them
    return [allowed]


def _must_be(constraints: list, value) -> str:
    """The one-line message of a value none of `constraints` allows (the project's wording, not sklearn's)."""
    from numbers import Integral

    from sklearn.utils._param_validation import Interval, StrOptions, make_constraint

    c = next(c for c in constraints if c is not None)
    if hasattr(c, "message"):
        return c.message(value)
    if isinstance(c, StrOptions):
        return f"must be one of {', '.join(c.in_order)}, got {value!r}"
    if isinstance(c, Interval):
        if c.right is None:
            bounds = f">= {c.left}"
        else:
            bounds = "in " + ("[" if c.closed in ("both", "left") else "(") + f"{c.left}, {c.right}" + (
                "]" if c.closed in ("both", "right") else ")")
        kind = "an int " if c.type is Integral and not isinstance(value, Integral) else ""
        return f"must be {kind}{bounds}, got {value!r}"
    return f"must be {' or '.join(str(make_constraint(c)) for c in constraints)}, got {value!r}"


@cache
def _custom_constraints():
    """Two rules sklearn has no constraint for, as its constraint classes (so `make_constraint` takes them)."""
    from numbers import Integral

    from sklearn.utils._param_validation import HasMethods, Interval

    class Odd(Interval):
        """patch_pool: an odd number of cells >= 1 (a neighbourhood centred on the cell)."""

        def __init__(self):
            super().__init__(Integral, 1, None, closed="left")

        def is_satisfied_by(self, value):
            return super().is_satisfied_by(value) and value % 2 == 1

        def message(self, value):
            if value in self or not isinstance(value, Integral):
                return f"must be odd (a neighbourhood centred on the cell), got {value!r}"
            return f"must be >= 1, got {value!r}"

        def __str__(self):
            return "an odd int >= 1"

    class TimestepRange(HasMethods):
        """t_range: two fractions of T, as diffmine.core.settings.check_t_range (the one check) says."""

        def __init__(self):
            super().__init__("__iter__")

        def is_satisfied_by(self, value):
            return self.message(value) is None

        def message(self, value):
            try:
                check_t_range(value)
            except ConfigError as exc:
                return exc.detail
            except (TypeError, ValueError):
                return f"must be two fractions 0 <= LOW < HIGH <= 1, got {value!r}"
            return None

        def __str__(self):
            return "two fractions 0 <= LOW < HIGH <= 1"

    return Odd, TimestepRange


@dataclass
class AnomalyScoreConfig(RuntimeSettings):
    detector: str | None = option(None, "detector folder written by `diffmine anomaly fit`", required=True)
    data: str | None = option(None, "folder of images to score (every image under it)", required=True)
    out: str | None = option(None, "CSV of scores to write (image_id, path, score, outlier, probability)",
                             required=True)
    maps: str | None = option(None, "folder for per-pixel anomaly map overlays (PNG), optional")
    skip_bad: bool = skip_bad_option()

    def validate(self) -> None:
        check_required(self)
        self.validate_runtime()
