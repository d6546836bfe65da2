"""benchmarks/paper_ablations.py --quick: every row with every seed, statistics from the per-seed values, and each
row really trained what it says (init, parts, adapter, store, split)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_ablations.py"


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("paper_ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("ablations")
    result = module.main(["--out", str(out), "--quick", "--seeds", "3"])
    return module, out, result


def stage2_config(out: Path, row: str, seed: int) -> dict:
    return json.loads((out / "stage2" / row / f"seed{seed}" / "summary.json").read_text())


def test_every_row_has_every_seed_and_its_statistics(ablations):
    module, out, result = ablations
    assert [r["row"] for r in result["rows"]] == [r[0] for r in module.ROWS]
    saved = json.loads((out / "ablations.json").read_text())
    assert saved["rows"] == result["rows"]
    for row in result["rows"]:
        assert len(row["top1"]) == 3 and all(0 <= v <= 1 for v in row["top1"])
        for seed, value in enumerate(row["top1"]):
            assert stage2_config(out, row["row"], seed)["val_top1"] == value
        assert row["mean"] == pytest.approx(statistics.fmean(row["top1"]))
        assert row["std"] == pytest.approx(statistics.pstdev(row["top1"]))
    table = (out / "ablations.md").read_text()
    assert table.count("\n| ") == len(result["rows"]) + 1  # the rows and the stage-1 baseline under the header
    assert "27.75" in table and "64.45" in table


def test_rows_train_what_they_say(ablations):
    _, out, _ = ablations
    config = {row: stage2_config(out, row, 0)["config"] for row in
              ("no_adapter", "adapter", "temporal_init", "full_init_T8", "full_init_T2", "other_dataset")}
    assert config["no_adapter"]["init"] is None and config["no_adapter"]["model"]["adapter"] == "none"
    assert config["adapter"]["init"] is None and config["adapter"]["model"]["adapter"] != "none"
    assert config["temporal_init"]["init"].endswith("stage1_A_T8") and \
        config["temporal_init"]["init_parts"] == ["temporal", "head"]
    assert config["full_init_T8"]["init_parts"] == ["adapter", "temporal", "head"]
    assert config["full_init_T2"]["init"].endswith("stage1_A_T2")
    assert config["other_dataset"]["init"].endswith("stage1_B_T8")
    # tokens of A's videos, but through B's spatial ViT: another store, another weights hash
    assert config["other_dataset"]["store"] != config["full_init_T8"]["store"]
    assert config["other_dataset"]["store_fingerprint"]["weights_sha256"] != \
        config["full_init_T8"]["store_fingerprint"]["weights_sha256"]
    # every row is scored on dataset A's own split, whatever its init
    assert {c["splits"] for c in config.values()} == {str(out / "data_A" / "labels.csv")}
    sizes = {(stage2_config(out, row, 0)["train_videos"], stage2_config(out, row, 0)["val_videos"]) for row in config}
    assert len(sizes) == 1 and min(sizes.pop()) > 0
