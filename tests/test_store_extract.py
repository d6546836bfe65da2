"""Extraction against a shared store: two live runs with other annotations and --videos-per-part commit every
video once; damage of every kind is found by train/eval/predict and verify and repaired by one `extract --repair`;
changed labels are recorded; a finished store is left untouched; a full disk is one error line. Tiny models."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_extract import TINY, assert_same_store, synth_rows, tiny_cfg, write_csv
from test_store_scale import _damage
from vivitcache.cli import app
from vivitcache.extract import run_extract
from vivitcache.store import StoreDamageError, TokenStore, verify_store

runner = CliRunner()

LOGGED_EXTRACT = textwrap.dedent("""
    import json, os, sys, time
    from vivitcache.store.writer import PartWriter
    begin, log, delay = PartWriter.begin_video, sys.argv[2], float(sys.argv[3])

    def logged_begin(self, *a, **k):  # one line per part actually extracted (its first video), then slow it down
        if not self._videos and not self._failures and self._current is None and not getattr(self, "_logged", 0):
            self._logged = 1
            with open(log, "a") as f:
                f.write(f"{self.part_id} {os.getpid()}\\n")
        begin(self, *a, **k)
        time.sleep(delay)

    PartWriter.begin_video = logged_begin
    from vivitcache.extract import ExtractConfig, run_extract
    print(json.dumps(run_extract(ExtractConfig(**json.loads(sys.argv[1])))))
""")


def _start(cfg, log: Path, delay: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOGGED_EXTRACT, json.dumps(asdict(cfg)), str(log), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_live_extractions_with_other_annotations_commit_every_video_once(tmp_path, synth_dataset):
    rows = synth_rows(synth_dataset, 16)
    subset = write_csv(tmp_path / "subset.csv", rows[:8] + rows[8::2])  # every class (the store's classes agree)
    everything = write_csv(tmp_path / "all.csv", rows)
    store, log = tmp_path / "shared.zarr", tmp_path / "parts.log"
    a = _start(tiny_cfg(subset, store, videos_per_part=3), log, delay=0.4)
    deadline = time.monotonic() + 120
    while not list((store / "parts").glob("*/zarr.json")) if (store / "parts").is_dir() else True:
        assert a.poll() is None, a.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "A published no part within 120 s"
        time.sleep(0.05)
    b = _start(tiny_cfg(everything, store, videos_per_part=4), log, delay=0.0)  # started once A published a part
    for proc in (a, b):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    extracted = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert extracted and max(extracted.values()) == 1  # no part extracted twice
    assert verify_store(store) == []
    s = TokenStore.open(store)
    assert len(s) == 16 and s.duplicates == [] and len(s.part_ids()) == len(extracted)
    run_extract(tiny_cfg(everything, tmp_path / "alone.zarr", videos_per_part=4))
    assert_same_store(store, tmp_path / "alone.zarr", exact=False)  # other batches: equal up to fp rounding
    again = run_extract(tiny_cfg(everything, store, videos_per_part=5))  # later run, other size: nothing to do
    assert again["done"] == 0 and again["skipped"] == 16


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, synth_dataset):
    """A store of 8 videos in 2 parts (16-frame shards: 2 per video), and its annotations."""
    root = tmp_path_factory.mktemp("damage")
    data = write_csv(root / "labels.csv", synth_rows(synth_dataset, 8))
    cfg = tiny_cfg(data, root / "good.zarr", videos_per_part=4, shard_frames=16, chunk_frames=8)
    run_extract(cfg)
    return cfg, root


@pytest.mark.parametrize("kind", ["flipped byte", "truncated shard", "deleted shard", "deleted part record",
                                  "deleted frame_times chunk"])
def test_each_damage_is_found_and_one_extract_repair_restores_the_tokens(tmp_path, extracted, kind):
    cfg, root = extracted
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(root / "good.zarr", damaged)
    part = TokenStore.open(damaged).part_ids()[0]
    _damage(damaged, part, kind)
    with pytest.raises(StoreDamageError, match=f"part {part}"):
        store = TokenStore.open(damaged)
        for vid in store.ids():
            store.video(vid), store.frame_times(vid)
    problems = verify_store(damaged)
    assert any(part in p for p in problems) and "--repair" in problems[-1]
    summary = run_extract(replace(cfg, store=str(damaged), repair=True))
    assert summary["repaired_parts"] == [part] and summary["done"] == 4
    assert verify_store(damaged) == []
    assert_same_store(damaged, root / "good.zarr")  # bit-identical to the undamaged store
    assert [p.name.split(".")[0] for p in (damaged / "damaged").iterdir() if p.is_dir()] == [part]


def test_a_plain_rerun_redoes_a_part_whose_record_was_deleted_even_when_indexed(tmp_path, extracted):
    cfg, root = extracted
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "good.zarr", store)
    part = TokenStore.open(store).part_ids()[1]
    (store / "parts" / part / "zarr.json").unlink()
    summary = run_extract(replace(cfg, store=str(store)))  # the first re-run, no --repair
    assert summary["repaired_parts"] == [part] and summary["done"] == 4
    assert_same_store(store, root / "good.zarr")


@pytest.mark.parametrize("kind", ["deleted shard", "flipped byte"])
def test_train_eval_predict_fail_loudly_naming_the_damaged_part(tmp_path, extracted, kind):
    cfg, root = extracted
    train = ["train", "--init", "none", "--frames", "4", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    result = runner.invoke(app, train + ["--store", str(root / "good.zarr"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(root / "good.zarr", damaged)
    store = TokenStore.open(damaged)
    part = store.part_ids()[0]
    vid = next(v for v in store.ids() if store.location(v)[0] == part)
    _damage(damaged, part, kind)
    commands = [train + ["--store", str(damaged), "--out", str(tmp_path / "r2"), "--in-memory"]]
    if kind == "deleted shard":  # found before any token of the part is used, whichever frames a run reads
        commands += [train + ["--store", str(damaged), "--out", str(tmp_path / "r1")],
                     ["eval", "--store", str(damaged), "--checkpoint", str(tmp_path / "run"), "--split", "all"],
                     ["predict", vid, "--store", str(damaged), "--checkpoint", str(tmp_path / "run")]]
    # (a flipped byte is found when its chunk is read, by its crc32c: --in-memory reads every chunk, a clip may not)
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert f"part {part}" in result.output and "tokens/c/1/0/0" in result.output, result.output
        assert result.output.strip().splitlines()[-1].startswith("error:") and "Traceback" not in result.output
    result = runner.invoke(app, ["verify", str(damaged)])
    assert result.exit_code == 1 and "--repair" in result.output
    result = runner.invoke(app, ["verify", str(damaged), "--quick"])
    assert result.exit_code == (1 if kind == "deleted shard" else 0)  # a flipped byte keeps every size


def test_a_rerun_records_changed_labels(tmp_path, synth_dataset):
    rows = synth_rows(synth_dataset, 10)  # every class once, two of them twice: a relabel keeps the class list
    data = write_csv(tmp_path / "labels.csv", rows)
    cfg = tiny_cfg(data, tmp_path / "s.zarr", videos_per_part=4)
    run_extract(cfg)
    path, old = rows[8]
    new = next(label for _, label in rows if label != old)
    write_csv(data, [(p, new if p == path else label) for p, label in rows])
    summary = run_extract(cfg)
    assert summary["labels_updated"] == 1 and summary["done"] == 0
    store = TokenStore.open(cfg.store)
    (vid,) = [v for v in store.ids() if store.source(v) == path]
    assert store.classes[store.label(vid)] == new
    assert verify_store(cfg.store) == []
    assert run_extract(cfg)["labels_updated"] == 0


def _files(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*")}


def test_a_finished_store_is_left_untouched_by_a_rerun(tmp_path, extracted):
    cfg, root = extracted
    store = tmp_path / "s.zarr"
    shutil.copytree(root / "good.zarr", store)
    run_extract(replace(cfg, store=str(store)))  # the copy's index must be fresh (a finished store)
    before = _files(store)
    summary = run_extract(replace(cfg, store=str(store)))
    assert summary["done"] == 0 and summary["skipped"] == 8
    assert _files(store) == before  # nothing written: a read-only store would serve this re-run too


def test_disk_full_during_extract_is_one_error_line(tmp_path, synth_dataset, monkeypatch):
    from vivitcache.store.writer import PartWriter

    data = write_csv(tmp_path / "labels.csv", synth_rows(synth_dataset, 2))

    def full(self, n):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.staging / "tokens"))

    monkeypatch.setattr(PartWriter, "_write_shard", full)
    args = ["extract", "--data", str(data), "--store", str(tmp_path / "s.zarr"), "--workers", "0",
            "--batch-size", "7", *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()  # the progress bars, then one error line
    assert lines[-1].startswith("error:") and "disk full" in lines[-1] and "Traceback" not in result.output
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not [p for p in (tmp_path / "s.zarr" / "staging").iterdir() if p.is_dir()]  # nothing half-written


def test_a_finished_store_on_a_read_only_file_system_serves_extract_verify_info(tmp_path, extracted):
    import subprocess as sp

    cfg, root = extracted
    store, mount = tmp_path / "s.zarr", tmp_path / "ro.zarr"
    shutil.copytree(root / "good.zarr", store)
    run_extract(replace(cfg, store=str(store)))  # finished: index fresh
    mount.mkdir()
    if sp.run(["mount", "--bind", str(store), str(mount)], capture_output=True).returncode != 0:
        pytest.skip("needs bind mounts (root): the file-level test above covers the same rule")
    try:
        if sp.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        with pytest.raises(OSError):
            (mount / "probe").write_text("x")
        summary = run_extract(replace(cfg, store=str(mount)))
        assert summary["done"] == 0 and summary["skipped"] == 8
        assert verify_store(mount) == [] and runner.invoke(app, ["info", str(mount)]).exit_code == 0
        assert_same_store(mount, root / "good.zarr")
    finally:
        sp.run(["umount", str(mount)], capture_output=True)
