"""Options declared once: a config field's help, default and range make the command's option (`vivitcache.options`);
the CLI and the Python API refuse a bad value with the same one line."""

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vivitcache import cli
from vivitcache.errors import ConfigError
from vivitcache.extract.config import ExtractConfig, ExtractConfigError
from vivitcache.options import Options, check_fields, opt
from vivitcache.train_temporal.config import TrainConfig

runner = CliRunner()
COMMANDS = {name.removesuffix("_OPTIONS").lower().replace("_", "-"): value for name, value in vars(cli).items()
            if isinstance(value, Options)}


def _help(command: str) -> str:
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "2000"})
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", " ".join(line.strip("│ ") for line in result.output.splitlines()))


def test_every_command_with_a_config_is_listed():
    assert {"pretrain", "train", "extract", "sweep"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_each_field_help_and_default(command):
    text = _help(command)
    for param in COMMANDS[command].params:
        assert f"--{param.flag} " in text, param.flag
        assert param.opt.help.replace("\\", "").split("(")[0].strip(" .")[:40] in text, param.flag  # markup unescaped
        default = param.parameter.default
        if default not in (None, False, inspect.Parameter.empty):
            shown = getattr(default, "value", default)
            assert f"[default: {shown}]" in text, (param.flag, shown)


def test_a_default_comes_from_the_config():
    text = _help("train")
    assert f"[default: {TrainConfig().optim.epochs}]" in text and f"[default: {TrainConfig().run.out}]" in text


def test_a_preset_option_names_both_defaults():
    from vivitcache.demo.config import DemoConfig

    full, quick = DemoConfig.preset(False).stage1_epochs, DemoConfig.preset(True).stage1_epochs
    assert full != quick and f"(default {full}; --quick: {quick})" in _help("demo")


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_an_out_of_range_value_is_one_line_from_the_cli_and_from_the_dataclass(tmp_path):
    message = "--frames 0: must be at least 1"
    line = one_error_line(runner.invoke(cli.app, ["train", "--store", str(tmp_path), "--frames", "0"]))
    assert line == f"error: {message}"
    with pytest.raises(ConfigError, match=message):
        TrainConfig(store=str(tmp_path), frames=0)
    line = one_error_line(runner.invoke(cli.app, ["train", "--store", str(tmp_path), "--token-dropout", "1"]))
    assert line == "error: --token-dropout 1.0: must be in [0, 1)"


def test_extract_ranges_are_checked_the_same_way(tmp_path):
    args = ["extract", "--data", str(tmp_path), "--store", str(tmp_path / "s.zarr"), "--model", "vit-ti"]
    line = one_error_line(runner.invoke(cli.app, [*args, "--tokens", "grid", "--grid", "0"]))
    assert line == "error: --grid 0: must be at least 1"
    with pytest.raises(ExtractConfigError, match="--grid 0: must be at least 1"):
        ExtractConfig(data=str(tmp_path), store="s.zarr", model="vit-ti", tokens="grid", grid=0).check()
    line = one_error_line(runner.invoke(cli.app, [*args, "--layers", "-1,x"]))
    assert line == "error: --layers '-1,x': give comma-separated integers, e.g. -1,-4,-7,-10"


def test_check_fields_bounds_choices_and_words():
    @dataclasses.dataclass
    class Config:
        rate: float = dataclasses.field(default=0.5, metadata=opt("A rate.", gt=0, le=1))
        size: int | None = dataclasses.field(default=None, metadata=opt("A size.", ge=1, note="None: auto"))
        kind: str = dataclasses.field(default="a", metadata=opt("A kind.", choices=("a", "b"), flag="sort"))

    check_fields(Config())
    for changes, message in [
        (dict(rate=0.0), "--rate 0.0: must be in (0, 1]"),
        (dict(rate=float("nan")), "--rate nan: must be in (0, 1]"),
        (dict(size=0), "--size 0: must be at least 1 (None: auto)"),
        (dict(kind="c"), "--sort c: use one of a, b"),
    ]:
        with pytest.raises(ConfigError) as e:
            check_fields(Config(**changes))
        assert str(e.value) == message


def test_options_build_the_config_with_nested_fields_and_the_base_defaults():
    options = Options(TrainConfig(), ["store", "optim.lr", "optim.epochs", "run.resume"])
    cfg = options.build({"store": Path("s.zarr"), "lr": 0.01, "epochs": 3, "resume": True, "resume_mode": "auto"})
    assert (cfg.store, cfg.optim.lr, cfg.optim.epochs, cfg.run.resume) == ("s.zarr", 0.01, 3, "auto")
    assert cfg.run.out == TrainConfig().run.out and cfg.optim.batch_size == TrainConfig().optim.batch_size
    with pytest.raises(ConfigError, match="unexpected argument 'now'"):
        options.build({"store": Path("s"), "lr": 0.01, "epochs": 3, "resume": True, "resume_mode": "now"})


def test_every_option_field_of_a_command_carries_its_declaration():
    for options in COMMANDS.values():
        for param in options.params:
            assert param.opt.help, param.path


def test_cli_py_holds_no_literal_default():
    """Every default of a command's own parameters is None or False (an argument or flag left out); every other
    default is a config field's."""
    tree = ast.parse(Path(cli.__file__).read_text())
    bad = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            for default in fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]:
                if not (isinstance(default, ast.Constant) and default.value in (None, False)):
                    bad.append(f"{fn.name}: {ast.unparse(default)}")
        if isinstance(fn, ast.Call) and getattr(fn.func, "attr", "") in ("Option", "Argument"):
            bad += [f"typer.{fn.func.attr}(default={ast.unparse(k.value)})" for k in fn.keywords if k.arg == "default"]
    assert bad == []


def test_a_field_without_a_declaration_cannot_become_an_option():
    with pytest.raises(KeyError):
        Options(TrainConfig(), ["split_seed"])
