"""benchmarks/paper_ablations.py --quick: every row with every seed, statistics from the per-seed values, each row
really trained what it says (init, parts, adapter, architecture, store, split), comparisons reuse the rows."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from vivitcache.models.spatial import resolve_model_name

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_ablations.py"
SEEDS = 3


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("paper_ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its annotations through sys.modules
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("ablations")
    result = module.main(["--out", str(out), "--quick", "--seeds", str(SEEDS)])
    return module, out, result


def summary(out: Path, row: str, seed: int) -> dict:
    return json.loads((out / "stage2" / row / f"seed{seed}" / "summary.json").read_text())


def test_every_row_has_every_seed_and_its_statistics(ablations):
    module, out, result = ablations
    assert [r["row"] for r in result["rows"]] == [r.id for r in module.ROWS]
    saved = json.loads((out / "ablations.json").read_text())
    assert saved["rows"] == result["rows"]
    for row in result["rows"]:
        assert len(row["top1"]) == SEEDS and all(0 <= v <= 1 for v in row["top1"])
        for seed, value in enumerate(row["top1"]):
            assert summary(out, row["row"], seed)["val_top1"] == value
            assert summary(out, row["row"], seed)["config"]["run"]["seed"] == seed
        assert row["mean"] == pytest.approx(sum(row["top1"]) / SEEDS)
        assert row["std"] == pytest.approx(statistics.pstdev(row["top1"]))
    assert set(saved["timings_seconds"]) >= {f"extract_{k}" for k in saved["stores"]}
    table = (out / "ablations.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ")][1:]  # under the header
    assert len(body) == len(result["rows"]) + 1  # the rows and the stage-1 baseline
    assert "27.75" in table and "64.45" in table and "single-seed" in table


def test_comparisons_reuse_the_rows(ablations):
    module, _, result = ablations
    rows = {r["row"]: r for r in result["rows"]}
    assert [c["comparison"] for c in result["comparisons"]] == [c[0] for c in module.COMPARISONS]
    for c in result["comparisons"]:
        assert c["a_top1"] == rows[c["a"]]["top1"] and c["b_top1"] == rows[c["b"]]["top1"]
        assert c["delta"] == pytest.approx(rows[c["b"]]["mean"] - rows[c["a"]]["mean"])
        assert c["delta_per_seed"] == pytest.approx([b - a for a, b in zip(c["a_top1"], c["b_top1"])])
    assert {(c["a"], c["b"]) for c in result["comparisons"]} >= {("adapter", "full_init_T8"),
                                                                 ("other_dataset", "full_init_T8")}


def test_statistics_of_differing_seeds(ablations):
    """The quick run's rows may all sit at chance: the statistics on values that differ."""
    module, _, _ = ablations
    values = [0.5, 0.75, 0.875]
    mean, std = module.mean_std(values)
    assert mean == pytest.approx(sum(values) / 3)
    assert std == pytest.approx((sum((v - mean) ** 2 for v in values) / 3) ** 0.5)
    rows = [{"row": r.id, "top1": [v + i / 16 for v in values]} for i, r in enumerate(module.ROWS)]
    for r in rows:
        r["mean"], r["std"] = module.mean_std(r["top1"])
    index = {r.id: i for i, r in enumerate(module.ROWS)}
    for c in module.compare(rows):
        assert c["delta"] == pytest.approx((index[c["b"]] - index[c["a"]]) / 16)
        assert c["delta_per_seed"] == pytest.approx([(index[c["b"]] - index[c["a"]]) / 16] * 3)


def test_rows_train_what_they_say(ablations):
    _, out, _ = ablations
    config = {row: summary(out, row, 0)["config"] for row in
              ("no_adapter", "adapter", "temporal_init", "full_init_T8", "full_init_T2", "other_dataset")}
    assert config["no_adapter"]["init"] is None and config["no_adapter"]["model"]["adapter"] == "none"
    assert config["adapter"]["init"] is None and config["adapter"]["model"]["adapter"] != "none"
    # random init, yet the stage-1 architecture: the same model as the initialised rows but for the adapter
    def architecture(model: dict) -> dict:  # `spatial` as resolved: random init records the store's timm name
        return {**{k: v for k, v in model.items() if k != "adapter"}, "spatial": resolve_model_name(model["spatial"])}

    for row in ("no_adapter", "adapter"):
        assert architecture(config[row]["model"]) == architecture(config["full_init_T8"]["model"])
        assert config[row]["store"] == config["full_init_T8"]["store"]  # frozen = the stage-1 (T=8) spatial
    assert config["temporal_init"]["init"].endswith("stage1_A_T8") and \
        config["temporal_init"]["init_parts"] == ["temporal", "head"]
    assert config["full_init_T8"]["init_parts"] == ["adapter", "temporal", "head"]
    assert config["full_init_T2"]["init"].endswith("stage1_A_T2") and config["full_init_T2"]["init_frames"] == 2
    assert config["other_dataset"]["init"].endswith("stage1_B_T8")
    # tokens of A's videos, but through B's spatial ViT: another store, another weights hash
    assert config["other_dataset"]["store"] != config["full_init_T8"]["store"]
    assert config["other_dataset"]["store_fingerprint"]["weights_sha256"] != \
        config["full_init_T8"]["store_fingerprint"]["weights_sha256"]
    # every row is scored on dataset A's own split, whatever its init
    assert {c["splits"] for c in config.values()} == {str(out / "data_A" / "labels.csv")}
    sizes = {(summary(out, row, 0)["train_videos"], summary(out, row, 0)["val_videos"]) for row in config}
    assert len(sizes) == 1 and min(sizes.pop()) > 0


def test_refuses_a_used_out(ablations):
    module, out, _ = ablations
    with pytest.raises(SystemExit, match="not an empty folder"):
        module.main(["--out", str(out), "--quick"])
