"""The job engine: one run lifecycle under every command that computes items and writes them out.

A command is a `Job`: its settings (a dataclass of `core.settings`), the key its results depend on,
`compute(group)` -> {item id: arrays} over fixed groups, and `write(results, folder)`. `run_job`
does the rest, the same way for every command:

    config.validate(), job.check()          bad settings and inputs fail before a model loads
    job.runtime()                           device, dtype, this process's share (`Runtime.start`)
    writer_lock(job.out)                    one writer per output (the processes of a launch are one)
    job.load(rt)                            the model and the inputs; sets job.ids (the progress
                                            bar counts them) and job.phase (its label)
    job.work(rt, bar)                       by default: the keyed `PartialResults` store over
                                            job.groups(), this process's share computed with a
                                            progress bar (a rerun says what it reuses), then
                                            every item's arrays on the main process
    job.publish(results)                    by default: job.write into a temporary folder with
                                            config.json, swapped into job.out at once; the run
                                            replaces only job.owned (a user's own files stay)

A job whose work is not keyed groups (typicality's map store, the detector's fit) replaces `work`;
one whose output is not a folder (anomaly score's CSV) replaces `publish`. A process that does not
publish (not the main one, or a simulated share) gets None from `run_job`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from diffmine.core.files import output_folder
from diffmine.core.lock import writer_lock
from diffmine.core.partial import Arrays, PartialResults, compute_groups, key_digest
from diffmine.core.settings import save_config


class Job:
    """One command as the engine runs it; a subclass writes the hooks its command needs."""

    owned: tuple[str, ...] = ()  # the entries of `out` a run replaces (its outputs; `.partial`: its stored groups)

    def __init__(self, config, progress: bool = True):
        self.config, self.progress = config, progress  # progress: bars on the main process
        self.ids: list[str] = []  # every item, in output order (set by `load`)
        self.phase = ""           # the progress bar's label (set by `load`: it may name the model's settings)
        self.store: PartialResults | None = None

    @property
    def out(self) -> Path:
        """What the run writes, and the path its writer lock guards."""
        return Path(self.config.out)

    # -- the hooks -------------------------------------------------------------------------------
    def check(self) -> None:
        """Input checks that need no runtime and no model (a mistyped path fails first)."""

    def runtime(self):
        from diffmine.core.runtime import Runtime

        return Runtime.start(self.config)

    def load(self, rt) -> None:
        """Under the lock: the model (`rt.load`) and the inputs; set `ids` and `phase`."""
        raise NotImplementedError

    def key(self, rt) -> dict:
        """What the results depend on: stored groups of another key are not reused."""
        raise NotImplementedError

    def groups(self) -> list[list[str]]:
        """The fixed groups of ids (`partial.fixed_groups`): the same for any process count."""
        raise NotImplementedError

    def compute(self, group: Sequence[str]) -> dict[str, Arrays]:
        raise NotImplementedError

    def write(self, results: dict[str, Arrays], folder: Path) -> Any:
        """The outputs, from every item's arrays, into `folder` (swapped in as `out`); returns the run's value."""
        raise NotImplementedError

    def store_folder(self, digest: str) -> Path:
        """Where the finished groups of the computation `digest` are kept."""
        return self.out / ".partial" / digest

    # -- the steps the hooks serve ---------------------------------------------------------------
    def work(self, rt, bar, on_group: Callable[[int], None] | None = None) -> dict[str, Arrays] | None:
        """This process's share of the groups, each stored as it finishes; every item's arrays on the
        process that publishes, None on the others."""
        key = self.key(rt)
        self.store = PartialResults(self.store_folder(key_digest(key)), key, rt.rank)
        return compute_groups(self.groups(), self.compute, self.store, rt, bar, on_group)

    def publish(self, results) -> Any:
        with output_folder(self.out, owned=self.owned) as tmp:  # `out` holds one whole run at any time
            value = self.write(results, tmp)
            save_config(self.config, tmp)
        return value


def run_job(job: Job, on_group: Callable[[int], None] | None = None) -> Any:
    """Run `job` (see the module doc); its value from the process that wrote the outputs, else None.
    on_group(n) is called as this process stores its n-th group."""
    from tqdm.auto import tqdm

    job.config.validate()
    job.check()
    rt = job.runtime()
    with writer_lock(job.out, rt):
        job.load(rt)
        counted = job.progress and rt.is_main and bool(job.ids)  # a job without items shows its own bars
        with tqdm(total=len(job.ids), unit="img", desc=job.phase, disable=not counted, dynamic_ncols=True) as bar:
            results = job.work(rt, bar, on_group)
        if results is None:
            return None  # not the main process, or a simulated share: a later single-process run writes
        return job.publish(results)
