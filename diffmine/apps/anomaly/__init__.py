"""Anomaly detection from a diffusion model's denoising errors.

`detector.DiffusionDetector` is a PyOD detector (fit on normal images, decision_function higher
= more anomalous); `run.fit_detector` / `run.score_images` are `diffmine anomaly fit/score`.
"""
