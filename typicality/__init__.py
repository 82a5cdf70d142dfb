"""Typicality maps T(x|c) (docs/method.md §2): draw schedule, formula, batched estimator, sharded store."""
from typicality.engine import TypicalityEstimator, run_typicality
from typicality.store import TypicalityStore

__all__ = ["TypicalityEstimator", "TypicalityStore", "run_typicality"]
