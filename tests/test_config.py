"""Configs load back from the JSON a run records: nested configs rebuilt, a typo anywhere refused."""

import json

import pytest

from vivitcache.config import ModelConfig, OptimConfig, PretrainConfig
from vivitcache.train_temporal.config import AugmentConfig, TrainConfig


def test_configs_round_trip_through_json_with_nested_configs():
    pre = PretrainConfig(model=ModelConfig(spatial="vit-s", frame_token="cls+mean"), optim=OptimConfig(epochs=3))
    train = TrainConfig(store="s.zarr", frames=64, augment=AugmentConfig(token_dropout=0.25), init_parts=["temporal"])
    for cfg in (pre, train):
        back = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and isinstance(back.model, ModelConfig) and isinstance(back.optim, OptimConfig)


@pytest.mark.parametrize("where", ["top", "model", "augment"])
def test_unknown_key_anywhere_is_refused(where):
    d = TrainConfig(store="s.zarr").to_dict()
    (d if where == "top" else d[where])["tpyo"] = 1
    with pytest.raises(ValueError, match="unknown field.*tpyo"):
        TrainConfig.from_dict(d)


def test_run_record_reads_the_flat_records_earlier_versions_wrote_and_writes_them_back_the_same():
    from vivitcache.runs import RunRecord, Stage2Made

    stage1 = {"stage": 1, **PretrainConfig().to_dict(), "classes": ["a", "b"], "preprocess": {"size": 32},
              "initial_spatial_sha256": "abc"}
    stage2 = {"stage": 2, **TrainConfig(store="s.zarr").to_dict(), "store": "/s.zarr", "val_store": None, "init": "/r1",
              "splits": None, "video_root": None, "split_seed": 0, "classes": ["a", "b"], "store_fingerprint": {"m": 1},
              "store_layout": {"dim": 8}, "init_parts": ["temporal"], "init_frames": 8, "spatial_sha256": "abc"}
    for old in (stage1, stage2):
        record = RunRecord.from_json(json.loads(json.dumps(old)))
        assert record.to_json() == old and isinstance(record.model, ModelConfig)
    two = RunRecord.from_json(stage2)
    assert isinstance(two.stage2, Stage2Made) and two.stage2.init_frames == 8 and two.stage1 is None
    assert two.settings["frames"] == 32 and "store" not in two.settings
