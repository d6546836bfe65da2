"""`vivitcache bench --recipes --quick` end to end through the CLI: the report's fields, the PNG, kept results on a
re-run, redone ones when their settings change; and the time-to-accuracy arithmetic."""

import json

import pytest
from typer.testing import CliRunner

from vivitcache.bench.recipes import key, run_recipes
from vivitcache.bench.recipes_config import RecipesConfig
from vivitcache.bench.recipes_report import compare, seconds_to_reach
from vivitcache.cli import app

runner = CliRunner()
PHASES = {"a_end_to_end": ["train"], "b_frozen_on_the_fly": ["stage1", "stage2"],
          "c_cached": ["stage1", "extract", "stage2"], "d_no_stage1": ["extract", "stage2"]}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `vivitcache bench --recipes --quick` run: (recipes.json content, out folder)."""
    out = tmp_path_factory.mktemp("recipes") / "out"
    result = runner.invoke(app, ["bench", "--recipes", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "recipes.json").read_text()), out


def test_quick_reports_every_recipe_its_phases_curve_and_png(quick):
    report, out = quick
    epochs = report["config"]["epochs"]
    for name, phases in PHASES.items():
        r = report[name]
        assert list(r["phases"]) == phases
        assert r["seconds"] == pytest.approx(sum(r["phases"].values()))
        assert 0.0 <= r["val_top1"] <= r["best_val_top1"] <= 1.0
        assert r["peak_memory_bytes"] == max(r["phase_peak_memory_bytes"].values()) > 0
        final = [p for p in r["curve"] if p["phase"] == phases[-1]]
        assert [p["epoch"] for p in final] == list(range(1, epochs + 1))
        assert final[-1]["val_top1"] == r["val_top1"]
        times = [p["seconds"] for p in r["curve"]]
        assert times == sorted(times) and 0 < times[-1] <= r["seconds"]
        assert f"| ({name[0]}) " in (out / "recipes.md").read_text()
    # (b) and (c) count the one stage-1 run
    assert report["b_frozen_on_the_fly"]["phases"]["stage1"] == report["c_cached"]["phases"]["stage1"]
    assert report["vs_a"]["per_recipe"]["a_end_to_end"]["time_vs_a"] == 1.0
    png = (out / "recipes.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_rerun_keeps_finished_recipes_and_redoes_changed_ones(quick):
    report, out = quick
    # the same settings: everything kept, the same figures
    stage1 = (out / "stage1.json").read_text()
    cfg = RecipesConfig.preset(True, out=str(out), recipes="ad", stage1_epochs=2)  # (a), (d) ignore stage 1
    again = run_recipes(cfg)
    for name in ("a_end_to_end", "d_no_stage1"):
        assert again[name]["kept"] and again[name]["seconds"] == report[name]["seconds"]
    assert "b_frozen_on_the_fly" not in again and (out / "stage1.json").read_text() == stage1
    # a half-done recipe (no result.json) is redone from an emptied folder
    (out / "recipes" / "d_no_stage1" / "result.json").unlink()
    (out / "recipes" / "d_no_stage1" / "stray").write_text("x")
    redone = run_recipes(RecipesConfig.preset(True, out=str(out), recipes="d"))
    assert not redone["d_no_stage1"]["kept"] and not (out / "recipes" / "d_no_stage1" / "stray").exists()
    assert list(redone["d_no_stage1"]["phases"]) == PHASES["d_no_stage1"]


def test_keys_follow_what_each_recipe_uses():
    base, budget = RecipesConfig(), RecipesConfig(stage1_epochs=7)
    assert key(base, "a") == key(budget, "a") and key(base, "d") == key(budget, "d")
    assert key(base, "b") != key(budget, "b") and key(base, "c") != key(budget, "c")
    tokens = RecipesConfig(d_tokens="cls")
    assert key(base, "c") == key(tokens, "c") and key(base, "d") != key(tokens, "d")


def _recipe(seconds, points, final="stage2"):
    curve = [{"seconds": s, "val_top1": v, "phase": p, "epoch": 1} for s, v, p in points]
    last = [p for p in curve if p["phase"] == final][-1]["val_top1"]
    return {"seconds": seconds, "val_top1": last, "best_val_top1": last, "final_phase": final, "curve": curve}


def test_time_to_accuracy_counts_only_the_final_phase():
    a = _recipe(100.0, [(50, 0.5, "train"), (100, 0.8, "train")], final="train")
    c = _recipe(30.0, [(5, 0.9, "stage1"), (20, 0.75, "stage2"), (25, 0.79, "stage2"), (30, 0.81, "stage2")])
    assert seconds_to_reach(c, 0.79) == 25  # not the stage-1 model at 5 s
    assert seconds_to_reach(c, 0.9) is None
    vs = compare({"a": a, "c": c})
    assert vs["target_val_top1"] == pytest.approx(0.79)
    assert vs["per_recipe"]["c_cached"]["seconds_to_a_final_less_1_point"] == 25
    assert vs["per_recipe"]["c_cached"]["time_vs_a"] == pytest.approx(0.3)
    assert vs["goals"]["c_within_1_point_in_quarter_time"] is True  # reached at 25 s = 0.25× (a)'s 100 s
    later = _recipe(30.0, [(20, 0.75, "stage2"), (26, 0.79, "stage2")])
    assert compare({"a": a, "c": later})["goals"]["c_within_1_point_in_quarter_time"] is False


def test_cli_refuses_options_of_the_other_mode(tmp_path):
    result = runner.invoke(app, ["bench", "--stage1-epochs", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--stage1-epochs: only with --recipes" in result.output
    result = runner.invoke(app, ["bench", "--recipes", "--accum-steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--accum-steps: not an option of --recipes" in result.output
    result = runner.invoke(app, ["bench", "--recipes", "--only", "ax", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "use letters of abcd" in result.output
