"""What a store may trust, and what it checks (issue 19, the store side): index columns are checked (crc32c) at
open and by `verify`; a part the index or plan lists but `parts/` lacks is damage; parts are known by name and the
sha256 of their record (a copied store keeps a fresh index); the failure ledger retries changed sources; claims
with a heartbeat in the future go stale; odd claim paths and read-only stores are one error line."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_extract import assert_same_store
from test_store import CLASSES, FINGERPRINT, build_store, make_layout, write_part
from test_store_extract import extracted  # noqa: F401 — the module-scoped fixture: 8 videos, 2 parts
from vivitcache.cli import app
from vivitcache.extract import run_extract
from vivitcache.store import StoreDamageError, StoreError, StoreWriter, TokenStore, verify_store
from vivitcache.store.index import index_state
from vivitcache.store.writer import plan_parts

runner = CliRunner()


def snapshot(store: TokenStore) -> dict:
    """Everything the index answers, per video."""
    return {v: (store.label(v), store.location(v), store.source(v), store.fps(v)) for v in store.ids()}


def indexed_store(path: Path) -> Path:
    writer, _ = build_store(path, videos_per_part=3)
    writer.consolidate()
    assert index_state(path) == "fresh"
    return path


def flip_bit(path: Path, byte: int = 0, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


# ---- item 2: the index is checked ------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["label", "offset", "id_bytes", "hash_row"])
def test_a_flipped_bit_in_an_index_column_is_never_an_answer(tmp_path, column, caplog):
    path = indexed_store(tmp_path / "s.zarr")
    reference = snapshot(TokenStore.open(path))
    (segment,) = [p for p in (path / "index").iterdir() if p.is_dir()]
    flip_bit(segment / column / "c" / "0")
    with caplog.at_level(logging.WARNING):
        store = TokenStore.open(path)
    assert snapshot(store) == reference  # read from the commit records instead
    assert any("index" in r.getMessage() and "vivitcache index" in r.getMessage() for r in caplog.records)
    assert index_state(path) == "damaged"
    for quick in (True, False):
        problems = verify_store(path, quick=quick)
        assert any(f"{column}/c/0" in p and "crc32c" in p for p in problems), problems
    result = runner.invoke(app, ["verify", str(path), "--quick"])
    assert result.exit_code == 1 and "vivitcache index" in result.output
    assert runner.invoke(app, ["index", str(path)]).exit_code == 0  # rebuilds from the commit records
    assert index_state(path) == "fresh" and verify_store(path) == [] and snapshot(TokenStore.open(path)) == reference


def test_a_truncated_column_or_an_unreadable_manifest_is_a_damaged_index(tmp_path):
    path = indexed_store(tmp_path / "s.zarr")
    reference = snapshot(TokenStore.open(path))
    (segment,) = [p for p in (path / "index").iterdir() if p.is_dir()]
    chunk = segment / "num_frames" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    assert snapshot(TokenStore.open(path)) == reference and any("num_frames" in p for p in verify_store(path))
    (path / "index" / "zarr.json").write_text("{not json")
    assert snapshot(TokenStore.open(path)) == reference and index_state(path) == "damaged"
    assert any("index/zarr.json" in p for p in verify_store(path, quick=True))


# ---- item 3: a vanished part is damage ----------------------------------------------------------------------------
def test_a_part_the_index_lists_but_parts_lacks_is_refused_and_verify_fails(tmp_path):
    path = indexed_store(tmp_path / "s.zarr")
    part = TokenStore.open(path).location("v04")[0]
    shutil.rmtree(path / "parts" / part)
    with pytest.raises(StoreDamageError, match=f"part {part}: .* is missing, but the index lists it") as err:
        TokenStore.open(path)
    assert "\n" not in str(err.value)
    for quick in (True, False):
        assert any(part in p and "missing" in p for p in verify_store(path, quick=quick))
    result = runner.invoke(app, ["info", str(path), "--json"])  # info still describes what is there
    assert result.exit_code == 0 and part in result.output
    assert TokenStore.open(path, strict=False).problems[0].startswith(f"part {part}")


def test_a_plain_rerun_of_extract_recreates_a_vanished_part(tmp_path, extracted):  # noqa: F811
    cfg, root = extracted
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "good.zarr", store)
    part = TokenStore.open(store).part_ids()[0]
    shutil.rmtree(store / "parts" / part)
    assert any(part in p for p in verify_store(store, quick=True))
    result = runner.invoke(app, ["train", "--store", str(store), "--init", "none", "--frames", "4", "--epochs", "1",
                                 "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and f"part {part}" in result.output.strip().splitlines()[-1]
    summary = run_extract(replace(cfg, store=str(store)))  # no --repair
    assert summary["done"] == 4 and summary["repaired_parts"] == [part]
    assert verify_store(store) == [] and index_state(store) == "fresh"
    assert_same_store(store, root / "good.zarr")


def test_a_planned_part_not_in_parts_fails_verify(tmp_path, extracted):  # noqa: F811
    cfg, root = extracted
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "good.zarr", store)
    part = TokenStore.open(store).part_ids()[1]
    shutil.rmtree(store / "parts" / part)
    shutil.rmtree(store / "index")  # nothing but the plan remembers the part
    assert len(TokenStore.open(store)) == 4
    problems = verify_store(store, quick=True)
    assert any(f"part {part}: planned (4 videos)" in p for p in problems) and "re-run" in problems[-1]
    run_extract(replace(cfg, store=str(store)))
    assert verify_store(store) == [] and len(TokenStore.open(store)) == 8



# ---- item 7: copies -----------------------------------------------------------------------------------------------
def tree(path: Path) -> dict:
    """{relative path: (size, mtime_ns)} of every file and folder: what a run that writes nothing leaves alone."""
    out = {}
    for d, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.stat(os.path.join(d, name))
            out[os.path.relpath(os.path.join(d, name), path)] = (st.st_size if name in files else 0, st.st_mtime_ns)
    return out


def test_a_copied_store_keeps_a_fresh_index_and_open_reads_no_record(tmp_path, monkeypatch):
    import vivitcache.store.index as index

    path = indexed_store(tmp_path / "s.zarr")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)  # new inodes, new folder mtimes: `cp -r`
    assert index_state(copy) == "fresh"
    read = []
    real = index.read_commit_digest
    monkeypatch.setattr(index, "read_commit_digest", lambda root, part: (read.append(part), real(root, part))[1])
    store = TokenStore.open(copy)
    assert read == [] and snapshot(store) == snapshot(TokenStore.open(path))


def test_a_copied_finished_store_runs_extract_writing_nothing_also_read_only(tmp_path, extracted):  # noqa: F811
    cfg, root = extracted
    copy = tmp_path / "copy.zarr"
    shutil.copytree(root / "good.zarr", copy)
    before = tree(copy)
    summary = run_extract(replace(cfg, store=str(copy)))
    assert summary["done"] == 0 and summary["skipped"] == 8 and tree(copy) == before  # could have been read-only
    mount = tmp_path / "ro.zarr"
    mount.mkdir()
    if subprocess.run(["mount", "--bind", str(copy), str(mount)], capture_output=True).returncode != 0:
        return  # the tree comparison above is the same rule without root
    try:
        assert subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode == 0
        summary = run_extract(replace(cfg, store=str(mount)))
        assert summary["done"] == 0 and summary["skipped"] == 8 and verify_store(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_the_repair_hint_names_the_verified_store_with_absolute_paths(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    argv = ["/venv/bin/vivitcache", "extract", "--data", "labels.csv", "--store=s.zarr", "--checkpoint", "runs/one",
            "--model", "vit-b"]
    writer = StoreWriter.create_or_open(made / "s.zarr", FINGERPRINT, make_layout(), CLASSES,
                                        {"argv": argv, "cwd": str(made)})
    write_part(writer, plan_parts(["v00", "v01"], 2)[0])
    moved = tmp_path / "elsewhere" / "moved.zarr"
    shutil.copytree(made / "s.zarr", moved)
    (part,) = TokenStore.open(moved).part_ids()
    (moved / "parts" / part / "tokens" / "c" / "0" / "0" / "0").unlink()
    hint = verify_store(moved, quick=True)[-1]
    assert (f"vivitcache extract --data {made / 'labels.csv'} --store {moved} --checkpoint {made / 'runs/one'} "
            "--model vit-b --repair") in hint


# ---- item 4: the failure ledger retries changed sources -----------------------------------------------------------
def test_a_ledgered_video_is_retried_when_its_source_changed_and_with_retry_failed(tmp_path, make_video):
    from vivitcache.extract import ExtractConfig

    data = tmp_path / "data"
    make_video(data / "good.mp4", frames=4)
    (data / "broken.mp4").write_bytes(b"not a video at all")
    (data / "labels.csv").write_text("path,label\ngood.mp4,a\nlate.mp4,a\nbroken.mp4,b\n")  # late.mp4: not copied yet
    cfg = ExtractConfig(data=str(data / "labels.csv"), store=str(tmp_path / "s.zarr"), model="vit-ti", img_size=32,
                        patch_size=8, spatial_depth=1, workers=0, progress=False, videos_per_part=2)

    def ledger():
        return sorted(f["id"] for f in TokenStore.open(cfg.store).failures())

    first = run_extract(cfg)
    assert first["done"] == 1 and ledger() == ["broken", "late"]
    again = run_extract(cfg)  # nothing changed: nothing retried
    assert again["retried"] == 0 and again["done"] == 0 and again["skipped"] == 3
    shutil.copy(data / "good.mp4", data / "late.mp4")  # the copy arrived
    third = run_extract(cfg)
    assert third["retried"] == 1 and third["done"] == 1 and ledger() == ["broken"]
    assert run_extract(cfg)["retried"] == 0  # broken.mp4 unchanged: not retried
    forced = run_extract(replace(cfg, retry_failed=True))
    assert forced["retried"] == 1 and forced["failed"] == 1 and ledger() == ["broken"]
    assert run_extract(cfg)["retried"] == 0  # its newest ledger entry (of the retry) is what counts now
    shutil.copy(data / "good.mp4", data / "broken.mp4")  # fixed in place
    fixed = run_extract(cfg)
    assert fixed["retried"] == 1 and fixed["done"] == 1 and ledger() == []
    store = TokenStore.open(cfg.store)
    assert store.ids() == ["broken", "good", "late"] and store.duplicates == [] and verify_store(cfg.store) == []
    result = runner.invoke(app, ["extract", "--help"], terminal_width=200)
    assert "--retry-failed" in result.output


# ---- item 6: claims -------------------------------------------------------------------------------------------------
def foreign_claim(path: Path, part: str, mtime: float, host="elsewhere", pid=4242) -> Path:
    claim = path / "claims" / f"{part}.claim"
    claim.parent.mkdir(exist_ok=True)
    claim.write_text(json.dumps({"part_id": part, "host": host, "pid": pid, "token": "t"}))
    os.utime(claim, (mtime, mtime))
    return claim


def test_a_heartbeat_in_the_future_goes_stale_once_seen_unchanged_for_the_timeout(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    timeout = 1.0
    claim = foreign_claim(writer.path, "p1", time.time() + 3600)  # the other host's clock is an hour ahead
    first = writer.claim("p1", timeout_s=timeout)
    assert not first.acquire() and first.holder["host"] == "elsewhere" and first.holder["age_s"] < -3000
    time.sleep(timeout + 0.3)
    os.utime(claim, (time.time() + 3700,) * 2)  # a live skewed writer: its heartbeat moved
    assert not writer.claim("p1", timeout_s=timeout).acquire()
    time.sleep(timeout + 0.3)  # now unchanged for longer than the timeout: its writer is gone
    taker = writer.claim("p1", timeout_s=timeout)
    assert taker.acquire() and taker.took_over["host"] == "elsewhere"
    taker.release()
    assert sorted(p.name for p in (writer.path / "claims").iterdir()) == ["zarr.json"]


def test_an_odd_claim_path_is_one_store_error(tmp_path):
    writer = StoreWriter.create_or_open(tmp_path / "s.zarr", FINGERPRINT, make_layout(), CLASSES)
    (writer.path / "claims" / "p1.claim").mkdir(parents=True)
    with pytest.raises(StoreError, match="p1.claim: a claim must be a plain file, this is a folder"):
        writer.claim("p1").acquire()
    os.symlink("nowhere", writer.path / "claims" / "p2.claim")
    with pytest.raises(StoreError, match="this is a symlink"):
        writer.claim("p2").acquire()
    shutil.rmtree(writer.path / "claims")
    (writer.path / "claims").write_text("a file where the claims folder goes")
    with pytest.raises(StoreError, match="cannot claim part p3"):
        writer.claim("p3").acquire()


def extract_args(cfg, store: Path) -> list[str]:
    return ["extract", "--data", cfg.data, "--store", str(store), "--model", "vit-ti", "--img-size", "32",
            "--patch-size", "8", "--spatial-depth", "2", "--workers", "0", "--batch-size", "7",
            "--videos-per-part", "4"]


def test_extract_names_the_claims_it_skips_and_claim_timeout_takes_them_over(tmp_path, extracted):  # noqa: F811
    cfg, root = extracted
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "good.zarr", store)
    part = TokenStore.open(store).part_ids()[0]
    shutil.rmtree(store / "parts" / part)  # work for the next run
    (store / "claims" / f"{part}.claim").mkdir(parents=True)
    result = runner.invoke(app, extract_args(cfg, store), terminal_width=400)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "a claim must be a plain file" in lines[0], result.output
    assert "Traceback" not in result.output
    (store / "claims" / f"{part}.claim").rmdir()
    foreign_claim(store, part, time.time() - 2)
    result = runner.invoke(app, extract_args(cfg, store), terminal_width=400)
    assert result.exit_code == 0, result.output
    assert re.search(f"part {part} claimed by host elsewhere pid 4242, heartbeat [2-9] s ago", result.output)
    assert "--claim-timeout 120 s" in result.output
    result = runner.invoke(app, extract_args(cfg, store) + ["--claim-timeout", "1"], terminal_width=400)
    assert result.exit_code == 0 and "done 4" in result.output, result.output
    assert verify_store(store) == []
    bad = runner.invoke(app, extract_args(cfg, store) + ["--claim-timeout", "0"], terminal_width=400)
    assert bad.exit_code == 2 and "--claim-timeout 0.0: must be a positive number" in bad.output


# ---- item 9 (store side): `vivitcache index` on a read-only store, a class subset ---------------------------------
def test_vivitcache_index_writes_nothing_while_fresh_and_a_failed_write_is_one_line(tmp_path, monkeypatch):
    import errno

    import vivitcache.store.index as index

    path = indexed_store(tmp_path / "s.zarr")
    before = tree(path)
    result = runner.invoke(app, ["index", str(path)])
    assert result.exit_code == 0 and "nothing to write" in result.output and tree(path) == before
    (segment,) = [p for p in (path / "index").iterdir() if p.is_dir()]
    flip_bit(segment / "label" / "c" / "0")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path / "index"))

    monkeypatch.setattr(index, "write_segment", read_only)
    result = runner.invoke(app, ["index", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "read-only file system" in lines[0], result.output
    monkeypatch.undo()
    result = runner.invoke(app, ["index", str(path)])
    assert result.exit_code == 0 and index_state(path) == "fresh"


def test_annotations_lacking_some_classes_are_refused_naming_labels(tmp_path, extracted):  # noqa: F811
    cfg, root = extracted
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "good.zarr", store)
    classes = TokenStore.open(store).classes
    rows = (Path(cfg.data).read_text().splitlines())
    subset = tmp_path / "subset.csv"
    subset.write_text("\n".join(rows[:4]) + "\n")  # the header and 3 videos: fewer classes than the store
    args = extract_args(cfg, store)
    args[args.index("--data") + 1] = str(subset)
    result = runner.invoke(app, args, terminal_width=400)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--labels" in lines[0], result.output
    assert "your annotations lack" in lines[0]
    (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    result = runner.invoke(app, args + ["--labels", str(tmp_path / "classes.txt")], terminal_width=400)
    assert result.exit_code == 0 and "done 0, skipped 3" in result.output, result.output
