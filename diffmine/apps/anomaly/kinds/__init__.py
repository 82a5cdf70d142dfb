"""The detector's score kinds, one class per kind, chosen by name (`KINDS[score]`).

Each kind says how the detector is fitted on the normal images, how many UNet rows one image takes
(which sizes the fixed groups), and how a group of images gets its scores and maps; detector.py's
docstring describes what each kind computes. A kind holds no fitted state of its own: what it learns
it sets on the detector as trailing-underscore attributes (scikit-learn's convention), and `saved`
names those that the detector folder keeps as arrays.
"""
from __future__ import annotations

from diffmine.apps.anomaly.kinds.atypicality import Atypicality
from diffmine.apps.anomaly.kinds.base import DRAW_KEY, ScoreKind
from diffmine.apps.anomaly.kinds.features import Features
from diffmine.apps.anomaly.kinds.patches import Patches
from diffmine.apps.anomaly.kinds.reconstruction import Reconstruction
from diffmine.apps.anomaly.kinds.trajectory import Trajectory

KINDS: dict[str, type[ScoreKind]] = {kind.name: kind for kind in
                                     (Reconstruction, Atypicality, Trajectory, Features, Patches)}

__all__ = ["KINDS", "DRAW_KEY", "ScoreKind"]
