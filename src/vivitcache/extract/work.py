"""What an extraction run does to a store before and around the model: storage layout, the recorded part plan,
label updates, damage checks and `--repair`.

Work = the parts of the store's plan (`store/plan.py`) that hold a video of this run's annotations and are not
committed. The plan is extended, never re-cut, for ids it does not know, so runs with other annotations or another
`--videos-per-part`, concurrent or later, always agree on every video's part. A part planned by another run is
extracted whole, from the sources its plan record names (a video this run's annotations also list uses this run's
record). Claims (`store/claims.py`) keep two live runs off the same part; see `run_part`.

The failure ledger is not for ever: a ledgered video of this run's annotations is re-planned into a new part
(`store.plan.replan`) when its source changed since it failed (size, mtime or inode, or now there or gone), and
always with `--retry-failed`.
"""

from __future__ import annotations

import errno
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from vivitcache.data.annotations import VideoRecord
from vivitcache.store import StoreLayout, StoreWriter
from vivitcache.store.inspect import find_damage
from vivitcache.store.writer import shard_frames_for
from vivitcache.store.index import open_index, publish_labels, read_commit
from vivitcache.store.layout import PARTS, STAGING, StoreError, source_stat
from vivitcache.store.plan import extend_plan, read_plan, record_parts, replan
from vivitcache.store.reader import read_root

log = logging.getLogger(__name__)


def storage_layout(cfg, layout: StoreLayout) -> StoreLayout:
    """The layout's shard length: as configured, an existing store's own (resuming keeps its files), or as many
    whole chunks as fit the shard byte target (`store.writer.SHARD_TARGET_BYTES`)."""
    if cfg.shard_frames is not None:
        return layout
    path = Path(os.path.abspath(cfg.store))
    if cfg.chunk_frames is None and (path / "zarr.json").is_file():
        try:
            have = StoreLayout.from_dict(read_root(path)["layout"])
        except StoreError:
            have = None  # not a store we can read: create_or_open says why
        if have is not None:
            return replace(layout, shard_frames=have.shard_frames, chunk_frames=have.chunk_frames)
    return replace(layout, shard_frames=shard_frames_for(layout.frame_bytes, layout.chunk_frames))


@dataclass
class Work:
    """The parts one run extracts, and what it found in the store."""

    parts: list[tuple[str, list[VideoRecord]]] = field(default_factory=list)
    """(part id, its videos in id order), for every part to extract."""
    videos: int = 0
    """Videos in those parts."""
    skipped: int = 0
    """Videos of the annotations already committed (with tokens or in the failure ledger)."""
    labels_updated: int = 0
    """Committed videos whose label this run's annotations changed (recorded; the tokens stay)."""
    retried: int = 0
    """Ledgered videos planned again by this run (source changed, or `--retry-failed`)."""
    repaired: list[str] = field(default_factory=list)
    """Damaged parts moved aside (to `damaged/`), re-extracted by this run: any run redoes a part whose record is
    gone or unreadable; `--repair` also reads every chunk back (checksums) and redoes what fails."""


def _entry(record: VideoRecord) -> dict:
    return {"id": record.id, "path": record.path, "label": record.label, "split": record.split}


def find_work(store: StoreWriter, records: list[VideoRecord], cfg) -> Work:
    """Find (and with `cfg.repair` move aside) damaged parts, record changed labels, extend the plan, list the work.

    Writes nothing to a store that has nothing to do (a finished store may be read-only).
    """
    work = Work()
    mine = {r.id: r for r in records}
    view = open_index(store.path, strict=False)
    legacy: dict[str, list[dict]] = {}  # damaged parts the plan does not know: re-planned as they were
    if cfg.repair:  # every check, checksums included
        damaged = find_damage(store.path, checksums=True)[1]
    else:  # cheap: a part whose record is unreadable or gone is redone on any re-run
        damaged = view.damaged_parts | _missing_records(store.path, view)
    if damaged:
        plan = read_plan(store.path)
        for part_id in sorted(damaged):
            if part_id not in plan.parts:
                legacy[part_id] = _videos_of(store.path, view, part_id)
            store.move_aside(part_id)
            work.repaired.append(part_id)
        log.warning("%d damaged or missing part(s) (damaged ones moved aside to %s/damaged/); re-extracting their "
                    "videos", len(damaged), store.path)
        view = open_index(store.path, strict=False)
    retry = _ledger_to_retry(store.path, view, mine, cfg.retry_failed)
    committed = (set(view.ids()) | {f["id"] for f in view.failures()}) - set(retry)
    # Labels are data about a video, not its tokens: a changed label is recorded, never silently kept stale.
    have = view.labels()
    changed = {i: r.label for i, r in mine.items() if i in have and have[i] != r.label}
    if changed:
        publish_labels(store.path, changed, store.path / STAGING)
        work.labels_updated = len(changed)
    if legacy:  # re-planned exactly as they were, so their videos stay together under the same part ids
        record_parts(store.path, legacy)
    if retry:
        replan(store.path, [_entry(mine[i]) for i in sorted(retry)], cfg.videos_per_part, retry)
        work.retried = len(retry)
    plan, _ = extend_plan(store.path, [_entry(r) for r in records if r.id not in committed], cfg.videos_per_part,
                          done=committed)
    wanted = sorted({plan.part_of[i] for i in mine if i in plan.part_of} - set(view.part_ids()))
    work.skipped = sum(1 for i in mine if i in committed)
    for part_id in wanted:
        videos = [mine.get(e["id"]) or VideoRecord(e["id"], e["path"], int(e["label"]), e.get("split", "train"))
                  for e in plan.parts[part_id]]
        work.parts.append((part_id, sorted(videos, key=lambda r: r.id)))
        work.videos += len(videos)
    return work


def _ledger_to_retry(root: Path, view, mine: dict[str, VideoRecord], always: bool) -> dict[str, str]:
    """{id: the committed part it failed in} of the ledgered videos of `mine` to extract again: all of them when
    `always`, else those whose source is not what the ledger saw (another path, or another size, mtime or inode;
    an entry of an older vivitcache, without a stat, only with `always`). The entry that counts is the one of the
    part the plan has the video in now (a retried video that failed again has its newest entry there)."""
    failures = [f for f in view.failures() if f["id"] in mine]
    plan = read_plan(root) if failures else None
    committed = set(view.part_ids())
    records: dict[str, dict] = {}
    out = {}
    for failure in failures:
        vid = failure["id"]
        part = plan.part_of.get(vid, failure["part_id"])
        if part not in committed:
            continue  # planned again and not yet made: the plan's work lists that part already
        if not always:
            if part not in records:
                records[part] = {f["id"]: f for f in read_commit(root, part)["failures"]}
            entry = records[part].get(vid)
            if entry is None or "source_stat" not in entry:
                continue
            if entry["source"] == mine[vid].path and entry["source_stat"] == source_stat(mine[vid].path):
                continue
        out[vid] = part
    return out


def _missing_records(root: Path, view) -> set[str]:
    """Indexed parts whose commit record is gone (one stat per part: cheap even at 10⁶ videos)."""
    return {p for p in view.part_ids() if not (root / PARTS / p / "zarr.json").is_file()}


def _videos_of(root: Path, view, part_id: str) -> list[dict]:
    """A damaged part's videos and ledger entries, from its record if readable, else from the index."""
    try:
        commit = read_commit(root, part_id)
        rows = [(v["id"], v["source"], v["label"]) for v in commit["videos"]]
        rows += [(f["id"], f["source"], -1) for f in commit["failures"]]
    except StoreError:
        rows = view.part_videos(part_id)
    return [{"id": i, "path": s, "label": int(lb), "split": "train"} for i, s, lb in sorted(rows)]


DISK_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}


@contextmanager
def disk_errors(store_path):
    """A full disk, an exceeded quota or a read-only file system while writing the store become one StoreError line
    (committed parts are intact: a part is published only once complete; free space and re-run)."""
    try:
        yield
    except OSError as e:
        why = DISK_ERRNOS.get(e.errno)
        if why is None:
            raise
        raise StoreError(f"{store_path}: {why} while writing ({e.strerror}: {e.filename or ''}); committed parts "
                         "are intact: free space (or make it writable) and re-run to finish") from None
