"""What a store may trust, and what it checks (issue 19, the store side): index columns are checked (crc32c) at
open and by `verify`; a part the index or plan lists but `parts/` lacks is damage; parts are known by name and the
sha256 of their record (a copied store keeps a fresh index); the failure ledger retries changed sources; claims
with a heartbeat in the future go stale; odd claim paths and read-only stores are one error line."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_extract import assert_same_store
from test_store import CLASSES, FINGERPRINT, build_store, make_layout, write_part
from test_store_extract import extracted  # noqa: F401 — the module-scoped fixture: 8 videos, 2 parts
from vivitcache.cli import app
from vivitcache.extract import run_extract
from vivitcache.store import StoreDamageError, StoreWriter, TokenStore, verify_store
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
