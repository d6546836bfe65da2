"""vivitcache.extract: tokens equal a direct forward, exact resume after kill -9, Dask fan-out, failure ledger,
hostile ids, fingerprint refusal, --checkpoint and --weights. Tiny models (vit-ti, 32 px, 2 blocks) and videos."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vivitcache.data.decode import VideoDecodeError, iter_frames
from vivitcache.data.transforms import Preprocess
from vivitcache.extract import ExtractConfig, ExtractConfigError, ExtractFailures, run_extract
from vivitcache.extract import pipeline
from vivitcache.hashing import state_dict_sha256
from vivitcache.models import create_spatial, frame_tokens
from vivitcache.store import FingerprintMismatchError, TokenStore, verify_store

TINY = dict(model="vit-ti", img_size=32, patch_size=8, spatial_depth=2)


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A `path,label` CSV (paths relative to the CSV's folder or absolute)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def synth_rows(synth: Path, n: int) -> list[tuple[str, str]]:
    """The first n videos of the synth dataset, as absolute path,label rows (every class represented first)."""
    with open(synth / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    rows = sorted(rows, key=lambda r: (r["path"][-7:], r["path"]))[:n]  # *_000 of each class first
    return [(str(synth / r["path"]), r["label"]) for r in rows]


def tiny_cfg(data: Path, store: Path, **kw) -> ExtractConfig:
    base = dict(TINY, data=str(data), store=str(store), workers=0, batch_size=7, progress=False,
                shard_frames=32, chunk_frames=8)
    return ExtractConfig(**{**base, **kw})


def direct_tokens(model, path: str, preprocess: Preprocess, kind: str, fps=None, stride=None):
    """The reference: decode + preprocess a whole video, one forward of the spatial model. ([T, K, D], times [T])"""
    frames = list(iter_frames(path, fps=fps, stride=stride, resize_short=preprocess.resize_short,
                              interpolation=preprocess.interpolation))
    x = preprocess(np.stack([f.image for f in frames]))  # [T, 3, S, S]
    with torch.inference_mode():
        tokens = frame_tokens(model, x, kind)  # [T, K, D]
    return tokens.numpy(), np.array([f.time for f in frames])


def seeded_spatial(seed: int = 0):
    torch.manual_seed(seed)
    return create_spatial("vit-ti", img_size=32, patch_size=8, depth=2).eval()


def assert_same_store(a: Path, b: Path, exact: bool = True) -> None:
    """Video by video, token by token: same ids, labels, frames, times, tokens and ledger."""
    sa, sb = TokenStore.open(a), TokenStore.open(b)
    assert sa.fingerprint == sb.fingerprint and sa.layout == sb.layout and sa.classes == sb.classes
    assert sa.ids() == sb.ids()
    for vid in sa.ids():
        assert (sa.label(vid), sa.num_frames(vid), sa.source(vid), sa.fps(vid)) == \
               (sb.label(vid), sb.num_frames(vid), sb.source(vid), sb.fps(vid))
        np.testing.assert_array_equal(sa.frame_times(vid), sb.frame_times(vid))
        if exact:
            np.testing.assert_array_equal(sa.video(vid), sb.video(vid))
        else:
            np.testing.assert_allclose(sa.video(vid).astype(np.float32), sb.video(vid).astype(np.float32),
                                       atol=2e-3, rtol=2e-3)
    strip = lambda fs: [{k: f[k] for k in ("id", "source", "error")} for f in fs]  # noqa: E731
    assert strip(sa.failures()) == strip(sb.failures())
    assert verify_store(a) == [] and verify_store(b) == []


# ------------------------------------------------------------------------------------------------ correctness
@pytest.mark.parametrize("kind, dtype, fps", [("cls", "fp16", None), ("cls+mean", "fp16", None), ("all", "bf16", 10.0)])
def test_tokens_equal_direct_forward(tmp_path, make_video, kind, dtype, fps):
    # Different sizes/aspects (resize + crop), lengths that do not divide the batch (batches cross videos).
    videos = [make_video(tmp_path / "v" / f"{i}.mp4", frames=n, size=size, pattern="ramp")
              for i, (n, size) in enumerate([(11, (40, 32)), (5, (32, 48)), (13, (64, 64))])]
    data = write_csv(tmp_path / "labels.csv", [(str(v.relative_to(tmp_path)), "a" if i else "b")
                                               for i, v in enumerate(videos)])
    summary = run_extract(tiny_cfg(data, tmp_path / "s.zarr", tokens=kind, dtype=dtype, fps=fps, decode_threads=2))
    assert summary["done"] == 3 and summary["failed"] == 0 and summary["frames"] == (29 if fps is None else 12)

    store = TokenStore.open(tmp_path / "s.zarr")
    model = seeded_spatial(0)
    preprocess = Preprocess.from_timm(model, 32)
    assert store.fingerprint["weights_sha256"] == state_dict_sha256(model)
    assert store.fingerprint["preprocess"] == preprocess.to_dict()
    assert store.ids() == ["v/0", "v/1", "v/2"]
    assert store.fingerprint["sampling"] == {"fps": fps, "stride": None} and store.layout.dtype == dtype
    for vid, path in zip(store.ids(), videos):
        want, times = direct_tokens(model, str(path), preprocess, kind, fps=fps)
        got = store.video(vid)
        assert got.shape == want.shape == (len(times), store.layout.tokens_per_frame, 192)
        tol = 1e-3 if dtype == "fp16" else 8e-3  # storage precision: 11 / 8 significant bits
        np.testing.assert_allclose(got.astype(np.float32), want, atol=10 * tol, rtol=tol)
        np.testing.assert_array_equal(store.frame_times(vid), times)
        assert store.fps(vid) == (fps or 25.0)
    assert store.label("v/0") == store.classes.index("b")


def test_stride_sampling_and_midway_failures(tmp_path, make_video, monkeypatch):
    """A video that fails after some frames is aborted (its frames gone), one with no frames is ledgered, and the
    videos around them still equal a direct forward (their frames shared batches with the failed ones)."""
    videos = [make_video(tmp_path / f"{name}.mp4", frames=30, size=(32, 32), pattern="ramp")
              for name in ("a", "b_midway", "c_empty", "d")]
    data = write_csv(tmp_path / "labels.csv", [(v.name, "x") for v in videos])
    real = pipeline.decode_chunks

    def flaky(record, settings):
        if record.id == "c_empty":
            return
        for i, chunk in enumerate(real(record, settings)):
            if record.id == "b_midway" and i == 1:
                raise VideoDecodeError(record.path, "decoding failed after 15 frames (test)")
            yield chunk

    monkeypatch.setattr(pipeline, "decode_chunks", flaky)
    run_extract(tiny_cfg(data, tmp_path / "s.zarr", stride=3, batch_size=5, prefetch_frames=4, decode_threads=3))
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.ids() == ["a", "d"]
    ledger = {f["id"]: f["error"] for f in store.failures()}
    assert ledger.keys() == {"b_midway", "c_empty"}
    assert "after 15 frames" in ledger["b_midway"] and "no frames" in ledger["c_empty"]
    model, preprocess = seeded_spatial(0), Preprocess.from_timm(seeded_spatial(0), 32)
    for vid in ("a", "d"):
        want, times = direct_tokens(model, str(tmp_path / f"{vid}.mp4"), preprocess, "cls", stride=3)
        assert len(times) == 10 and store.fps(vid) == pytest.approx(25 / 3)
        np.testing.assert_allclose(store.video(vid).astype(np.float32), want, atol=1e-2, rtol=1e-3)
    assert store.fingerprint["sampling"] == {"fps": None, "stride": 3}


# ------------------------------------------------------------------------------------------------ resume
KILL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from vivitcache.store.writer import PartWriter
    end_video = PartWriter.end_video

    def slow_end_video(self):  # slows every part down so the test can kill one deterministically mid-part
        end_video(self)
        time.sleep(0.25)

    PartWriter.end_video = slow_end_video
    from vivitcache.extract import ExtractConfig, run_extract
    run_extract(ExtractConfig(**json.loads(sys.argv[1])))
""")


def test_kill9_then_resume_equals_uninterrupted_run(tmp_path, synth_dataset, bad_videos):
    rows = synth_rows(synth_dataset, 8) + [(str(bad_videos["truncated"]), "move_up")]
    data = write_csv(tmp_path / "labels.csv", rows)
    cfg = tiny_cfg(data, tmp_path / "resumed.zarr", videos_per_part=1, shard_frames=16, chunk_frames=8)
    parts = tmp_path / "resumed.zarr" / "parts"

    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(asdict(cfg))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    committed = []
    while len(committed) < 2:
        assert proc.poll() is None, f"extraction ended early: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no parts committed within 60 s"
        time.sleep(0.02)
        committed = [p for p in parts.glob("*/zarr.json")] if parts.is_dir() else []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list(parts.glob("*/zarr.json"))) < 9, "the run finished before it was killed"
    assert any((tmp_path / "resumed.zarr" / "staging").iterdir()), "killed mid-part: a staging folder remains"

    summary = run_extract(cfg)
    assert summary["skipped"] >= 2 and summary["done"] + summary["failed"] + summary["skipped"] == 9
    assert not any(p.is_dir() for p in (tmp_path / "resumed.zarr" / "staging").iterdir())
    run_extract(replace(cfg, store=str(tmp_path / "reference.zarr")))
    assert_same_store(tmp_path / "resumed.zarr", tmp_path / "reference.zarr")
    assert len(TokenStore.open(tmp_path / "resumed.zarr")) == 8

    again = run_extract(cfg)  # nothing left to do, nothing doubled
    assert again["done"] == again["failed"] == 0 and again["skipped"] == 9


def test_two_dask_workers_equal_one_process(tmp_path, synth_dataset, monkeypatch):
    import vivitcache.extract.runner as runner

    data = write_csv(tmp_path / "labels.csv", synth_rows(synth_dataset, 10))
    single = run_extract(tiny_cfg(data, tmp_path / "one.zarr", videos_per_part=3, torch_threads=1))
    reports, add = [], runner.ExtractProgress.__call__
    monkeypatch.setattr(runner.ExtractProgress, "__call__", lambda self, **kw: (reports.append(kw), add(self, **kw)))
    dask = run_extract(tiny_cfg(data, tmp_path / "two.zarr", videos_per_part=3, workers=2))
    assert sum(r.get("frames", 0) for r in reports) > 0  # workers' progress events reach the client
    assert single["done"] == dask["done"] == 10 and single["frames"] == dask["frames"] == 320
    assert dask["parts"] == 4
    assert_same_store(tmp_path / "one.zarr", tmp_path / "two.zarr")


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_videos_go_to_the_ledger_and_hostile_ids_stay_inside(tmp_path, make_video, bad_videos, monkeypatch):
    good = make_video(tmp_path / "data" / "good.mp4", frames=6, size=(32, 32))
    outside = tmp_path / "x"  # where `../../x` would point from inside the store
    data_dir = tmp_path / "data"
    rows = [(str(p), "bad") for p in bad_videos.values()] + [("missing.mp4", "bad"), ("good.mp4", "good")]
    data = write_csv(data_dir / "labels.csv", rows)
    store_path = tmp_path / "deep" / "store" / "s.zarr"
    cfg = tiny_cfg(data, store_path)
    summary = run_extract(cfg)
    assert summary["done"] == 1 and summary["failed"] == 6

    store = TokenStore.open(store_path)
    ledger = {f["id"]: f for f in store.failures()}
    expected = {str(Path(p).with_suffix("")).lstrip("/") for p, _ in rows[:5]} | {"missing"}
    assert ledger.keys() == expected
    assert "file not found" in ledger["missing"]["error"]
    assert all(f["source"] and f["error"] for f in ledger.values())

    # A hostile id: the annotations can only produce it as data; records are built directly here.
    from vivitcache.data.annotations import VideoDataset, VideoRecord
    import vivitcache.extract.runner as runner

    hostile = VideoRecord("../../x", str(good), 0, "train")
    slash = VideoRecord("/etc/passwd", str(good), 0, "train")
    monkeypatch.setattr(runner, "load_annotations", lambda *a, **k: VideoDataset([hostile, slash], ["bad", "good"]))
    run_extract(replace(cfg, store=str(tmp_path / "h" / "s.zarr")))
    monkeypatch.undo()
    hstore = TokenStore.open(tmp_path / "h" / "s.zarr")
    assert hstore.ids() == ["../../x", "/etc/passwd"] and hstore.num_frames("../../x") == 6
    assert not outside.exists() and not (tmp_path / "h" / "x").exists()
    assert verify_store(tmp_path / "h" / "s.zarr") == []

    with pytest.raises(ExtractFailures, match=r"6 video\(s\) failed"):
        run_extract(replace(cfg, strict=True))  # strict: the ledger entries are an error (nothing redone)


def test_fingerprint_mismatch_is_refused(tmp_path, make_video):
    video = make_video(tmp_path / "v.mp4", frames=4, size=(32, 32))
    data = write_csv(tmp_path / "labels.csv", [(video.name, "a")])
    weights = tmp_path / "spatial.safetensors"
    from safetensors.torch import save_file

    model = seeded_spatial(5)
    save_file(model.state_dict(), weights)
    cfg = tiny_cfg(data, tmp_path / "s.zarr", weights=str(weights))
    run_extract(cfg)
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.fingerprint["weights_sha256"] == state_dict_sha256(model)
    want, _ = direct_tokens(model, str(video), Preprocess.from_timm(model, 32), "cls")
    np.testing.assert_allclose(store.video("v").astype(np.float32), want, atol=1e-2, rtol=1e-3)

    with pytest.raises(FingerprintMismatchError, match="weights_sha256"):
        run_extract(replace(cfg, weights=None))  # random init: other weights
    with pytest.raises(FingerprintMismatchError, match="tokens"):
        run_extract(replace(cfg, tokens="all"))
    with pytest.raises(ExtractConfigError, match="exclusive"):
        run_extract(replace(cfg, checkpoint=str(tmp_path)))


def test_checkpoint_gives_model_preprocessing_and_sampling(tmp_path, make_video):
    from vivitcache.config import ModelConfig
    from vivitcache.runs import load_stage1
    from vivitcache.training.checkpoint import save_checkpoint

    spatial = seeded_spatial(3)
    preprocess = replace(Preprocess.from_timm(spatial, 32), crop_pct=1.0, interpolation="bilinear")
    model_cfg = ModelConfig(spatial="vit-ti", img_size=32, patch_size=8, spatial_depth=2, num_classes=2)
    config = {"stage": 1, "model": asdict(model_cfg), "data": {"fps": None, "stride": 2}, "classes": ["a", "b"],
              "preprocess": preprocess.to_dict()}
    state = {f"spatial.{k}": v for k, v in spatial.state_dict().items()}
    save_checkpoint(tmp_path / "run", state, {"config": config})  # the layout training.loop.fit writes

    video = make_video(tmp_path / "v.mp4", frames=9, size=(48, 32), pattern="ramp")
    data = write_csv(tmp_path / "labels.csv", [(video.name, "a")])
    cfg = ExtractConfig(data=str(data), store=str(tmp_path / "s.zarr"), checkpoint=str(tmp_path / "run"),
                        tokens="cls+mean", workers=0, progress=False)
    run_extract(cfg)
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.fingerprint["weights_sha256"] == load_stage1(tmp_path / "run").spatial_sha256
    assert store.fingerprint["sampling"] == {"fps": None, "stride": 2}
    assert store.fingerprint["preprocess"] == preprocess.to_dict()
    assert store.fingerprint["model"] == "vit_tiny_patch16_224.augreg_in21k_ft_in1k" and store.fingerprint["patch_size"] == 8
    want, times = direct_tokens(spatial, str(video), preprocess, "cls+mean", stride=2)
    assert len(times) == 5
    np.testing.assert_allclose(store.video("v").astype(np.float32), want, atol=1e-2, rtol=1e-3)

    with pytest.raises(ExtractConfigError, match="contradicts checkpoint"):
        run_extract(replace(cfg, img_size=64))


def test_store_and_unexpected_errors_fail_the_part_not_the_ledger(tmp_path, make_video, monkeypatch):
    """Errors that are not about a video (the model makes NaN; a bug in decoding) stop the run with that error,
    commit nothing and ledger nothing, so a fixed re-run extracts everything."""
    from vivitcache.store import StoreError

    videos = [make_video(tmp_path / f"{i}.mp4", frames=6, size=(32, 32)) for i in range(3)]
    data = write_csv(tmp_path / "labels.csv", [(v.name, "a") for v in videos])
    cfg = tiny_cfg(data, tmp_path / "s.zarr", videos_per_part=3)
    real_tokens, real_chunks = pipeline.frame_tokens, pipeline.decode_chunks
    monkeypatch.setattr(pipeline, "frame_tokens", lambda *args: real_tokens(*args) * float("nan"))
    with pytest.raises(StoreError, match="NaN"):
        run_extract(cfg)
    monkeypatch.setattr(pipeline, "frame_tokens", real_tokens)

    def buggy(record, settings):
        yield from real_chunks(record, settings)
        if record.id == "1":
            raise KeyError("a bug, not a bad video")

    monkeypatch.setattr(pipeline, "decode_chunks", buggy)
    with pytest.raises(KeyError, match="a bug"):
        run_extract(cfg)
    store = TokenStore.open(tmp_path / "s.zarr")
    assert len(store) == 0 and store.failures() == []
    monkeypatch.undo()
    assert run_extract(cfg)["done"] == 3


def test_prefetching_decoder_is_bounded_and_ordered(tmp_path, make_video):
    """A decode thread holds at most `prefetch_frames` frames ahead of the consumer, over all its videos (short
    videos must not pile up a whole part), and videos come out in part order with every frame."""
    from vivitcache.data.annotations import VideoRecord

    paths = [make_video(tmp_path / f"{i}.mp4", frames=4, size=(32, 32)) for i in range(6)]
    records = [VideoRecord(str(i), str(p), 0, "train") for i, p in enumerate(paths)]
    settings = pipeline.PartSettings(
        preprocess=Preprocess.from_timm(seeded_spatial(0), 32), fps=None, stride=None, tokens="cls",
        store_dtype="fp16", batch_size=2, device="cpu", decode_threads=2, prefetch_frames=4, torch_threads=None)
    with pipeline.PrefetchingDecoder(records, settings) as decoder:
        time.sleep(1.0)  # let the threads run ahead as far as they may
        queued = sum(q.qsize() for q in decoder.queues)
        frames_queued = sum(1 for q in decoder.queues for item in list(q.queue) if item[0] == "frames")
        assert frames_queued <= 2 * 2, f"{frames_queued} chunks of 2 frames queued, budget 2 per thread"
        assert queued > 0
        seen = [(record.id, [e[0] for e in events]) for record, events in decoder]
    assert [s[0] for s in seen] == [str(i) for i in range(6)]
    assert all(kinds == ["start", "frames", "frames", "end"] for _, kinds in seen)
