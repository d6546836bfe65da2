"""The command line: every command has --help with an example; bad input is one `error:` line, exit status 2."""

import pytest
from typer.testing import CliRunner

from vivitcache.cli import app

runner = CliRunner()
COMMANDS = ["demo", "synth", "image-pretrain", "pretrain", "extract", "info", "verify", "train", "eval", "predict", "bench"]


def test_top_level_help_lists_every_command():
    out = runner.invoke(app, ["--help"]).output
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name):
    result = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Example: vivitcache" in result.output


def test_bad_annotations_are_one_line_errors(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("path,label\nonly-one-column\n")
    result = runner.invoke(app, ["pretrain", "--data", str(bad), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "error:" in result.output and "labels.csv" in result.output
    assert "Traceback" not in result.output


def test_info_on_a_non_store_is_a_named_error(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "token store" in result.output


def test_unknown_model_is_a_named_error(tmp_path, synth_dataset):
    result = runner.invoke(app, ["extract", "--data", str(synth_dataset / "labels.csv"), "--model", "resnet50",
                                 "--store", str(tmp_path / "s.zarr"), "--workers", "0"])
    assert result.exit_code == 2 and "unknown spatial model 'resnet50'" in result.output
