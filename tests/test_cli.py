"""The CLI is a thin roof: its options are generated from the stages' configs, and a run can be
repeated from the config.json it wrote."""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from diffmine.cli import COMMANDS, build_parser, main
from diffmine.cli.commands import config_classes
from diffmine.cli.options import config_from_args
from diffmine.core.settings import ConfigError, fields, load_config

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _commands():
    """(name, parser, config class) of every command, `anomaly fit` / `anomaly score` included."""
    parsers = _subparsers(build_parser())
    for name, cls in config_classes().items():
        command, _, action = name.partition(" ")
        yield name, (_subparsers(parsers[command])[action] if action else parsers[command]), cls


def test_every_cli_default_is_the_config_default():
    assert set(_subparsers(build_parser())) == set(COMMANDS)
    for name, sub, cls in _commands():
        required = [f for f in fields(cls) if f.metadata.get("required")]
        argv = [x for f in required for x in (f"--{f.name.replace('_', '-')}", "X")]
        got = config_from_args(cls, sub.parse_args(argv))
        want = dataclasses.replace(cls(), **{f.name: "X" for f in required})
        assert got == want, name  # the CLI adds no default of its own
        flags = {opt for a in sub._actions for opt in a.option_strings}
        for f in [f for f in fields(cls) if f.metadata.get("cli", True)]:  # every CLI field is a flag with a help line
            flag = f"--{f.name.replace('_', '-')}"
            assert flag in flags, (name, flag)
            action = next(a for a in sub._actions if flag in a.option_strings)
            assert action.help and ("(required)" in action.help or "(default:" in action.help), (name, flag)
        assert "--config" in flags


def test_library_errors_name_the_parameter_and_the_cli_the_flag(tmp_path, capsys):
    from mining.config import MineConfig

    with pytest.raises(ConfigError, match=r"^per_image must be >= 1, got 0$"):
        MineConfig(data="d", typicality="t", out="o", model="m", per_image=0).validate()
    rc = main(["mine", "--data", "d", "--typicality", "t", "--out", str(tmp_path / "o"), "--model", "m",
               "--per-image", "0"])
    assert rc == 2 and capsys.readouterr().err.strip() == "diffmine mine: error: --per-image must be >= 1, got 0"
    rc = main(["typicality", "--model", "m", "--data", "d", "--out", "o", "--t-range", "0.9", "0.1"])
    assert rc == 2 and "--t-range must be two fractions" in capsys.readouterr().err


def test_config_file_then_flags(tmp_path):
    from typicality.config import TypicalityConfig

    (tmp_path / "c.toml").write_text('model = "m"\ndata = "d"\nout = "o"\ndraws = 8\nt_range = [0.2, 0.5]\n')
    sub = _subparsers(build_parser())["typicality"]
    cfg = config_from_args(TypicalityConfig, sub.parse_args(["--config", str(tmp_path / "c.toml"), "--draws", "4"]))
    assert (cfg.draws, cfg.t_range, cfg.model) == (4, (0.2, 0.5), "m")  # the flag overrides the file
    (tmp_path / "bad.json").write_text('{"draw": 8}')
    with pytest.raises(Exception, match="unknown setting.*draw"):
        load_config(TypicalityConfig, tmp_path / "bad.json")


def test_typicality_from_its_own_config_gives_identical_output(tiny_model_dir, color_dataset, tmp_path):
    """A run repeated from the config.json it wrote gives bit-identical maps."""
    a = tmp_path / "a"
    assert main(["typicality", "--model", str(tiny_model_dir), "--data", str(color_dataset), "--out", str(a),
                 "--draws", "4", "--t-range", "0.2", "0.8", "--batch-size", "8"]) == 0
    saved = json.loads((a / "config.json").read_text())
    assert saved["draws"] == 4 and saved["t_range"] == [0.2, 0.8] and saved["batch_size"] == 8
    b = tmp_path / "b"
    assert main(["typicality", "--config", str(a / "config.json"), "--out", str(b)]) == 0
    from typicality.store import TypicalityStore

    sa, sb = TypicalityStore.open(a), TypicalityStore.open(b)
    assert sa.pairs() == sb.pairs() and len(sa.pairs()) == 12
    for image_id, label in sa.pairs():  # bit-identical maps and branch errors
        assert (sa.latent_map(image_id, label) == sb.latent_map(image_id, label)).all()
        assert all((x == y).all() for x, y in zip(sa.error_maps(image_id, label), sb.error_maps(image_id, label)))


def test_python_m_diffmine_and_help():
    proc = subprocess.run([sys.executable, "-m", "diffmine", "mine", "--help"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "--per-image" in proc.stdout and "(default: 5)" in proc.stdout


def test_mistyped_model_fails_at_once_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/nosuch` names a folder inside an existing one: a path, not a hub id
    for name in ("runs/nosuch", "tinyy", str(tmp_path / "missing"), "./model"):
        rc = main(["typicality", "--model", name, "--data", str(tmp_path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "no such folder" in err, err
    rc = main(["typicality", "--model", "someone/not-cached", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2 and "HF_HUB_OFFLINE" in capsys.readouterr().err  # the suite runs offline (conftest)


# command -> (what its run function returns, the line it prints); "{out}" is --out's value, "{score}" the config's
SUMMARIES = {
    "finetune": ("runs/m", "model written to runs/m"),
    "typicality": (Path("runs/t"), "typicality written to runs/t"),
    "mine": ("runs/mine", "report: runs/mine/report.html"),
    "localize": ({"auc_pr": 0.5}, "report: {out}/report.html"),
    "translate": (Path("runs/tr"), "translations: runs/tr/index.html"),
    "changes": (Path("runs/ch"), "report: runs/ch/report.html"),
    "classify": ({"images": 12, "accuracy": 0.75, "images_per_s": 3.0},
                 "12 images, accuracy 0.7500, 3.00 images/s; written to {out}"),
    "anomaly fit": (argparse.Namespace(decision_scores_=[0.1, 0.2, 0.3], threshold_=0.123456789),
                    "detector ({score}) fitted on 3 images, threshold 0.123457, written to {out}"),
    "anomaly score": ({"outliers": 2, "images": 9, "threshold": 0.5, "csv": "s/scores.csv"},
                      "2 of 9 images above the threshold 0.5; scores in s/scores.csv"),
    "demo": ({"pointing": 0.9}, None),
    "assets": (Path("assets/model"), None),
}


def test_every_command_has_its_summary_checked():
    assert set(SUMMARIES) == set(config_classes())


@pytest.mark.parametrize("name", sorted(SUMMARIES))
def test_each_row_calls_its_run_function_and_prints_its_line(name, monkeypatch, capsys, tmp_path):
    """Every row of the command table: the config from the flags goes to its run function, and the result
    gives the one summary line (none from another process of a launch, whose result is None)."""
    import importlib

    from diffmine.cli import anomaly
    from diffmine.cli.commands import COMMANDS

    command, _, action = name.partition(" ")
    row = anomaly.ACTIONS[action] if action else COMMANDS[command]
    if action:  # no PyOD check here: test_anomaly checks it
        monkeypatch.setitem(anomaly.ACTIONS, action, dataclasses.replace(row, check=None))
    cls = row.config_class
    monkeypatch.setattr(cls, "validate", lambda self: None, raising=False)  # "X" is no real folder
    result, line = SUMMARIES[name]
    out = str(tmp_path / "o")
    required = [f.name for f in fields(cls) if f.metadata.get("required") and f.name != "out"]
    argv = name.split() + [x for f in required for x in (f"--{f.replace('_', '-')}", "X")] + ["--out", out]
    calls = []
    for returned, want in ((result, line), (None, None)):
        module, _, fn = row.run.rpartition(".")
        monkeypatch.setattr(importlib.import_module(module), fn, lambda cfg, _r=returned: calls.append(cfg) or _r)
        assert main(argv) == 0
        printed = capsys.readouterr().out.splitlines()
        assert printed == ([want.format(out=out, score=getattr(calls[-1], "score", ""))] if want else []), name
    assert len(calls) == 2 and isinstance(calls[0], cls) and calls[0].out == out
