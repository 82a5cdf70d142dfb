"""Typicality maps T(x|c) (docs/method.md §2): draw schedule, formula, batched estimator, sharded store.

The names below are imported on first use, so `typicality.config` (what the CLI parses with) loads
without torch."""
import importlib

_WHERE = {"TypicalityEstimator": "typicality.engine", "run_typicality": "typicality.engine",
          "TypicalityStore": "typicality.store"}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'typicality' has no attribute {name!r}")
