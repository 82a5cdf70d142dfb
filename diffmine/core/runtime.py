"""Where a command runs: one runtime under every command that touches a model.

    rt = Runtime.start(cfg)                 # device, dtype, and this process's share under `accelerate launch`
    model = rt.load(cfg.model)              # bundle on rt.device in rt.dtype, its prompts and labels
    mine = rt.share(groups)                 # groups k with k % world == rank
    rt.wait(); if rt.is_main: ...           # merge what every process wrote

The device is the GPU when there is one (under `accelerate launch`, this process's GPU), else
the CPU; `--device` overrides it. `--dtype auto` is bfloat16 on a GPU that has it, float32
elsewhere. Without `accelerate launch` a run is one process; `process_index`/`num_processes`
simulate a split in tests. Under `accelerate launch --multi_gpu` on a machine without CUDA the
processes form a gloo group (CPU), so a split works the same on a laptop.

`POLICY` turns the settings into (device, dtype); tests swap it to prove that every command's UNet
runs where the runtime chose (the check is `check_placement`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from diffmine.core.errors import DataError
from diffmine.core.runtime_settings import DTYPE_CHOICES, RuntimeSettings  # noqa: F401 - part of this module's API

T = TypeVar("T")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
assert DTYPE_CHOICES == ("auto", *DTYPES)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on a CUDA GPU that has it, float32 elsewhere (see `Runtime`).

    On a GPU, bf16 runs an SD-v1.5 UNet several times faster per draw than fp32 (the measured speeds
    are in benchmarks/results/GPU.md); its rounding is small next to the draws' Monte-Carlo noise.
    CPUs keep fp32, so maps there stay exact to float32. Error maps are always summed in float64."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        fast_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if fast_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def default_policy(device: str, dtype: str, accelerate_device: torch.device | None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) for the settings: this process's GPU under accelerate, else the first GPU, else the CPU."""
    if device in (None, "", "auto"):
        if accelerate_device is not None:
            dev = torch.device(accelerate_device)
        elif torch.cuda.is_available():
            dev = torch.device("cuda")
        else:
            dev = torch.device("cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise DataError(f"--device {device}: not a device name (cpu, cuda, cuda:1, mps)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise DataError(f"--device {device}: this machine has no CUDA GPU (torch {torch.__version__})")
    return dev, resolve_dtype(dtype, dev)


# Swappable (tests): settings -> (device, dtype). Every command gets its placement from here.
POLICY: Callable[[str, str, torch.device | None], tuple[torch.device, torch.dtype]] = default_policy


@dataclass
class LoadedModel:
    """A model name made concrete: the bundle on the runtime's device, its prompts and labels."""
    name: str                 # what the user wrote
    path: str                 # the folder (or hub id) it resolved to
    bundle: object            # diffmine.core.bundle.SDBundle, in eval mode
    prompts: object           # diffmine.core.prompts.PromptTemplate the model was finetuned with
    labels: list[str] | None  # the labels it was finetuned on (None: not a diffmine model)

    @property
    def is_folder(self) -> bool:
        return Path(self.path).is_dir()


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world: int = 1
    state: object | None = None  # accelerate's PartialState when launched (None: simulated or single)

    accelerator: object | None = None  # accelerate's Accelerator of a command that trains (`start_training`)

    @classmethod
    def start(cls, settings: RuntimeSettings | None = None, **overrides) -> "Runtime":
        """The runtime for a command's settings (any object with device/dtype/process_index/num_processes)."""
        get = lambda k, d=None: overrides.get(k, getattr(settings, k, d))  # noqa: E731
        index, count = get("process_index"), get("num_processes")
        state = None
        if index is None:
            from accelerate import PartialState

            # cpu=True without CUDA: under `accelerate launch --multi_gpu` (torchrun) a CPU-only machine
            # then forms a gloo group instead of running n unaware copies.
            state = PartialState(cpu=not torch.cuda.is_available())
            index, count = state.process_index, state.num_processes
        return cls._placed(get("device", "auto"), get("dtype", "auto"), index, count, state)

    @classmethod
    def one_process(cls, settings: RuntimeSettings | None = None, **overrides) -> "Runtime":
        """A runtime that computes every item it is given, whatever launched it (a library call)."""
        return cls.start(settings, **{**overrides, "process_index": 0, "num_processes": 1})

    @classmethod
    def start_training(cls, settings: RuntimeSettings, **overrides) -> "Runtime":
        """The runtime of a command that trains (finetune): accelerate's `Accelerator` (`.accelerator`)
        under the same policy as every command. `device` is where the trained and the frozen models go;
        `dtype` is the precision their forwards compute in: the frozen parts' weights, and the autocast
        of the trained model's forwards (`autocast()`; its weights and optimizer stay float32)."""
        from accelerate import Accelerator, PartialState
        from accelerate.state import AcceleratorState

        get = lambda k: overrides.get(k, getattr(settings, k, "auto"))  # noqa: E731
        cpu = get("device") == "cpu" or not torch.cuda.is_available()
        rt = cls._placed(get("device"), get("dtype"), None, None, PartialState(cpu=cpu))
        # accelerate's own mixed precision only for fp16, for its gradient scaler; bf16 needs none and
        # autocasts on this runtime's device (accelerate's autocast would take its own device's type)
        mixed = "fp16" if rt.dtype == torch.float16 else "no"
        if AcceleratorState._shared_state.get("_mixed_precision", mixed) != mixed and rt.world == 1:
            AcceleratorState._reset_state()  # an earlier run in this process (tests, a detector) chose another
        rt.accelerator = Accelerator(mixed_precision=mixed, cpu=cpu, device_placement=False)
        if rt.dtype == torch.float16 and rt.accelerator.device.type != rt.device.type:
            raise DataError(f"--dtype fp16 trains with accelerate's gradient scaler on {rt.accelerator.device.type}, "
                            f"not on {rt.device}; choose --dtype bf16 or fp32 there")
        return rt

    @classmethod
    def _placed(cls, device: str, dtype: str, index, count, state) -> "Runtime":
        """The runtime of process `index` of `count` (accelerate's when None) placed by `POLICY`."""
        if index is None:
            index, count = state.process_index, state.num_processes
        accel_device = state.device if state is not None and state.device.type != "cpu" else None
        dev, dt = POLICY(device, dtype, accel_device)
        if torch.device(dev).type == "cpu" and dtype in ("bf16", "fp16") and int(index) == 0:
            import warnings

            # CPUs lack fast half-precision kernels: asked for explicitly, it is a surprise worth one line
            warnings.warn(f"--dtype {dtype} on the CPU runs many times slower than fp32 (no fast {dtype} kernels "
                          "there); leave --dtype auto for fp32", stacklevel=3)
        return cls(torch.device(dev), dt, int(index), int(count or 1), state)

    def autocast(self):
        """The block's forwards compute in this runtime's dtype (a no-op in float32)."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    # -- the work share ------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        """True when the processes can wait for each other (a real launch, or one process)."""
        return self.state is not None or self.world == 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's items: every world-th, from its rank (fixed, whatever has been done)."""
        return list(items[self.rank::self.world])

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def broadcast(self, value):
        """The main process's `value` on every process of a launch (a small picklable object)."""
        if self.state is None or self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    # -- models --------------------------------------------------------------------------------
    def load(self, name: str | Path, text_encoder: str | None = None, what: str = "model") -> LoadedModel:
        """The model `name` stands for ("tiny", "tiny-scratch", a folder, a hub id), placed here."""
        from diffmine.core.models import load_bundle, model_labels, resolve_model
        from diffmine.core.prompts import PromptTemplate

        path = resolve_model(name, what)
        bundle = load_bundle(path, text_encoder=text_encoder).eval()
        return LoadedModel(str(name), path, self.place(bundle),
                           PromptTemplate.load(path) if Path(path).is_dir() else PromptTemplate(),
                           model_labels(path) if Path(path).is_dir() else None)

    def place(self, bundle):
        """A bundle on this runtime's device and dtype (also one a caller built in memory)."""
        return bundle.to(self.device, self.dtype)

    def check_placement(self, module: torch.nn.Module, what: str = "UNet") -> None:
        """Raise if `module` is not where this runtime put its models (a command that bypassed it)."""
        p = next(module.parameters())
        if p.device.type != self.device.type or p.dtype != self.dtype:
            raise RuntimeError(f"{what} is on {p.device} in {p.dtype}; the runtime chose {self.device} in {self.dtype}")
