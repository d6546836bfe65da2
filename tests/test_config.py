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
