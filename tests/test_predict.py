"""`predict` gives the same answer from cached tokens and with the spatial ViT on the fly."""

import shutil

import numpy as np
import pytest

from vivitcache.extract import ExtractConfig, run_extract
from vivitcache.predict import predict
from vivitcache.train_temporal import TrainConfig, run_train
from vivitcache.config import OptimConfig, RunConfig


@pytest.fixture(scope="module")
def stage2(synth_dataset, tmp_path_factory):
    work = tmp_path_factory.mktemp("predict")
    store = work / "t.zarr"
    run_extract(ExtractConfig(data=str(synth_dataset / "labels.csv"), store=str(store), model="vit-ti", img_size=32,
                              patch_size=8, spatial_depth=2, workers=0, progress=False))
    run_train(TrainConfig(store=str(store), frames=8, optim=OptimConfig(epochs=1, batch_size=4),
                          run=RunConfig(out=str(work / "s2"), eval_views=2)))
    return work, store


def test_store_and_on_the_fly_agree(stage2, synth_dataset):
    work, store = stage2
    video = next((synth_dataset / "videos").rglob("*.mp4"))
    from_store = predict(str(video), work / "s2", store=store)
    copy = work / "copy.mp4"  # same pixels, not in the store: forces the on-the-fly path
    shutil.copy(video, copy)
    on_the_fly = predict(str(copy), work / "s2", store=store)
    assert (from_store.source, on_the_fly.source) == ("store", "on-the-fly")
    assert [c for c, _ in from_store.top] == [c for c, _ in on_the_fly.top]
    np.testing.assert_allclose(from_store.probs, on_the_fly.probs, atol=1e-4)
    assert len(from_store.top) == 5 and abs(from_store.probs.sum() - 1) < 1e-5


def test_on_the_fly_without_a_known_spatial_model_is_a_named_error(stage2, synth_dataset):
    from vivitcache.training.checkpoint import CheckpointError

    work, _ = stage2
    video = next((synth_dataset / "videos").rglob("*.mp4"))
    with pytest.raises(CheckpointError, match="pass --spatial"):
        predict(str(video), work / "s2")
