"""The settings every model-running command shares: device, dtype, and a simulated process split.

Kept apart from `diffmine.core.runtime` (which needs torch) so that the command line parses its
flags, answers --help and reports bad settings without importing torch."""
from __future__ import annotations

from dataclasses import dataclass

from diffmine.core.settings import check, option

DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")  # diffmine.core.runtime.DTYPES maps them to torch dtypes


@dataclass
class RuntimeSettings:
    """The settings every model-running command shares (its config inherits them)."""
    device: str = option("auto", "where the models run: auto = this process's GPU when there is one, else "
                         "the CPU; or cpu, cuda, cuda:1, mps")
    dtype: str = option("auto", "model precision: auto = bf16 on a GPU that has it, fp32 elsewhere",
                        choices=DTYPE_CHOICES, resume_key=True)  # a typicality store records it (resume key)
    process_index: int | None = option(None, "simulated process index (tests); default: accelerate's", cli=False)
    num_processes: int | None = option(None, "simulated process count (tests)", cli=False)

    def validate_runtime(self) -> None:
        check(self.dtype in DTYPE_CHOICES, "dtype", f"must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}")
        check(self.num_processes is None or self.num_processes >= 1, "num_processes", "must be >= 1")
        if self.process_index is not None:
            processes = self.num_processes or 1
            check(0 <= self.process_index < processes, "process_index",
                  f"must be in 0..{processes - 1}, got {self.process_index}")
