"""The Zarr v3 token store: round trips, plain-zarr readability, fingerprints, commit protocol under kills and
concurrent writers, hostile ids, failure ledger, verify, info, stale staging cleanup."""

import json
import multiprocessing as mp
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from vivitcache.store import (
    FingerprintMismatchError,
    StoreError,
    StoreLayout,
    StoreWriter,
    TokenStore,
    store_info,
    verify_store,
)
from vivitcache.store.fingerprint import check_fingerprint, fingerprint_diff
from vivitcache.store.inspect import bytes_per_frame, estimate_store_bytes, format_bytes
from vivitcache.store.writer import plan_parts
from vivitcache.store.dtypes import bf16_bits_to_float32, float32_to_bf16_bits
from vivitcache.lease import host_name

TESTS_DIR = str(Path(__file__).resolve().parent)
K, D = 3, 8
CLASSES = ["archery", "bowling", "cooking"]
FINGERPRINT = {
    "model": "vit-tiny-test",
    "weights_sha256": "ab" * 32,
    "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic"},
    "sampling": {"fps": 8.0},
    "schema": 1,
}
# frames per video; 0 = cannot be decoded (goes to the failure ledger). 75 and 130 cross several 32-frame shards.
LENGTHS = {"v00": 40, "v01": 75, "v02": 5, "v03": 0, "v04": 130, "v05": 17, "v06": 33, "v07": 1}


def make_layout(dtype="fp16", **kw):
    return StoreLayout(**{"tokens": "all", "tokens_per_frame": K, "dim": D, "dtype": dtype, "shard_frames": 32,
                          "chunk_frames": 8, **kw})


def tokens_for(video_id: str, n: int) -> np.ndarray:
    """Deterministic float32 tokens [n, K, D] for a video id."""
    rng = np.random.default_rng(zlib.crc32(video_id.encode("utf-8", "surrogatepass")))
    return rng.standard_normal((n, K, D), dtype=np.float32) * 3


def times_for(n: int) -> np.ndarray:
    return np.arange(n) / 8.0 + 0.0625


def label_for(video_id: str) -> int:
    return zlib.crc32(video_id.encode("utf-8", "surrogatepass")) % len(CLASSES)


def write_part(writer, part, lengths=LENGTHS, window=13, delay=0.0, barrier=None) -> dict:
    """Write one part the way extraction does: long videos streamed in windows."""
    with writer.part(part.part_id) as pw:
        for vid in part.ids:
            n = lengths[vid]
            if n == 0:
                pw.add_failure(vid, f"/videos/{vid}.mp4", "VideoDecodeError: moov atom not found")
                continue
            pw.begin_video(vid, label_for(vid), f"/videos/{vid}.mp4", 8.0)
            x = tokens_for(vid, n)
            for s in range(0, n, window):
                pw.append(x[s : s + window], times_for(n)[s : s + window])
                time.sleep(delay)
            pw.end_video()
        if barrier is not None:
            barrier.wait(timeout=60)  # all writers commit at the same moment
    return pw.result


def build_store(path, dtype="fp16", videos_per_part=3, lengths=LENGTHS, **layout_kw):
    writer = StoreWriter.create_or_open(path, FINGERPRINT, make_layout(dtype, **layout_kw), CLASSES, {"test": True})
    results = [write_part(writer, p, lengths) for p in plan_parts(list(lengths), videos_per_part)]
    return writer, results


def stored_as(x: np.ndarray, dtype: str) -> np.ndarray:
    """What the store should hand back for float32 tokens x."""
    if dtype == "fp16":
        return x.astype(np.float16)
    return torch.from_numpy(x).to(torch.bfloat16).float().numpy()


def assert_same_videos(a: TokenStore, b: TokenStore):
    assert a.ids() == b.ids()
    for vid in a.ids():
        np.testing.assert_array_equal(a.video(vid), b.video(vid))
        np.testing.assert_array_equal(a.frame_times(vid), b.frame_times(vid))
        assert (a.label(vid), a.num_frames(vid), a.source(vid), a.fps(vid)) == \
               (b.label(vid), b.num_frames(vid), b.source(vid), b.fps(vid))
    assert [(f["id"], f["error"]) for f in a.failures()] == [(f["id"], f["error"]) for f in b.failures()]


# ---- layout, fingerprints, planning ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    {"tokens": "patches"}, {"dtype": "fp32"}, {"tokens": "cls", "tokens_per_frame": 3}, {"chunk_frames": 7},
    {"dim": 0}, {"compression": "lz4"}, {"shard_frames": 2.5},
])
def test_layout_refuses_bad_values(bad):
    with pytest.raises(StoreError, match="invalid store layout"):
        make_layout(**bad)


def test_layout_round_trips_through_dict():
    layout = make_layout("bf16", compression="zstd")
    assert StoreLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(StoreError, match="unknown key"):
        StoreLayout.from_dict({**layout.to_dict(), "shards": 3})


def test_fingerprint_diff_names_nested_keys_and_ignores_key_order_and_tuples():
    same = {"schema": 1, "preprocess": {"std": (0.25, 0.25, 0.25), "mean": (0.5, 0.5, 0.5), "size": 32,
                                        "interpolation": "bicubic"}, "sampling": {"fps": 8.0},
            "weights_sha256": "ab" * 32, "model": "vit-tiny-test"}
    assert fingerprint_diff(FINGERPRINT, same) == {}
    other = {**FINGERPRINT, "preprocess": {**FINGERPRINT["preprocess"], "size": 64}, "extra": 1}
    diff = fingerprint_diff(FINGERPRINT, other)
    assert diff["preprocess.size"] == (32, 64)
    assert "extra" in diff and set(diff) == {"preprocess.size", "extra"}
    with pytest.raises(FingerprintMismatchError, match=r"preprocess\.size: expected 32, got 64") as e:
        check_fingerprint(FINGERPRINT, other)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    check_fingerprint(FINGERPRINT, other, keys=["model", "weights_sha256"])  # only these keys matter


def test_plan_parts_is_deterministic_and_covers_every_id_once():
    ids = [f"video_{i:03d}" for i in range(23)]
    parts = plan_parts(ids, 5)
    assert parts == plan_parts(list(reversed(ids)), 5)
    assert [len(p.ids) for p in parts] == [5, 5, 5, 5, 3]
    assert sorted(i for p in parts for i in p.ids) == sorted(ids)
    assert all(re.fullmatch(r"[0-9a-f]{16}", p.part_id) for p in parts)
    assert len({p.part_id for p in parts}) == len(parts)
    assert plan_parts(["a\nb"], 2)[0].part_id != plan_parts(["a", "b"], 2)[0].part_id
    with pytest.raises(StoreError, match="duplicate video id 'video_001'"):
        plan_parts(ids + ["video_001"], 5)
    with pytest.raises(StoreError, match="videos_per_part"):
        plan_parts(ids, 0)


def test_bf16_bits_round_to_nearest_even_like_torch():
    rng = np.random.default_rng(0)
    specials = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 3.4e38, 1e-40, 1.00390625, 1.01171875,
                         65504.0, 1e6], dtype=np.float32)
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 100, specials])
    ours = float32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(bf16_bits_to_float32(ours[~np.isfinite(x) & np.isnan(x)])).all()
    np.testing.assert_array_equal(bf16_bits_to_float32(ours[np.isinf(x)]), x[np.isinf(x)])


# ---- round trips ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_write_read_round_trip(tmp_path, dtype):
    build_store(tmp_path / "s.zarr", dtype, compression="zstd" if dtype == "bf16" else "none")
    store = TokenStore.open(tmp_path / "s.zarr")
    ok = sorted(v for v, n in LENGTHS.items() if n)
    assert store.ids() == ok and len(store) == len(ok)
    assert store.total_frames == sum(LENGTHS.values())
    assert store.fingerprint == FINGERPRINT and store.classes == CLASSES and store.layout == make_layout(
        dtype, compression="zstd" if dtype == "bf16" else "none")
    assert store.provenance == {"test": True}
    for vid in ok:
        n = LENGTHS[vid]
        video = store.video(vid)
        assert video.shape == (n, K, D) and video.dtype == (np.float16 if dtype == "fp16" else np.float32)
        np.testing.assert_array_equal(video, stored_as(tokens_for(vid, n), dtype))
        np.testing.assert_allclose(video, tokens_for(vid, n), rtol=1e-2 if dtype == "bf16" else 1e-3, atol=1e-3)
        np.testing.assert_array_equal(store.frame_times(vid), times_for(n))
        assert (store.label(vid), store.num_frames(vid), store.fps(vid), store.source(vid)) == \
               (label_for(vid), n, 8.0, f"/videos/{vid}.mp4")
        part_id, offset, frames = store.location(vid)
        raw = store.tokens_array(part_id)[offset : offset + frames]
        np.testing.assert_array_equal(store.decode(raw), video)
    long = store.video("v04")  # 130 frames appended in windows of 13 across 5 shards of 32
    for idx in ([129, 0, 64, 64, 3, 100, 0], [10, 9, 9, 8, 11], list(range(130)), [], [31, 32]):
        np.testing.assert_array_equal(store.clip("v04", idx), long[idx] if idx else long[:0])
    with pytest.raises(StoreError, match="out of range"):
        store.clip("v04", [130])
    with pytest.raises(StoreError, match="not committed"):
        store.video("v03")  # in the failure ledger, has no tokens
    assert store.failures()[0]["id"] == "v03"
    clone = pickle.loads(pickle.dumps(store))  # DataLoader workers get a copy; zarr arrays are reopened there
    np.testing.assert_array_equal(clone.clip("v04", [7, 99]), long[[7, 99]])


def test_torch_tensors_are_accepted_and_fp16_overflow_is_refused(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout("bf16"), CLASSES)
    x = torch.randn(20, K, D, generator=torch.Generator().manual_seed(0))
    with writer.part("p") as pw:
        pw.begin_video("bf", "bowling", "src", 30)
        pw.append(x[:10].to(torch.bfloat16), np.arange(10))  # already bf16: stored bit for bit
        pw.append(x[10:], np.arange(10, 20))  # float32: rounded to nearest even
        pw.end_video()
    store = TokenStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.video("bf"), x.to(torch.bfloat16).float().numpy())
    assert store.label("bf") == 1
    fp16 = StoreWriter.create_or_open(tmp_path / "h.zarr", FINGERPRINT, make_layout("fp16"), CLASSES)
    with pytest.raises(StoreError, match="overflow fp16.*bf16"), fp16.part("p") as pw:
        pw.begin_video("big", 0, "src", 30)
        pw.append(np.full((2, K, D), 1e6, np.float32), np.arange(2))
    with pytest.raises(StoreError, match="NaN"), fp16.part("p") as pw:
        pw.begin_video("nan", 0, "src", 30)
        pw.append(np.full((2, K, D), np.nan, np.float32), np.arange(2))
    assert TokenStore.open(tmp_path / "h.zarr").ids() == []


def test_plain_zarr_and_dask_read_the_same_tokens(tmp_path):
    import dask.array as da

    build_store(tmp_path / "s.zarr")
    store = TokenStore.open(tmp_path / "s.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in the store is foreign to zarr
        root = zarr.open(str(tmp_path / "s.zarr"), mode="r")
        members = dict(root.members(max_depth=None))
    for part_id in store.part_ids():
        ours = store.tokens_array(part_id)[:]
        np.testing.assert_array_equal(members[f"parts/{part_id}/tokens"][:], ours)
        lazy = da.from_zarr(str(tmp_path / "s.zarr"), component=f"parts/{part_id}/tokens")
        np.testing.assert_array_equal(lazy.compute(), ours)
        assert root[f"parts/{part_id}"].attrs["vivitcache_commit"]["part_id"] == part_id
    assert root.attrs["vivitcache"]["fingerprint"] == FINGERPRINT


# ---- fingerprints on create_or_open -----------------------------------------------------------------------------
def test_create_or_open_refuses_another_fingerprint_layout_or_classes(tmp_path):
    path = tmp_path / "s.zarr"
    StoreWriter.create_or_open(path, FINGERPRINT, make_layout(), CLASSES)
    reopened = StoreWriter.create_or_open(path, json.loads(json.dumps(FINGERPRINT)), make_layout(), CLASSES)
    assert reopened.fingerprint == FINGERPRINT
    with pytest.raises(FingerprintMismatchError,
                       match=r"made with different settings: fingerprint\.weights_sha256: store has \"abab.*"
                             r"you asked for \"cdcd"):
        StoreWriter.create_or_open(path, {**FINGERPRINT, "weights_sha256": "cd" * 32}, make_layout(), CLASSES)
    with pytest.raises(FingerprintMismatchError, match=r"layout\.dtype: store has \"fp16\", you asked for \"bf16\""):
        StoreWriter.create_or_open(path, FINGERPRINT, make_layout("bf16"), CLASSES)
    with pytest.raises(FingerprintMismatchError, match="classes"):
        StoreWriter.create_or_open(path, FINGERPRINT, make_layout(), CLASSES[::-1])


# ---- the commit protocol ----------------------------------------------------------------------------------------
def test_exception_inside_part_publishes_nothing(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    part = plan_parts(list(LENGTHS), 8)[0]
    with pytest.raises(RuntimeError, match="decoder crashed"), writer.part(part.part_id) as pw:
        pw.begin_video("v04", 0, "src", 8.0)
        pw.append(tokens_for("v04", 100), times_for(100))  # three whole shards already on disk
        raise RuntimeError("decoder crashed")
    assert pw.result["committed"] is False
    assert writer.committed_parts() == set() and writer.committed_ids() == set()
    assert os.listdir(tmp_path / "s.zarr" / "staging") == ["zarr.json"]
    assert TokenStore.open(tmp_path / "s.zarr").ids() == []
    with pytest.raises(StoreError, match="begun but not ended"), writer.part(part.part_id) as pw:
        pw.begin_video("v00", 0, "src", 8.0)
    assert writer.committed_parts() == set()
    assert write_part(writer, part)["committed"] is True  # re-running commits
    assert writer.part(part.part_id).already_committed
    assert write_part(writer, part) == {**pw.result, "part_id": part.part_id, "committed": False,
                                        "already_committed": True, "frames": sum(LENGTHS.values()),
                                        "bytes": sum(LENGTHS.values()) * K * D * 2, "videos": 7, "failures": 1}


SLOW_WRITER = """
import sys
sys.path.insert(0, {tests!r})
import test_store as t
from vivitcache.store import StoreWriter
from vivitcache.store.writer import plan_parts
writer = StoreWriter.create_or_open({path!r}, t.FINGERPRINT, t.make_layout(), t.CLASSES)
for part in plan_parts(list(t.LENGTHS), 3):
    t.write_part(writer, part, delay=0.2)
"""


def test_kill_9_mid_part_leaves_nothing_and_resume_equals_uninterrupted_run(tmp_path):
    path = tmp_path / "killed.zarr"
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER.format(tests=TESTS_DIR, path=str(path)))
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.time() + 60
        while not list(path.glob("staging/*/tokens/c/0/0/0")):  # a whole shard is on disk
            assert proc.poll() is None and time.time() < deadline, "writer ended before it could be killed"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    writer = StoreWriter.create_or_open(path, FINGERPRINT, make_layout(), CLASSES)
    assert writer.committed_parts() == set()
    assert TokenStore.open(path).ids() == []
    stale = store_info(path)["staging_dirs"]
    assert len(stale) == 1 and stale[0]["stale"] and stale[0]["pid"] == proc.pid
    assert verify_store(path) == []  # an uncommitted staging folder is not damage
    assert writer.cleanup_stale_staging() == [stale[0]["name"]]
    assert os.listdir(path / "staging") == ["zarr.json"]
    for part in plan_parts(list(LENGTHS), 3):  # resume: skip what is committed, write the rest
        if part.part_id not in writer.committed_parts():
            assert write_part(writer, part)["committed"]
    build_store(tmp_path / "clean.zarr")
    assert_same_videos(TokenStore.open(path), TokenStore.open(tmp_path / "clean.zarr"))
    assert verify_store(path) == []


def _write_in_process(path, layout_kw, part_ids, barrier, queue):
    """Spawned writer: create/open the store at the same moment as its twin, write its parts, commit together."""
    barrier.wait(timeout=60)
    writer = StoreWriter.create_or_open(path, FINGERPRINT, make_layout(**layout_kw), CLASSES)
    parts = {p.part_id: p for p in plan_parts(list(LENGTHS), 4)}
    queue.put([write_part(writer, parts[i], barrier=barrier) for i in part_ids])


def _run_two_writers(path, jobs):
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_write_in_process, args=(str(path), {}, job, barrier, queue)) for job in jobs]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [r for rs in results for r in rs]


def test_two_processes_writing_the_same_part_publish_it_once(tmp_path):
    parts = plan_parts(list(LENGTHS), 4)
    results = _run_two_writers(tmp_path / "s.zarr", [[parts[0].part_id], [parts[0].part_id]])
    assert sorted(r["committed"] for r in results) == [False, True]
    assert sorted(r["already_committed"] for r in results) == [False, True]
    assert os.listdir(tmp_path / "s.zarr" / "staging") == ["zarr.json"]  # the loser cleaned up
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.part_ids() == [parts[0].part_id]
    for vid in parts[0].ids:
        if LENGTHS[vid]:
            np.testing.assert_array_equal(store.video(vid), stored_as(tokens_for(vid, LENGTHS[vid]), "fp16"))
    assert verify_store(tmp_path / "s.zarr") == []


def test_two_processes_writing_different_parts_both_commit(tmp_path):
    parts = plan_parts(list(LENGTHS), 4)
    results = _run_two_writers(tmp_path / "s.zarr", [[parts[0].part_id], [parts[1].part_id]])
    assert [r["committed"] for r in results] == [True, True]
    build_store(tmp_path / "clean.zarr", videos_per_part=4)
    assert_same_videos(TokenStore.open(tmp_path / "s.zarr"), TokenStore.open(tmp_path / "clean.zarr"))
    assert verify_store(tmp_path / "s.zarr") == []


# ---- hostile ids, failure ledger -------------------------------------------------------------------------------
HOSTILE = ["../../x", "/etc/passwd", "..", ".", "a/../../b", "C:\\Windows\\x", "line\nbreak", "ümlaut 名前",
           "\udcff-undecodable", "x" * 300, "parts", "staging/../parts/evil"]


def test_hostile_ids_stay_data_inside_the_store(tmp_path):
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    lengths = {vid: 3 + i for i, vid in enumerate(HOSTILE)}
    lengths["/etc/passwd"] = 0  # and one in the failure ledger
    build_store(tmp_path / "s.zarr", lengths=lengths, videos_per_part=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(outside_before + ["s.zarr"])
    assert not Path(str(tmp_path / "x")).exists() and not (tmp_path.parent / "x").exists()
    allowed = re.compile(r"^(zarr\.json|parts|staging|index|tokens|frame_times|c|\d+|[0-9a-f]{16})$")
    for dirpath, dirnames, filenames in os.walk(tmp_path / "s.zarr"):
        for name in dirnames + filenames:
            assert allowed.match(name), f"unexpected path component {name!r} in {dirpath}"
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.ids() == sorted(v for v in HOSTILE if lengths[v])
    for vid in store.ids():
        np.testing.assert_array_equal(store.video(vid), stored_as(tokens_for(vid, lengths[vid]), "fp16"))
    assert [f["id"] for f in store.failures()] == ["/etc/passwd"]
    assert verify_store(tmp_path / "s.zarr") == []
    with pytest.raises(StoreError, match="invalid part id"):
        StoreWriter.open(tmp_path / "s.zarr").part("../evil")


def test_failure_ledger_round_trip_and_abort_mid_stream(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    with writer.part("mixed") as pw:
        pw.begin_video("first", 0, "/v/first.mp4", 25)
        pw.append(tokens_for("first", 20), times_for(20))
        pw.end_video()
        pw.begin_video("broken", 1, "/v/broken.mp4", 25)
        pw.append(tokens_for("broken", 70), times_for(70))  # fills shards 0-2 with frames of "first" and "broken"
        pw.abort_video("VideoDecodeError: corrupt packet at 2.4 s")
        pw.add_failure("unopenable", "/v/unopenable.mp4", "no video stream")
        pw.begin_video("empty", 2, "/v/empty.mp4", 25)
        pw.end_video()  # no frames: ledger, not tokens
        pw.begin_video("last", 2, "/v/last.mp4", None)
        pw.append(tokens_for("last", 40), None)
        pw.end_video()
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.ids() == ["first", "last"]
    assert store.location("last") == ("mixed", 20, 40)  # the aborted video's frames are gone
    np.testing.assert_array_equal(store.video("first"), stored_as(tokens_for("first", 20), "fp16"))
    np.testing.assert_array_equal(store.video("last"), stored_as(tokens_for("last", 40), "fp16"))
    assert np.isnan(store.frame_times("last")).all() and store.fps("last") is None
    assert [(f["id"], f["source"], f["error"]) for f in store.failures()] == [
        ("broken", "/v/broken.mp4", "VideoDecodeError: corrupt packet at 2.4 s"),
        ("empty", "/v/empty.mp4", "no frames were decoded"),
        ("unopenable", "/v/unopenable.mp4", "no video stream"),
    ]
    assert writer.committed_ids() == {"first", "last", "broken", "empty", "unopenable"}
    assert writer.committed_ids(include_failures=False) == {"first", "last"}
    assert store.tokens_array("mixed").shape == (60, K, D)
    assert verify_store(tmp_path / "s.zarr") == []


def test_duplicate_id_across_parts_is_reported_and_the_first_part_wins(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    for part_id, n in (("bbbb", 5), ("aaaa", 3)):
        with writer.part(part_id) as pw:
            pw.begin_video("same", 0, part_id, 8)
            pw.append(tokens_for(part_id, n), times_for(n))
            pw.end_video()
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.ids() == ["same"] and store.location("same") == ("aaaa", 0, 3)
    assert store.duplicates == [("same", "aaaa", "bbbb")]
    assert verify_store(tmp_path / "s.zarr") == ["video id 'same' committed twice: parts aaaa and bbbb"]


def test_part_writer_refuses_misuse(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    pw = writer.part("p")
    with pytest.raises(StoreError, match="without begin_video"):
        pw.append(tokens_for("a", 2), times_for(2))
    pw.begin_video("a", 0, "src", 8)
    with pytest.raises(StoreError, match=r"tokens must be \[n, 3, 8\], got \[2, 3, 9\]"):
        pw.append(np.zeros((2, K, 9), np.float32), times_for(2))
    with pytest.raises(StoreError, match="2 frames but 3 frame times"):
        pw.append(np.zeros((2, K, D), np.float32), times_for(3))
    with pytest.raises(StoreError, match="is not ended"):
        pw.begin_video("b", 0, "src", 8)
    pw.end_video()
    with pytest.raises(StoreError, match="written twice"):
        pw.add_failure("a", "src", "x")
    with pytest.raises(StoreError, match="label 3 outside"):
        pw.begin_video("c", 3, "src", 8)
    with pytest.raises(StoreError, match="not one of the store's 3 classes"):
        pw.begin_video("d", "dancing", "src", 8)
    pw.discard()
    assert writer.committed_parts() == set()


# ---- verify, info, cleanup, not-a-store ---------------------------------------------------------------------
def test_verify_catches_missing_shard_bad_bytes_and_damaged_commit(tmp_path):
    good = tmp_path / "good.zarr"
    writer, _ = build_store(good, videos_per_part=8)
    assert verify_store(good) == []
    (part,) = TokenStore.open(good).part_ids()

    deleted = tmp_path / "deleted.zarr"
    shutil.copytree(good, deleted)
    (deleted / "parts" / part / "tokens" / "c" / "2" / "0" / "0").unlink()
    problems = verify_store(deleted)
    assert len(problems) == 2 and f"part {part}" in problems[0] and "tokens/c/2/0/0 is missing" in problems[0]
    assert "--repair" in problems[1]

    flipped = tmp_path / "flipped.zarr"
    shutil.copytree(good, flipped)
    shard = flipped / "parts" / part / "tokens" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("tokens/c/1/0/0: frames 32.. unreadable" in p for p in verify_store(flipped))  # crc32c of the chunk
    assert verify_store(flipped, quick=True) == []  # metadata only: sizes are unchanged

    truncated = tmp_path / "truncated.zarr"
    shutil.copytree(good, truncated)
    commit = truncated / "parts" / part / "zarr.json"
    commit.write_bytes(commit.read_bytes()[:100])
    problems = verify_store(truncated)
    assert len(problems) == 2 and "cannot be read as JSON" in problems[0] and part in problems[0]
    with pytest.raises(StoreError, match="cannot be read as JSON"):
        TokenStore.open(truncated)  # a reader never silently loses a part
    info = store_info(truncated)
    assert info["videos"] == 0 and len(info["damaged_parts"]) == 1
    repaired = StoreWriter.open(truncated)
    assert repaired.committed_parts() == set()  # a damaged part is redone ...
    assert write_part(repaired, plan_parts(list(LENGTHS), 8)[0])["committed"]  # ... replacing the damaged folder
    assert verify_store(truncated) == []
    assert_same_videos(TokenStore.open(truncated), TokenStore.open(good))


def test_store_info_reports_counts_sizes_and_settings(tmp_path):
    path = tmp_path / "s.zarr"
    build_store(path, videos_per_part=3)
    info = store_info(path)
    assert (info["videos"], info["frames"], info["failed"], info["parts"]) == (7, sum(LENGTHS.values()), 1, 3)
    assert info["fingerprint"] == FINGERPRINT and info["classes"] == CLASSES
    assert info["layout"] == make_layout().to_dict() and info["provenance"] == {"test": True}
    assert info["bytes_per_frame"] == bytes_per_frame(K, D, "fp16") == K * D * 2
    on_disk = sum(f.stat().st_size for f in (path / "parts").rglob("*") if f.is_file() and "tokens" in f.parts)
    assert on_disk <= info["bytes_on_disk"] <= sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert info["staging_dirs"] == [] and info["index"] == "absent"
    assert estimate_store_bytes(1000, 1, 1408, "bf16") == 1000 * 1408 * 2
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(100) == "100 B"


def test_consolidated_index_is_used_while_fresh_and_ignored_once_parts_change(tmp_path):
    path = tmp_path / "s.zarr"
    writer, _ = build_store(path, lengths={k: v for k, v in LENGTHS.items() if k < "v04"}, videos_per_part=2)
    assert writer.consolidate() == {"parts": 2, "videos": 3, "written": True}
    assert writer.consolidate() == {"parts": 2, "videos": 3, "written": False}  # fresh: nothing to write
    assert store_info(path)["index"] == "fresh"
    assert TokenStore.open(path).ids() == ["v00", "v01", "v02"]
    more = plan_parts(["v04", "v05"], 2)[0]
    write_part(writer, more)  # published after the index: the index is stale, the new part still appears
    assert store_info(path)["index"] == "stale"
    assert TokenStore.open(path).ids() == ["v00", "v01", "v02", "v04", "v05"]
    writer.consolidate()
    for part in TokenStore.open(path).part_ids():  # fresh index: commit files are not even read
        (path / "parts" / part / "zarr.json").write_text("{}")
    assert TokenStore.open(path).ids() == ["v00", "v01", "v02", "v04", "v05"]
    assert any("no 'vivitcache_commit'" in p for p in verify_store(path))
    with pytest.raises(StoreError, match="no 'vivitcache_commit'"):
        TokenStore.open(path).video("v00")  # ... but no token is handed out from a part without its record


def test_cleanup_removes_only_dead_or_abandoned_staging(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    me = host_name()
    names = {
        "dead": f"aaaa.{me}.{dead_pid}.t1",
        "alive": f"bbbb.{me}.{os.getpid()}.t2",
        "other_recent": "cccc.elsewhere.123.t3",
        "other_old": "dddd.elsewhere.123.t4",
    }
    for name in names.values():
        (tmp_path / "s.zarr" / "staging" / name / "tokens").mkdir(parents=True)
        (tmp_path / "s.zarr" / "staging" / name / "tokens" / "zarr.json").write_text("{}")
    old = time.time() - 7200
    for f in [tmp_path / "s.zarr" / "staging" / names["other_old"] / "tokens" / "zarr.json",
              tmp_path / "s.zarr" / "staging" / names["other_old"] / "tokens",
              tmp_path / "s.zarr" / "staging" / names["other_old"]]:
        os.utime(f, (old, old))
    assert {d["name"]: d["stale"] for d in store_info(tmp_path / "s.zarr")["staging_dirs"]} == {
        names["dead"]: True, names["alive"]: False, names["other_recent"]: False, names["other_old"]: False}
    removed = writer.cleanup_stale_staging(max_age_s=3600)
    assert sorted(removed) == sorted([names["dead"], names["other_old"]])
    assert sorted(os.listdir(tmp_path / "s.zarr" / "staging")) == sorted(
        ["zarr.json", names["alive"], names["other_recent"]])


def test_not_a_store_raises_store_error(tmp_path):
    with pytest.raises(StoreError, match="no such token store"):
        TokenStore.open(tmp_path / "missing.zarr")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(StoreError, match="not a folder"):
        TokenStore.open(tmp_path / "file.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a zarr store"):
        TokenStore.open(tmp_path / "empty")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a vivitcache token store"):
        TokenStore.open(tmp_path / "plain.zarr")
    StoreWriter.create_or_open(tmp_path / "future.zarr", FINGERPRINT, make_layout(), CLASSES)
    meta = json.loads((tmp_path / "future.zarr" / "zarr.json").read_text())
    meta["attributes"]["vivitcache"]["schema"] = 99
    (tmp_path / "future.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="schema 99.*upgrade vivitcache"):
        TokenStore.open(tmp_path / "future.zarr")
    assert verify_store(tmp_path / "plain.zarr") != []
    with pytest.raises(StoreError, match="not a vivitcache token store"):
        StoreWriter.create_or_open(tmp_path / "plain.zarr", FINGERPRINT, make_layout(), CLASSES)
