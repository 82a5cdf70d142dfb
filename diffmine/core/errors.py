"""One error type for bad user input: its message is one line naming the file and the problem."""
from __future__ import annotations

import warnings


class DataError(ValueError):
    """Raised for unreadable images, bad metadata rows, unknown columns, empty labels..."""


class SkippedInputs:
    """The `--skip-bad` policy in one place: a bad input's DataError stops the run, or, with
    skip_bad, the input is left out and every one left out is listed in a single warning."""

    def __init__(self, skip_bad: bool, what: str):
        self.skip_bad, self.what, self.messages = bool(skip_bad), what, []

    def add(self, exc: DataError) -> None:
        """From an `except DataError` block: re-raises it unless bad inputs are skipped."""
        if not self.skip_bad:
            raise exc
        self.messages.append(str(exc))

    def warn(self, stacklevel: int = 2) -> None:
        """The one warning ("skipped N <what>: ..."), if anything was skipped; stacklevel as at the caller."""
        if self.messages:
            warnings.warn(f"skipped {len(self.messages)} {self.what}: " + "; ".join(self.messages),
                          stacklevel=stacklevel + 1)
