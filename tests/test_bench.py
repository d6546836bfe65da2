"""`vivitcache bench --quick` end to end through the CLI, and the pieces it reports with."""

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from typer.testing import CliRunner

from vivitcache.bench import BenchConfig, break_even_epochs
from vivitcache.bench.modes import process_peak_rss, train_epochs
from vivitcache.cli import app
from vivitcache.runs import load_stage1

runner = CliRunner()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `vivitcache bench --quick` run: (CLI result, bench.json content, bench.md text, out folder)."""
    out = tmp_path_factory.mktemp("bench") / "out"
    result = runner.invoke(app, ["bench", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    return result, report, (out / "bench.md").read_text(), out


def test_quick_reports_all_three_modes_with_positive_times(quick):
    _, report, md, _ = quick
    assert list(report["modes"]) == ["a", "b", "c"]
    for m, r in report["modes"].items():
        assert r["mode"] == m
        assert r["seconds_per_epoch"] > 0 and r["frames_per_second"] > 0
        assert r["peak_memory_bytes"] >= r["rss_after_imports_bytes"] > 0
        assert 0.0 <= r["val_top1"] <= 1.0
        assert r["epochs"] == report["config"]["epochs"]
        assert f"| ({m}) {r['name']} |" in md
    assert report["provenance"]["packages"]["torch"]
    assert report["extraction"]["seconds"] > 0 and report["extraction"]["store_bytes"] > 0


def test_ratios_are_the_ratios_of_the_measured_figures(quick):
    _, report, _, _ = quick
    modes, ratios = report["modes"], report["ratios"]
    for m in ("a", "b"):
        assert ratios["seconds_per_epoch"][f"{m}/c"] == pytest.approx(
            modes[m]["seconds_per_epoch"] / modes["c"]["seconds_per_epoch"])
        assert ratios["peak_memory"][f"{m}/c"] == pytest.approx(
            modes[m]["peak_memory_bytes"] / modes["c"]["peak_memory_bytes"])
    n = report["break_even"]["vs_b"]
    if n is not None:  # after n epochs extraction + (c) is cheaper than (b), after n - 1 it is not
        c, b, one_off = modes["c"]["seconds_per_epoch"], modes["b"]["seconds_per_epoch"], report["extraction"]["seconds"]
        assert one_off + n * c < n * b and one_off + (n - 1) * c >= (n - 1) * b


def test_spatial_work_is_clips_times_frames_on_the_fly_and_zero_from_the_store(quick):
    _, report, _, _ = quick
    cfg, modes = report["config"], report["modes"]
    train_videos = report["data"]["train_videos"]
    clips = train_videos - train_videos % cfg["batch_size"]  # fit drops the last incomplete batch
    for m in ("a", "b"):
        r = modes[m]
        assert r["train_clips_per_epoch"] == clips
        assert r["spatial_frames_train"] == cfg["epochs"] * clips * cfg["frames"]
        assert r["spatial_frames_eval"] == cfg["epochs"] * report["data"]["val_videos"] * cfg["frames"]
        assert r["spatial_in_model"] and r["spatial_params"] > 0
    c = modes["c"]
    assert c["spatial_frames"] == 0 and c["spatial_params"] == 0 and not c["spatial_in_model"]
    assert c["train_clips_per_epoch"] == clips


def test_frozen_mode_keeps_the_spatial_weights_and_end_to_end_changes_them(quick):
    _, report, _, out = quick
    a, b, c = (report["modes"][m] for m in "abc")
    init_sha = load_stage1(out / "init").spatial_sha256
    assert a["spatial_sha256_before"] == b["spatial_sha256_before"] == c["spatial_sha256_before"] == init_sha
    assert b["spatial_sha256_after"] == init_sha
    assert a["spatial_sha256_after"] != init_sha
    assert a["trainable_params"] == a["params"] > b["trainable_params"] == c["trainable_params"]


def test_frozen_on_the_fly_and_cached_tokens_train_the_same_model(quick):
    _, report, _, _ = quick
    b, c = report["modes"]["b"], report["modes"]["c"]
    # same init, clips and order; only fp32 tokens on the fly vs fp16 tokens from the store
    assert b["train_loss"] == pytest.approx(c["train_loss"], abs=1e-2)
    assert b["val_loss"] == pytest.approx(c["val_loss"], abs=1e-2)


def test_markdown_is_printed_and_names_the_command(quick):
    result, report, md, out = quick
    assert "| mode | s / epoch |" in result.output
    assert report["command"] == f"vivitcache bench --quick --out {out}"
    assert f"Command: `{report['command']}`" in md
    assert "One-off extraction for (c)" in md


def test_bench_help_has_an_example():
    result = runner.invoke(app, ["bench", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "Example: vivitcache bench" in result.output


def test_inconsistent_batch_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["bench", "--quick", "--batch-size", "3", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "error: bench: batch_size 3 must divide by accum_steps 2" in result.output
    assert not (tmp_path / "bench.json").exists()


def test_preset_keeps_overrides_and_command_lists_them():
    cfg = BenchConfig.preset(quick=True, out="/x", frames=16, img_size=None)
    assert (cfg.model, cfg.frames, cfg.img_size) == ("vit-ti", 16, 32)
    assert cfg.command() == "vivitcache bench --quick --frames 16 --out /x"
    assert BenchConfig.preset(out="/y").command() == "vivitcache bench --out /y"


def test_break_even_is_the_first_epoch_where_cached_wins():
    assert break_even_epochs(10.0, 1.0, 3.0) == 6  # 10 + 6 < 18, 10 + 5 = 15 is not < 15
    assert break_even_epochs(10.0, 1.0, 100.0) == 1
    assert break_even_epochs(10.0, 2.0, 2.0) is None


def test_train_epochs_reads_epoch_time_from_the_last_step_of_each_epoch(tmp_path):
    rows = [
        {"kind": "train", "epoch": 0, "step": 2, "clips_per_s": 1.0, "loss": 3.0},
        {"kind": "train", "epoch": 0, "step": 3, "clips_per_s": 2.0, "loss": 2.0},
        {"kind": "eval", "epoch": 1, "step": 3, "val_top1": 0.5},
        {"kind": "train", "epoch": 1, "step": 5, "clips_per_s": 4.0, "loss": 1.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    epochs = train_epochs(path, batch_size=4)
    assert [(e["clips"], e["seconds"], e["loss"]) for e in epochs] == [(12, 6.0, 2.0), (8, 2.0, 1.0)]


def test_peak_memory_of_a_spawned_child_is_its_own():
    """ru_maxrss would carry this process's peak into the child (vfork + exec); the bench's measure must not."""
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched: this process's peak is now above it
    parent_peak = process_peak_rss()
    del block
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child_peak = pool.submit(process_peak_rss).result()
    assert parent_peak >= 400 * 2**20
    assert child_peak < parent_peak - 200 * 2**20
