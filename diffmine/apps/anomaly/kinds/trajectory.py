"""trajectory: the denoising error accumulated along a reverse DDIM trajectory (../trajectory.py)."""
from __future__ import annotations

from diffmine.apps.anomaly.kinds.base import DRAW_KEY, ScoreKind


class Trajectory(ScoreKind):
    name = "trajectory"

    def latent_maps(self, inp, idx):
        from diffmine.apps.anomaly.trajectory import trajectory_maps

        det, (bundle, prompts, est) = self.det, self.det.loaded()
        ids = [inp.ids[i] for i in idx]
        z0 = est.encode(self.images(inp, idx), ids)
        null = est.embeddings([prompts.null_prompt])  # the estimator's cached null prompt
        return trajectory_maps(bundle, z0, [DRAW_KEY] * len(ids), null, det.trajectory_start,
                               int(det.trajectory_steps), int(det.draws), int(det.seed), int(det.batch_size))
