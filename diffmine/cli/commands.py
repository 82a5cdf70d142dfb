"""The subcommands of `diffmine`, one row each: its config class, help line, run function and the one line it
prints from the result. Config classes and run functions are named by their dotted paths: a config is
imported when the parser is built (its fields are the flags), a run function only when its command runs,
so `diffmine --help` and a bad flag answer without importing torch.

A command that genuinely does more (`anomaly`: the sub-subcommands fit and score, and the PyOD check) names
its own module in this package instead of a row; that module has HELP, ACTIONS (action -> Command) and
register(parser)."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Callable

from diffmine.cli.options import add_config_options, config_from_args


def load(dotted: str):
    """The object a dotted path names: "package.module.name"."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: parse `config` from the flags (checked when `validate`), call `check()` if any, then
    the run function `run(config)`; print `summary(config, result)` unless the result is None (another process
    of an `accelerate launch`: the main one wrote the files) or there is no summary."""
    config: str  # dotted path of the config dataclass
    help: str
    run: str  # dotted path of the run function, imported when the command runs
    summary: Callable[[object, object], str] | None = None
    validate: bool = True
    check: Callable[[], None] | None = None  # after the config is checked, before the run function is imported

    @property
    def config_class(self) -> type:
        return load(self.config)

    def register(self, parser) -> None:
        add_config_options(parser, self.config_class)
        parser.set_defaults(run=self)

    def __call__(self, args) -> None:
        cfg = config_from_args(self.config_class, args, validate=self.validate)
        if self.check is not None:
            self.check()
        result = load(self.run)(cfg)
        if self.summary is not None and result is not None:
            print(self.summary(cfg, result))


def report_line(folder) -> str:
    return f"report: {Path(folder) / 'report.html'}"


def classify_line(cfg, res: dict) -> str:
    acc = res.get("accuracy")
    return (f"{res.get('images', '?')} images" + (f", accuracy {acc:.4f}" if isinstance(acc, float) else "")
            + f", {res['images_per_s']:.2f} images/s; written to {cfg.out}")


# subcommand -> its row, or the module (in this package) of a command that does more; in `--help` order
COMMANDS: dict[str, Command | str] = {
    "finetune": Command(
        "finetune.config.TrainConfig", "adapt a Stable Diffusion model to labeled images (docs/method.md §1)",
        "finetune.train.train", lambda cfg, out: f"model written to {out}"),
    "typicality": Command(
        "typicality.config.TypicalityConfig", "per-pixel typicality maps T(x|c) of every image (docs/method.md §2)",
        "typicality.engine.run_typicality", lambda cfg, out: f"typicality written to {out}"),
    "mine": Command(
        "mining.config.MineConfig",
        "typical patches -> DIFT features -> ranked clusters -> report.html (docs/method.md §3-4)",
        "mining.mine.run_mining", lambda cfg, out: report_line(out)),
    "localize": Command(  # run_localize prints the boxes scored per finding and the metrics table itself
        "diffmine.apps.localize.config.LocalizeConfig",
        "abnormality localisation: finding maps vs boxes (AUC-PR, IoBB, pointing game), finetuned vs base",
        "diffmine.apps.localize.run.run_localize", lambda cfg, metrics: report_line(cfg.out)),
    "translate": Command(
        "diffmine.apps.translate.config.TranslateConfig",
        "translate images to other labels: Plug-and-Play (DDIM inversion + feature injection) or SDEdit",
        "diffmine.apps.translate.run.run_translate", lambda cfg, out: f"translations: {Path(out) / 'index.html'}"),
    "changes": Command(
        "diffmine.apps.changes.config.ChangesConfig",
        "consistent changes across translations: co-typicality -> patch sequences -> clusters -> report",
        "diffmine.apps.changes.run.run_changes", lambda cfg, out: report_line(out)),
    "anomaly": "anomaly",
    "classify": Command(
        "diffmine.apps.classify.config.ClassifyConfig",
        "classify images by argmax over labels of T(x|c), with adaptive pruning and a label audit",
        "diffmine.apps.classify.run.run_classify", classify_line),
    "demo": Command(
        "diffmine.apps.demo.run.DemoConfig",
        "the whole pipeline on the embedded dataset and shipped model (make demo)",
        "diffmine.apps.demo.run.run_demo", validate=False),
    "assets": Command(
        "diffmine.apps.demo.run.AssetsConfig",
        "regenerate the embedded dataset and retrain the shipped model (make assets)",
        "diffmine.apps.demo.run.build_assets", validate=False),
}


def own_module(entry: Command | str):
    """The module of a command that does more (a COMMANDS entry that is a module name)."""
    return importlib.import_module(f"diffmine.cli.{entry}")


def config_classes() -> dict[str, type]:
    """{"finetune": TrainConfig, ..., "anomaly fit": AnomalyFitConfig, ...}: every command's config class."""
    out = {}
    for name, entry in COMMANDS.items():
        if isinstance(entry, Command):
            out[name] = entry.config_class
        else:
            out.update({f"{name} {action}": c.config_class for action, c in own_module(entry).ACTIONS.items()})
    return out
