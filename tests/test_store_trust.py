"""What a store may trust, and what it checks (issue 19, the store side): index columns are checked (crc32c) at
open and by `verify`; a part the index or plan lists but `parts/` lacks is damage; parts are known by name and the
sha256 of their record (a copied store keeps a fresh index); the failure ledger retries changed sources; claims
with a heartbeat in the future go stale; odd claim paths and read-only stores are one error line."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_extract import assert_same_store
from test_store import build_store
from test_store_extract import extracted  # noqa: F401 — the module-scoped fixture: 8 videos, 2 parts
from vivitcache.cli import app
from vivitcache.extract import run_extract
from vivitcache.store import StoreDamageError, TokenStore, verify_store
from vivitcache.store.index import index_state

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

