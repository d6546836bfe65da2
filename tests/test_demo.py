"""`vivitcache demo`: the whole method end to end through the CLI (quick preset) — report.md and report.json hold the
runs' own numbers, the images exist, the takeaway is printed — and a second run never overwrites unasked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vivitcache.cli import app
from vivitcache.demo import DemoConfig, DemoOutputExistsError, run_demo
from vivitcache.demo.config import QUICK
from vivitcache.demo.run import prepare_out
from vivitcache.store import store_info

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, str, dict]:
    """(OUT, CLI output, report.json) of one quick demo through the command line."""
    out = tmp_path_factory.mktemp("demo") / "out"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "report.json").read_text())


def _summary(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "summary.json").read_text())


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: relative path → (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_report_md_has_both_stages_store_size_and_existing_images(demo):
    out, _, _ = demo
    md = (out / "report.md").read_text()
    for stage in ("stage1", "stage2"):
        s = _summary(out, stage)
        assert f"| {s['frames']} | {100 * s['val_top1']:.1f} % | {100 * s['val_top5']:.1f} % | {s['epochs']} |" in md
    assert f"({store_info(out / 'tokens.zarr')['bytes_on_disk']} B)" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"stage1/curves.png", "stage2/curves.png"} <= set(links)
    for link in links:
        assert not Path(link).is_absolute() and (out / link).is_file(), link
    assert "vivitcache demo --out" in md and "--quick" in md  # the command that made it


def test_report_json_numbers_are_the_runs_own(demo):
    out, _, report = demo
    for stage in ("stage1", "stage2"):
        summary = _summary(out, stage)
        shared = {k for k in report[stage] if k in summary}
        assert {"frames", "val_top1", "val_top5", "epochs", "seconds", "peak_memory_bytes"} <= shared
        assert {k: report[stage][k] for k in shared} == {k: summary[k] for k in shared}
        assert report[stage]["seconds_per_epoch"] == pytest.approx(summary["seconds"] / summary["epochs"])
    assert (report["stage1"]["frames"], report["stage2"]["frames"]) == (8, 32)
    evaluated = json.loads((out / "stage2" / "eval.json").read_text())
    assert {k: report["eval"][k] for k in ("val_top1", "val_top5", "val_videos")} == \
        {k: evaluated[k] for k in ("val_top1", "val_top5", "val_videos")}
    info = store_info(out / "tokens.zarr")
    assert (report["store"]["bytes_on_disk"], report["store"]["frames"]) == (info["bytes_on_disk"], info["frames"])
    assert report["store"]["verify_ok"] and report["store"]["problems"] == []
    cfg = DemoConfig.preset(True, out=str(out))
    assert report["config"] == cfg.to_dict()
    assert report["extract"]["frames"] == info["frames"] == cfg.classes * cfg.videos_per_class * cfg.video_frames
    assert set(report["steps_seconds"]) == {"synth", "image", "stage1", "extract", "store", "stage2", "eval"}
    image = json.loads((out / "image.json").read_text())
    assert {k: report["image"][k] for k in ("initial_loss", "final_loss", "frames")} == \
        {k: image[k] for k in ("initial_loss", "final_loss", "frames")}
    stage1 = json.loads((out / "stage1" / "summary.json").read_text())["config"]
    assert stage1["model"]["weights"] == str((out / "image.safetensors").absolute())  # stage 1 starts from it
    assert stage1["optim"]["spatial_lr_scale"] == cfg.stage1_spatial_lr_scale
    assert report["total_seconds"] >= sum(report["steps_seconds"].values())
    assert {"vivitcache", "packages", "time"} <= set(report["provenance"])


def test_takeaway_is_printed_and_made_of_the_numbers(demo):
    out, output, report = demo
    assert f"report: {out / 'report.md'}" in output
    assert len(report["takeaway"]) == 2
    for line in report["takeaway"]:
        assert line in output
    first = report["takeaway"][0]
    assert f"{100 * report['stage2']['val_top1']:.1f} %" in first and f"{100 * report['stage1']['val_top1']:.1f} %" in first
    assert "extract:" in report["takeaway"][1]


def test_accuracies_are_fractions(demo):
    _, _, report = demo
    for part in ("stage1", "stage2", "eval"):
        top1, top5 = report[part]["val_top1"], report[part]["val_top5"]
        assert 0.0 <= top1 <= top5 <= 1.0


def test_second_run_without_overwrite_is_refused_and_touches_nothing(demo):
    out, _, _ = demo
    before = _tree(out)
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 2
    assert "error:" in result.output and "--overwrite" in result.output and "Traceback" not in result.output
    with pytest.raises(DemoOutputExistsError, match="not empty"):
        run_demo(DemoConfig(quick=True, out=str(out)))
    assert _tree(out) == before


def test_overwrite_replaces_only_a_demos_own_outputs(tmp_path):
    out = tmp_path / "out"
    (out / "stage1").mkdir(parents=True)
    (out / "report.md").write_text("old")
    prepare_out(out, overwrite=True)
    assert out.is_dir() and list(out.iterdir()) == []

    (out / "stage1").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DemoOutputExistsError, match="notes.txt"):
        prepare_out(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "stage1").is_dir()


def test_quick_shrinks_defaults_but_keeps_given_settings():
    full, quick = DemoConfig(), DemoConfig(quick=True)
    assert {k: getattr(quick, k) for k in QUICK} == QUICK
    assert DemoConfig(quick=True, classes=5).classes == 5
    # through `preset` (the CLI), an override equal to the full default is kept too
    assert DemoConfig.preset(True, stage1_epochs=full.stage1_epochs).stage1_epochs == full.stage1_epochs
    assert DemoConfig.preset(False, seed=None).seed == full.seed  # None: not given


def test_settings_that_cannot_run_are_named_errors():
    with pytest.raises(ValueError, match="stage2_batch_size"):
        DemoConfig(quick=True, stage2_batch_size=1000)
    with pytest.raises(ValueError, match="leaves no val video"):
        DemoConfig(videos_per_class=1)
    with pytest.raises(ValueError, match="unknown setting"):
        DemoConfig.preset(False, epochs=3)


def test_command_line_of_a_config():
    cfg = DemoConfig.preset(True, out="d", stage2_frames=16)
    assert cfg.command() == "vivitcache demo --out d --quick --stage2-frames 16"
    assert cfg.command(overwrite=True).startswith("vivitcache demo --out d --quick --overwrite")
    assert DemoConfig(stage1_lr=3e-4).command().endswith("# also: stage1_lr=0.0003")


def test_demo_is_the_first_command_and_has_an_example():
    listing = runner.invoke(app, ["--help"], terminal_width=200).output
    assert listing.index("demo") < listing.index("synth")
    result = runner.invoke(app, ["demo", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Example: vivitcache demo" in result.output
