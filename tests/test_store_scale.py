"""The store at scale and under many writers: columnar index (incremental == from scratch, old stores), recorded
part plan, O_EXCL claims with heartbeat and take-over, shards sized by bytes, all-zero parts, damage found on read."""

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from test_store import CLASSES, FINGERPRINT, LENGTHS, build_store, make_layout, write_part
from vivitcache.store import StoreDamageError, StoreLayout, StoreWriter, TokenStore, store_info, verify_store
from vivitcache.store.writer import plan_parts, shard_frames_for
from vivitcache.store.index import MAX_SEGMENTS, index_state, open_index, publish_labels
from vivitcache.store.plan import extend_plan, read_plan


def snapshot(store: TokenStore) -> dict:
    """Everything a reader can see of a store, as plain data."""
    return {
        "ids": store.ids(), "len": len(store), "frames": store.total_frames, "parts": store.part_ids(),
        "videos": {v: (store.location(v), store.label(v), store.fps(v), store.source(v)) for v in store.ids()},
        "failures": store.failures(), "sums": store.part_sums(), "duplicates": store.duplicates,
    }


# ---- the columnar index -----------------------------------------------------------------------------------------
def test_index_built_incrementally_equals_one_built_from_scratch(tmp_path):
    path = tmp_path / "s.zarr"
    writer = StoreWriter.create_or_open(path, FINGERPRINT, make_layout(), CLASSES)
    for i, part in enumerate(plan_parts(list(LENGTHS), 1)):  # 8 parts, one consolidation after each
        write_part(writer, part)
        if i == 5:
            publish_labels(path, {"v00": 2, "v04": 0}, path / "staging")  # labels changed by a re-run
        result = writer.consolidate()
        assert result["written"] and writer.consolidate()["written"] is False  # fresh: nothing rewritten
        assert 1 <= len(open_index(path).segments) <= MAX_SEGMENTS
    incremental = snapshot(TokenStore.open(path))
    assert index_state(path) == "fresh"
    scratch = tmp_path / "scratch.zarr"
    shutil.copytree(path, scratch)
    StoreWriter.open(scratch).consolidate(force=True)
    assert len(open_index(scratch).segments) == 1
    assert snapshot(TokenStore.open(scratch)) == incremental
    shutil.rmtree(scratch / "index")  # no index at all: every commit record is read
    assert snapshot(TokenStore.open(scratch)) == incremental
    assert incremental["videos"]["v00"][1] == 2 and incremental["videos"]["v04"][1] == 0
    assert len(incremental["ids"]) == 7 and [f["id"] for f in incremental["failures"]] == ["v03"]
    assert verify_store(path) == []


def test_index_stale_after_new_part_still_correct_and_open_reads_only_the_new_record(tmp_path, monkeypatch):
    import vivitcache.store.index as index

    path = tmp_path / "s.zarr"
    writer, _ = build_store(path, lengths={k: v for k, v in LENGTHS.items() if k < "v05"}, videos_per_part=2)
    writer.consolidate()
    write_part(writer, plan_parts(["v05", "v06"], 2)[0])
    read = []
    real = index.read_commit_digest
    monkeypatch.setattr(index, "read_commit_digest", lambda root, part: (read.append(part), real(root, part))[1])
    store = TokenStore.open(path)
    assert read == [plan_parts(["v05", "v06"], 2)[0].part_id]  # incremental at open, too
    assert store.ids() == ["v00", "v01", "v02", "v04", "v05", "v06"] and index_state(path) == "stale"


def test_old_stores_open_and_vivitcache_index_upgrades_them(tmp_path):
    from typer.testing import CliRunner

    from vivitcache.cli import app

    path = tmp_path / "old.zarr"
    build_store(path, videos_per_part=3)
    def seen(p):  # an old record has no file list, so the file count differs; everything else must not
        return {k: v for k, v in snapshot(TokenStore.open(p)).items() if k != "sums"}

    reference = seen(path)
    # What an older vivitcache wrote: a format-1 JSON index, commit records without file sizes, no plan.
    records = {}
    for part in os.listdir(path / "parts"):
        meta_path = path / "parts" / part / "zarr.json"
        if not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        meta["attributes"]["vivitcache_commit"].pop("files")
        meta_path.write_text(json.dumps(meta))
        records[part] = meta["attributes"]["vivitcache_commit"]
    shutil.rmtree(path / "index", ignore_errors=True)
    (path / "index").mkdir()
    (path / "index" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
        "vivitcache_index": {"parts_mtime_ns": os.stat(path / "parts").st_mtime_ns, "parts": records}}}))
    assert index_state(path) == "old"
    assert seen(path) == reference  # opens: the old record is ignored, the parts are read
    assert "old" in store_info(path)["index"] and verify_store(path) == []
    result = CliRunner().invoke(app, ["index", str(path)])
    assert result.exit_code == 0, result.output
    assert index_state(path) == "fresh" and seen(path) == reference
    # An old record without file sizes still gets the shard-presence check before tokens are handed out.
    part, offset, _ = TokenStore.open(path).location("v04")
    (path / "parts" / part / "tokens" / "c" / "1" / "0" / "0").unlink()
    with pytest.raises(StoreDamageError, match=f"part {part}: .*tokens/c/1/0/0 is missing"):
        TokenStore.open(path).video("v04")


# ---- writer details ----------------------------------------------------------------------------------------------
def test_all_zero_part_commits_and_verifies(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "z.zarr", FINGERPRINT, make_layout(), CLASSES)
    with writer.part("zeros") as pw:
        pw.begin_video("z", 0, "/z.mp4", None)
        pw.append(np.zeros((40, 3, 8), np.float32))  # the fill value, and no frame times (NaN, the other fill)
        pw.end_video()
    assert pw.result["committed"]
    store = TokenStore.open(tmp_path / "z.zarr")
    assert (store.video("z") == 0).all() and np.isnan(store.frame_times("z")).all()
    assert verify_store(tmp_path / "z.zarr") == []


def test_shards_are_sized_by_bytes_and_info_counts_files(tmp_path):
    for frame_bytes, chunk in [(1536, 64), (2816, 64), (197 * 768 * 2, 16), (10**9, 8)]:
        shard = shard_frames_for(frame_bytes, chunk)
        assert shard % chunk == 0 and shard >= chunk
        assert shard * frame_bytes <= 32 * 2**20 or shard == chunk
        assert (shard + chunk) * frame_bytes > 32 * 2**20
    path = tmp_path / "s.zarr"
    build_store(path, videos_per_part=8)  # one part, 301 frames, 32-frame shards
    info = store_info(path)
    files = sum(1 for f in (path / "parts").glob("*/**/*") if f.is_file())  # every file of every part
    assert info["part_files"] == files
    assert info["files_per_million_frames"] == round(files / info["frames"] * 1e6, 1)


# ---- the part plan -------------------------------------------------------------------------------------------------
def _entries(ids):
    return [{"id": i, "path": f"/v/{i}.mp4", "label": 0, "split": "train"} for i in ids]


def _extend(path, ids, vpp, queue):
    plan, _ = extend_plan(path, _entries(ids), vpp, done=set())
    queue.put({i: plan.part_of[i] for i in ids})


def test_plan_never_re_cuts_a_planned_video_whatever_the_annotations_or_videos_per_part(tmp_path):
    path = tmp_path / "s.zarr"
    StoreWriter.create_or_open(path, FINGERPRINT, make_layout(), CLASSES)
    ids = [f"v{i:03d}" for i in range(64)]
    first, _ = extend_plan(path, _entries(ids[::2]), 3, done=set())
    later, planned = extend_plan(path, _entries(ids), 4, done=set())
    assert planned == 32 and all(later.part_of[i] == first.part_of[i] for i in ids[::2])
    # Racing planners (processes) with other subsets and sizes: every id ends in exactly one part.
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    more = [f"w{i:03d}" for i in range(40)]
    procs = [ctx.Process(target=_extend, args=(path, sel, vpp, queue))
             for sel, vpp in [(more, 3), (more[::3] + ids, 5), (more[10:], 7)]]
    for p in procs:
        p.start()
    seen = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    plan = read_plan(path)
    members = [e["id"] for videos in plan.parts.values() for e in videos]
    assert sorted(members) == sorted(ids + more)  # each id once
    for view in seen:  # every planner saw the same final part of each id
        assert all(plan.part_of[i] == part for i, part in view.items())


# ---- claims --------------------------------------------------------------------------------------------------------
HOLD_CLAIM = textwrap.dedent("""
    import sys, time
    import vivitcache.lease
    vivitcache.lease.host_name = lambda: "another-host"  # a writer on another node: its pid cannot be checked here
    import vivitcache.store.claims as claims
    claim = claims.Claim(sys.argv[1], "p1", timeout_s=float(sys.argv[2]), heartbeat_s=0.05)
    assert claim.acquire()
    print("held", flush=True)
    time.sleep(600)
""")


def test_claims_skip_live_writers_and_take_over_after_the_heartbeat_timeout(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    timeout = 1.0
    proc = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(writer.path), str(timeout)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        time.sleep(2 * timeout)  # longer than the timeout: only the heartbeat keeps the claim alive
        assert not writer.claim("p1", timeout_s=timeout).acquire()
        os.kill(proc.pid, signal.SIGKILL)  # killed while holding the claim
        proc.wait()
        assert not writer.claim("p1", timeout_s=timeout).acquire()  # heartbeat still recent
        time.sleep(timeout + 0.3)
        claim = writer.claim("p1", timeout_s=timeout)
        assert claim.acquire() and claim.took_over["host"] == "another-host"
        assert not writer.claim("p1", timeout_s=timeout).acquire()  # now ours, and live
        claim.release()
        assert not (writer.path / "claims" / "p1.claim").exists()
    finally:
        proc.kill()
        proc.wait()
    # Same host: a dead writer's claim is taken over at once (its pid is known dead).
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    from vivitcache.lease import host_name
    (writer.path / "claims" / "p2.claim").write_text(json.dumps({"host": host_name(), "pid": int(done.stdout),
                                                                 "token": "x"}))
    claim = writer.claim("p2", timeout_s=3600)
    assert claim.acquire() and claim.took_over["token"] == "x"
    claim.release()


# ---- damage found on read ------------------------------------------------------------------------------------------
def _damage(path, part, kind):
    folder = path / "parts" / part
    if kind == "flipped byte":
        shard = folder / "tokens" / "c" / "1" / "0" / "0"
        data = bytearray(shard.read_bytes())
        data[10] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif kind == "truncated shard":
        shard = folder / "tokens" / "c" / "1" / "0" / "0"
        shard.write_bytes(shard.read_bytes()[:-100])
    elif kind == "deleted shard":
        (folder / "tokens" / "c" / "1" / "0" / "0").unlink()
    elif kind == "deleted part record":
        (folder / "zarr.json").unlink()
    elif kind == "deleted frame_times chunk":
        (folder / "frame_times" / "c" / "0").unlink()
    elif kind == "edited num_frames":
        meta = json.loads((folder / "zarr.json").read_text())
        meta["attributes"]["vivitcache_commit"]["videos"][0]["num_frames"] = 200
        (folder / "zarr.json").write_text(json.dumps(meta))


KINDS = ["flipped byte", "truncated shard", "deleted shard", "deleted part record", "deleted frame_times chunk",
         "edited num_frames"]


@pytest.mark.parametrize("indexed", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_every_damage_fails_the_reader_naming_the_part_and_verify_says_how_to_repair(tmp_path, kind, indexed):
    path = tmp_path / "s.zarr"
    writer, _ = build_store(path, videos_per_part=8)
    if indexed:
        writer.consolidate()
    (part,) = TokenStore.open(path).part_ids()
    _damage(path, part, kind)
    with pytest.raises(StoreDamageError, match=f"part {part}") as err:
        store = TokenStore.open(path)  # an unindexed part with a broken record fails here already
        for vid in store.ids():  # a training epoch
            store.video(vid)
            store.frame_times(vid)
    message = str(err.value)
    assert "--repair" in message
    if kind in ("truncated shard", "deleted shard", "flipped byte"):
        assert "tokens/c/1/0/0" in message
    if kind == "deleted frame_times chunk":
        assert "frame_times/c/0" in message
    problems = verify_store(path)
    assert problems and any(part in p for p in problems) and "--repair" in problems[-1]
    if kind != "flipped byte":  # a flipped byte keeps every size: only the checksums find it
        assert verify_store(path, quick=True) != []


@pytest.mark.parametrize("consolidate_between", [True, False])
def test_an_id_committed_twice_resolves_the_same_indexed_or_not(tmp_path, consolidate_between):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    for part_id, n in (("bbbb", 5), ("aaaa", 3)):
        with writer.part(part_id) as pw:
            for vid in ("same", f"only-{part_id}"):
                pw.begin_video(vid, 0, part_id, 8)
                pw.append(np.ones((n, 3, 8), np.float32))
                pw.end_video()
        if consolidate_between:
            writer.consolidate()  # "same" is then in two segments, or in one mapped and one read at open
    store = TokenStore.open(tmp_path / "s.zarr")
    assert store.ids() == ["only-aaaa", "only-bbbb", "same"] and len(store) == 3
    assert store.location("same") == ("aaaa", 0, 3) and store.total_frames == 3 + 3 + 5
    assert store.duplicates == [("same", "aaaa", "bbbb")]


def test_a_part_may_hold_thousands_of_videos(tmp_path):
    layout = StoreLayout("pooled", 1, 8, "fp16", shard_frames=shard_frames_for(16, 64), chunk_frames=64)
    writer = StoreWriter.create_or_open(tmp_path / "big.zarr", FINGERPRINT, layout, CLASSES)
    with writer.part("big") as pw:
        for i in range(3000):
            pw.begin_video(f"v{i:05d}", i % 3, f"/v/{i}.mp4", 8.0)
            pw.append(np.full((2, 1, 8), i % 7, np.float32), [0.0, 0.125])
            pw.end_video()
    writer.consolidate()
    store = TokenStore.open(tmp_path / "big.zarr")
    assert len(store) == 3000 and store.part_ids() == ["big"] and store.location("v02999") == ("big", 5998, 2)
    assert (store.video("v01234") == 1234 % 7).all() and store.label("v01234") == 1234 % 3
    assert store_info(tmp_path / "big.zarr")["part_files"] == 5  # record, 2 array records, 1 shard, 1 times chunk


def test_verify_names_the_repair_command_of_the_run_that_made_the_store(tmp_path):
    path = tmp_path / "s.zarr"
    argv = ["/venv/bin/vivitcache", "extract", "--data", "my labels.csv", "--store", str(path), "--model", "vit-b"]
    writer = StoreWriter.create_or_open(path, FINGERPRINT, make_layout(), CLASSES, {"argv": argv})
    write_part(writer, plan_parts(["v00", "v01"], 2)[0])
    (part,) = TokenStore.open(path).part_ids()
    _damage(path, part, "deleted shard")
    hint = verify_store(path, quick=True)[-1]
    assert f"vivitcache extract --data 'my labels.csv' --store {path} --model vit-b --repair" in hint
