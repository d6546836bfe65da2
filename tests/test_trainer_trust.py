"""What a stage-2 trainer must not get silently wrong (issue 19, trainer side): a resumed run on changed data,
workers that outlive their trainer, a checkpoint on a full disk, options out of range, an eval row written twice."""

from __future__ import annotations

import numpy as np
import pytest
from test_failure_modes import invoke, tiny_store

TRAIN = ["train", "--frames", "4", "--epochs", "1", "--batch-size", "2", "--device", "cpu"]


def add_videos(store, ids: list[str], frames: int = 12) -> None:
    """Commit one more part holding videos `ids` into a `tiny_store` (a store that grew since a run started)."""
    from vivitcache.store import StoreLayout, StoreWriter

    rng = np.random.default_rng(1)
    writer = StoreWriter.create_or_open(store, {"model": "vit-ti", "weights_sha256": "0" * 64},
                                        StoreLayout("cls", 1, 16, "fp16", shard_frames=32, chunk_frames=8),
                                        ["a", "b"], {})
    with writer.part("grown") as pw:
        for vid in ids:
            pw.begin_video(vid, 0, f"{vid}.mp4", 25.0)
            pw.append(rng.normal(size=(frames, 1, 16)).astype(np.float32), np.arange(frames) / 25.0)
            pw.end_video()


def error_line(result, code=2) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == code and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_resume_on_a_store_that_grew_is_refused_in_one_line(tmp_path):
    store, out = tiny_store(tmp_path / "s.zarr"), tmp_path / "run"
    assert invoke(*TRAIN, "--store", store, "--out", out).exit_code == 0
    assert invoke(*TRAIN, "--store", store, "--out", out, "--resume").exit_code == 0  # same data: continues

    add_videos(store, ["v90", "v91", "v92", "v93"])
    for resume in (["--resume"], ["--resume", "auto"]):
        line = error_line(invoke(*TRAIN, "--store", store, "--out", out, *resume))
        assert f"--resume: {out} was started on other data than {store}" in line
        assert "start a new run with another --out" in line
    assert invoke(*TRAIN, "--store", store, "--out", tmp_path / "new").exit_code == 0  # as the message says
    assert invoke(*TRAIN, "--store", store, "--out", out, "--overwrite").exit_code == 0
