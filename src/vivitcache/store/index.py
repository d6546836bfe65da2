"""The columnar index: video id → part, offset, frames, label, fps, source, as memory-mapped zarr columns.

```
index/zarr.json            group; attributes["vivitcache_index"] = {format: 2, segments: [name, ...], labels_seq}
index/<segment>/zarr.json  group; attributes["vivitcache_index_segment"] = {parts, videos, unique, duplicates,
                           failures, columns: {name: {dtype, n} | {offsets, bytes}}}
index/<segment>/<column>/  one-chunk zarr arrays (see `columns.py`):
    videos, sorted by (id, part):  id, part (row in this segment's parts), offset, num_frames, label, fps, source
    lookup:                        id_hash (uint64, sorted), hash_row (row of each hash)
    parts:                         part_id, frames, videos, failures, disk_bytes, files, digest (sha256 of record)
    failure ledger:                fail_id, fail_source, fail_error, fail_part
```

Committed parts never change (published once, by rename), so a segment built from some parts stays true while
those parts exist. `update_index` is incremental: it reads the commit records of parts no segment covers and writes
them as one new segment (or, past `MAX_SEGMENTS`, merges every segment into one, from the columns, without reading
commit records again). `open_index` maps the segments (checking every column's crc32c), lists `parts/` once, and
reads the commit records of the few parts published since (an in-memory segment), so an index is never wrong, only
slower when stale. Lookup by id: binary search of the id's 64-bit hash (`np.searchsorted`), then the id compared.

What the index trusts and what it checks:
- A part is known by its name and the sha256 of its commit record (`digest`), never by inode or mtime, so a copy of
  the store (`cp -r`, rsync, an object store) keeps a fresh index. A reader compares the digest when it first
  touches a part (`TokenStore._check_part`); a part re-published under the same id (`extract --repair`, or a plain
  re-run re-creating a vanished part) is re-read by the `update_index` of the run that published it (`reread`).
- A part the index lists but `parts/` lacks is damage (deleted, or left out of a copy): a strict open refuses,
  naming it; the index keeps listing it until it is re-created or `vivitcache index STORE` rebuilds from what is there.
- A damaged index (a column failing its crc32c, a missing or short column file, an unreadable segment record) is
  not used: the view reads every commit record instead, with a warning, and `verify` fails until
  `vivitcache index STORE` rebuilds it.

Labels are data about a video, not its tokens: a re-run whose annotations give another label publishes a label
record `labels/<seq>/zarr.json` (`publish_labels`); later records win, and the index applies them.

A store indexed by an older vivitcache (`index/zarr.json` with the format-1 JSON record) still opens: the old record
is ignored and every commit record is read; `vivitcache index STORE` writes the columnar index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from vivitcache.provenance import now_iso
from vivitcache.store.columns import (
    ColumnDamageError,
    StringColumn,
    encode_strings,
    map_column,
    map_strings,
    write_column,
    write_strings,
)
from vivitcache.lease import new_token
from vivitcache.store.layout import (
    COMMIT_KEY,
    INDEX,
    INDEX_KEY,
    META,
    PART_ID_PATTERN,
    PARTS,
    StoreDamageError,
    StoreError,
    group_meta,
    read_group_attrs,
    write_json_atomic,
)

FORMAT = 2
"""Version of the index layout above (format 1 was one JSON record of every commit)."""
SEGMENT_KEY = "vivitcache_index_segment"
LABELS = "labels"
LABELS_KEY = "vivitcache_labels"
COMMIT_FIELDS = ("part_id", "videos", "failures", "frames", "bytes", "tokens_sha256")
VIDEO_FIELDS = ("id", "label", "offset", "num_frames", "source", "fps")
MAX_SEGMENTS = 4
"""More segments than this are merged into one at the next `update_index`."""
STRINGS = ("id", "source", "part_id", "digest", "fail_id", "fail_source", "fail_error")
REBUILD = "run `vivitcache index {root}` to rebuild it"

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ commit records
def part_listing(root: Path) -> set[str]:
    """Folder names under `parts/` that can be part ids (one readdir)."""
    try:
        return {name for name in os.listdir(root / PARTS) if PART_ID_PATTERN.match(name)}
    except FileNotFoundError:
        raise StoreError(f"{root}: no {PARTS}/ folder (not a vivitcache store?)") from None


def part_names(root: Path) -> list[str]:
    """Folder names under `parts/` that can be part ids, sorted."""
    return sorted(part_listing(root))


def read_commit(root: Path, part_id: str) -> dict:
    """The commit record of one part, checked for consistency; StoreDamageError if missing, malformed or edited so
    that its videos do not tile its frames (a hand-edited `num_frames` must not become an IndexError later)."""
    return read_commit_digest(root, part_id)[0]


def read_commit_digest(root: Path, part_id: str) -> tuple[dict, str]:
    """(commit record, sha256 of its file): the digest is what the index remembers of the record, to tell an
    edited record from the one it indexed."""
    where = root / PARTS / part_id / META
    try:
        raw = where.read_bytes()
    except FileNotFoundError:
        raise StoreDamageError(f"part {part_id}: {where} is missing (the part record was deleted)") from None
    except OSError as e:
        raise StoreDamageError(f"part {part_id}: {where}: cannot be read ({e})") from None
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreDamageError(f"part {part_id}: {where}: cannot be read as JSON ({e})") from None
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    commit = attrs.get(COMMIT_KEY) if isinstance(attrs, dict) else None
    if not isinstance(commit, dict):
        raise StoreDamageError(f"part {part_id}: {where}: no {COMMIT_KEY!r} record")
    digest = hashlib.sha256(raw).hexdigest()
    missing = [k for k in COMMIT_FIELDS if k not in commit]
    if missing:
        raise StoreDamageError(f"part {part_id}: {where}: commit record lacks {', '.join(missing)}")
    if commit["part_id"] != part_id:
        raise StoreDamageError(f"part {part_id}: {where}: commit record is for part {commit['part_id']!r}")
    if not isinstance(commit["videos"], list) or not isinstance(commit["failures"], list):
        raise StoreDamageError(f"part {part_id}: {where}: commit record videos/failures are not lists")
    offset = 0
    for video in commit["videos"]:
        if not isinstance(video, dict) or any(k not in video for k in VIDEO_FIELDS):
            raise StoreDamageError(f"part {part_id}: {where}: malformed video entry {video!r}")
        n = video["num_frames"]
        if video["offset"] != offset or not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise StoreDamageError(
                f"part {part_id}: {where}: video {video['id']!r} at offset {video['offset']} with {n} frames, "
                f"expected offset {offset} and at least 1 frame (record edited by hand?)")
        offset += n
    if offset != commit["frames"]:
        raise StoreDamageError(f"part {part_id}: {where}: videos cover {offset} frames, the record says "
                               f"{commit['frames']} (record edited by hand?)")
    for failure in commit["failures"]:
        if not isinstance(failure, dict) or any(k not in failure for k in ("id", "source", "error")):
            raise StoreDamageError(f"part {part_id}: {where}: malformed failure entry {failure!r}")
    return commit, digest


def read_commits(root: Path, names: list[str] | None = None) -> tuple[dict[str, dict], dict[str, str], dict]:
    """({part_id: commit record}, {part_id: problem}, {part_id: record digest}) from the parts' own records."""
    commits, problems, digests = {}, {}, {}
    for name in part_names(root) if names is None else names:
        try:
            commits[name], digests[name] = read_commit_digest(root, name)
        except StoreError as e:
            problems[name] = str(e)
    return commits, problems, digests


def id_hash(video_id: str) -> int:
    """64-bit hash of an id (the lookup key of the index)."""
    return int.from_bytes(hashlib.blake2b(video_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


# ------------------------------------------------------------------------------------------------ labels
def read_label_records(root: Path, after: int = -1) -> tuple[int, dict[str, int]]:
    """(last seq, {id: label}) from the label records with seq > `after`; later records win."""
    try:
        names = sorted(int(n) for n in os.listdir(root / LABELS) if n.isdigit())
    except FileNotFoundError:
        return after, {}
    labels: dict[str, int] = {}
    last = after
    for seq in names:
        if seq <= after:
            continue
        try:
            labels.update(read_group_attrs(root / LABELS / f"{seq:08d}", LABELS_KEY)["labels"])
        except (StoreError, KeyError, TypeError):
            continue  # being published (rename is atomic, so only a foreign folder); ignored
        last = seq
    return last, labels


def publish_labels(root: Path, labels: dict[str, int], staging: Path) -> None:
    """Record new labels for committed videos (atomic, race-safe: each record takes the next free sequence number)."""
    if not labels:
        return
    (root / LABELS).mkdir(exist_ok=True)
    if not (root / LABELS / META).exists():
        write_json_atomic(root / LABELS / META, group_meta({}))
    while True:
        last, _ = read_label_records(root)
        tmp = staging / f"labels-{new_token()}"
        tmp.mkdir()
        write_json_atomic(tmp / META, group_meta({LABELS_KEY: {"labels": labels, "time": now_iso()}}))
        try:
            os.rename(tmp, root / LABELS / f"{last + 1:08d}")
            return
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another writer took that number: read again, take the next


# ------------------------------------------------------------------------------------------------ segments
def build_columns(commits: dict[str, dict], labels: dict[str, int], digests: dict[str, str]) -> tuple[dict, dict]:
    """Columns of one segment from commit records ({name: array or list of str}, summary attrs); `digests`: each
    record file's sha256."""
    part_ids = sorted(commits)
    rows = []  # (id, part row, offset, num_frames, label, fps, source)
    fails = []
    for p, pid in enumerate(part_ids):
        for v in commits[pid]["videos"]:
            rows.append((v["id"], p, v["offset"], v["num_frames"], labels.get(v["id"], v["label"]),
                         np.nan if v["fps"] is None else v["fps"], v["source"]))
        for f in commits[pid]["failures"]:
            fails.append((f["id"], f["source"], f["error"], p))
    rows.sort(key=lambda r: (r[0].encode("utf-8", "surrogatepass"), r[1]))
    fails.sort(key=lambda r: (r[0].encode("utf-8", "surrogatepass"), r[3]))
    ids = [r[0] for r in rows]
    hashes = np.array([id_hash(i) for i in ids], dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    cols = {
        "id": ids,
        "part": np.array([r[1] for r in rows], dtype=np.int32),
        "offset": np.array([r[2] for r in rows], dtype=np.int64),
        "num_frames": np.array([r[3] for r in rows], dtype=np.int64),
        "label": np.array([r[4] for r in rows], dtype=np.int32),
        "fps": np.array([r[5] for r in rows], dtype=np.float64),
        "source": [r[6] for r in rows],
        "id_hash": hashes[order],
        "hash_row": order.astype(np.int64),
        "part_id": part_ids,
        "frames": np.array([commits[p]["frames"] for p in part_ids], dtype=np.int64),
        "videos": np.array([len(commits[p]["videos"]) for p in part_ids], dtype=np.int64),
        "failures": np.array([len(commits[p]["failures"]) for p in part_ids], dtype=np.int64),
        "disk_bytes": np.array([int(commits[p].get("disk_bytes", 0)) for p in part_ids], dtype=np.int64),
        "files": np.array([len(commits[p].get("files", {})) for p in part_ids], dtype=np.int64),
        "digest": [digests.get(p) or commits[p].get("_digest", "") for p in part_ids],
        "fail_id": [f[0] for f in fails],
        "fail_source": [f[1] for f in fails],
        "fail_error": [f[2] for f in fails],
        "fail_part": np.array([f[3] for f in fails], dtype=np.int32),
    }
    duplicates = sum(a == b for a, b in zip(ids, ids[1:]))
    attrs = {"parts": len(part_ids), "videos": len(ids), "unique": len(ids) - duplicates,
             "duplicates": duplicates, "failures": len(fails)}
    return cols, attrs


class Segment:
    """One set of indexed parts: memory-mapped from `index/<name>/`, or in memory (parts not yet indexed)."""

    def __init__(self, cols: dict, attrs: dict, name: str | None = None):
        self.name, self.attrs = name, attrs
        for key, value in cols.items():
            if isinstance(value, list):
                value = StringColumn(*encode_strings(value))
            setattr(self, key, value)
        self.part_names: list[str] = self.part_id.tolist()

    dead: frozenset[str] = frozenset()
    """Parts of this segment not served from it: missing from `parts/`, or re-read (`IndexView(reread=...)`)."""

    @classmethod
    def from_commits(cls, commits: dict[str, dict], labels: dict[str, int], digests: dict[str, str]) -> Segment:
        cols, attrs = build_columns(commits, labels, digests)
        return cls(cols, attrs)

    @classmethod
    def open(cls, folder: Path) -> Segment:
        """Map a written segment; ColumnDamageError (or StoreError for its record) if any column fails its check."""
        attrs = read_group_attrs(folder, SEGMENT_KEY)
        cols = {}
        for name, desc in attrs["columns"].items():
            cols[name] = map_strings(folder, name, desc) if name in STRINGS else map_column(folder, name, desc)
        seg = cls(cols, attrs, folder.name)
        if len(seg.id) != attrs["videos"] or len(seg.part_names) != attrs["parts"]:
            raise ColumnDamageError(f"{folder / META}: counts {attrs['videos']} videos, {attrs['parts']} parts; "
                                    f"the columns hold {len(seg.id)} and {len(seg.part_names)}")
        return seg

    def rows_of(self, video_id: str) -> list[int]:
        """Rows holding `video_id` (more than one only if it was committed twice)."""
        h = np.uint64(id_hash(video_id))
        i = int(np.searchsorted(self.id_hash, h))
        raw = video_id.encode("utf-8", "surrogatepass")
        out = []
        while i < len(self.id_hash) and self.id_hash[i] == h:
            row = int(self.hash_row[i])
            if self.id.raw(row) == raw:
                out.append(row)
            i += 1
        return out

    def columns(self) -> dict:
        """Every column as numpy arrays / lists of str (for merging segments)."""
        out = {}
        for name in self.attrs.get("columns") or {n: None for n in _COLUMN_NAMES}:
            value = getattr(self, name)
            out[name] = value.tolist() if isinstance(value, StringColumn) else np.asarray(value)
        return out


_COLUMN_NAMES = ("id", "part", "offset", "num_frames", "label", "fps", "source", "id_hash", "hash_row", "part_id",
                 "frames", "videos", "failures", "disk_bytes", "files", "digest", "fail_id", "fail_source",
                 "fail_error", "fail_part")


def write_segment(root: Path, cols: dict, attrs: dict) -> str:
    """Write a segment under a fresh name (not referenced until the manifest names it); returns the name."""
    name = f"s{time.strftime('%Y%m%d%H%M%S')}-{new_token()[:8]}"
    folder = root / INDEX / name
    folder.mkdir(parents=True)
    columns = {}
    for key in _COLUMN_NAMES:
        value = cols[key]
        columns[key] = write_strings(folder, key, value) if key in STRINGS else write_column(folder, key, value)
    write_json_atomic(folder / META, group_meta({SEGMENT_KEY: {**attrs, "columns": columns, "time": now_iso()}}))
    return name


def merge_segments(segments: list[Segment], extra: dict[str, dict], labels: dict[str, int], digests: dict[str, str]):
    """Columns of one segment holding every part of `segments` (missing ones too: they stay damage until re-created
    or rebuilt away), with the commit records `extra` replacing or adding parts."""
    commits: dict[str, dict] = {}
    # Rebuild pseudo commit records from the columns (no commit file is read again): only the indexed fields.
    for seg in segments:
        cols = seg.columns()
        per_part: dict[int, dict] = {}
        for p, pid in enumerate(cols["part_id"]):
            if pid in commits or pid in extra:
                continue
            per_part[p] = {"part_id": pid, "videos": [], "failures": [], "frames": int(cols["frames"][p]),
                           "disk_bytes": int(cols["disk_bytes"][p]), "_files": int(cols["files"][p]),
                           "_digest": cols["digest"][p]}
        for i, vid in enumerate(cols["id"]):
            rec = per_part.get(int(cols["part"][i]))
            if rec is not None:
                fps = float(cols["fps"][i])
                rec["videos"].append({"id": vid, "offset": int(cols["offset"][i]),
                                      "num_frames": int(cols["num_frames"][i]), "label": int(cols["label"][i]),
                                      "fps": None if np.isnan(fps) else fps, "source": cols["source"][i]})
        for i, fid in enumerate(cols["fail_id"]):
            rec = per_part.get(int(cols["fail_part"][i]))
            if rec is not None:
                rec["failures"].append({"id": fid, "source": cols["fail_source"][i], "error": cols["fail_error"][i]})
        for rec in per_part.values():
            rec["videos"].sort(key=lambda v: v["offset"])
            commits[rec["part_id"]] = rec
    commits.update(extra)
    cols, attrs = build_columns(commits, labels, digests)
    for p, pid in enumerate(cols["part_id"]):  # keep what the pseudo records cannot recompute
        if "_files" in commits[pid]:
            cols["files"][p] = commits[pid]["_files"]
    return cols, attrs


# ------------------------------------------------------------------------------------------------ the manifest
def read_manifest(root: Path) -> dict | None:
    """The index manifest; None if absent, unreadable or of the old format-1 layout."""
    try:
        index = read_group_attrs(root / INDEX, INDEX_KEY)
    except StoreError:
        return None
    if index.get("format") != FORMAT or not isinstance(index.get("segments"), list):
        return None
    return index


def index_state(root: Path) -> str:
    """`fresh`, `stale`, `absent`, `damaged` (a column fails its check: run `vivitcache index`), or `old` (format 1,
    written before the columnar index: run `vivitcache index`)."""
    state = _manifest_state(root)
    if state != "ok":
        return state
    view = open_index(root, strict=False)
    return "damaged" if view.index_problem else "fresh" if view.fresh else "stale"


def _manifest_state(root: Path) -> str:
    """`absent`, `old` (format 1), `damaged` (unreadable, or of no known format) or `ok`, from the manifest alone."""
    if not (root / INDEX / META).exists():
        return "absent"
    if read_manifest(root) is not None:
        return "ok"
    try:
        return "old" if read_group_attrs(root / INDEX, INDEX_KEY).get("format", 1) == 1 else "damaged"
    except StoreError:
        return "damaged"


def update_index(root: Path, force: bool = False, reread: frozenset[str] = frozenset()) -> dict:
    """Bring the index up to date incrementally (a no-op when fresh); returns {parts, videos, written}.

    Reads only the commit records of parts that no segment covers, and of `reread` (parts this run re-published
    under an indexed id). `force`: rebuild from every commit record (a damaged index, or to drop vanished parts).
    A damaged part stays out (`verify` names it). Two writers updating at once both succeed; the later manifest may
    leave out the other's segment, which only makes the index stale (never wrong) until the next update.
    """
    if force:
        commits, _, digests = read_commits(root)
        labels_seq, labels = read_label_records(root)
        cols, attrs = build_columns(commits, labels, digests)
        _write_manifest(root, [write_segment(root, cols, attrs)], labels_seq)
        return {"parts": len(commits), "videos": int(attrs["unique"]), "written": True}
    view = open_index(root, strict=False, reread=reread)
    mapped = [s for s in view.segments if s.name is not None]
    new = view.unindexed_commits
    if view.mapped_ok and not new and not view.label_overrides:
        return {"parts": len(view.part_ids()), "videos": len(view), "written": False}
    labels_seq, labels = read_label_records(root)
    if not view.mapped_ok or len(mapped) >= MAX_SEGMENTS or view.label_overrides or view.reread:
        cols, attrs = merge_segments(mapped, new, labels, view.unindexed_digests)
        names = [write_segment(root, cols, attrs)]
    else:
        cols, attrs = build_columns(new, labels, view.unindexed_digests)
        names = [s.name for s in mapped] + [write_segment(root, cols, attrs)]
    _write_manifest(root, names, labels_seq)
    return {"parts": len(view.part_ids()), "videos": len(view), "written": True}


def _write_manifest(root: Path, names: list[str], labels_seq: int) -> None:
    write_json_atomic(root / INDEX / META, group_meta({INDEX_KEY: {
        "format": FORMAT, "segments": names, "labels_seq": labels_seq, "time": now_iso()}}))
    _remove_unlisted_segments(root, set(names))


def _remove_unlisted_segments(root: Path, keep: set[str], min_age_s: float = 600.0) -> None:
    """Segments no manifest names (replaced by a merge, or left by a killed writer), once old enough that no reader
    that opened the previous manifest a moment ago still maps them."""
    now = time.time()
    for entry in os.scandir(root / INDEX):
        if entry.is_dir() and entry.name not in keep and now - entry.stat().st_mtime > min_age_s:
            shutil.rmtree(entry.path, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ reading
class IndexView:
    """Every committed video of a store: mapped segments + an in-memory segment of parts published since.

    `problems` / `damaged_parts`: parts left out (a damaged commit record, or missing from `parts/` while the index
    lists them); strict: the first one raises instead. `index_problem`: why the mapped index was not used (None if
    it was, or there is none). `reread`: indexed parts to read from their commit records anyway."""

    def __init__(self, root: Path, strict: bool = True, reread: frozenset[str] = frozenset()):
        self.root = root
        listing = part_listing(root)
        manifest = read_manifest(root)
        self.segments, self.index_problem = _map_segments(root, manifest)
        if manifest is None and _manifest_state(root) == "damaged":
            self.index_problem = f"{root / INDEX / META} is unreadable; {REBUILD.format(root=root)}"
        self.mapped_ok = manifest is not None and self.index_problem is None
        indexed = {p for s in self.segments for p in s.part_names}
        self.missing = sorted(indexed - listing)
        self.reread = reread & indexed & listing
        for seg in self.segments:
            seg.dead = frozenset(p for p in seg.part_names if p not in listing or p in self.reread)
        labels_seq = manifest.get("labels_seq", -1) if self.mapped_ok else -1
        last_seq, self.label_overrides = read_label_records(root, after=labels_seq)
        fresh_names = sorted(listing - indexed | self.reread)
        commits, problems, self.unindexed_digests = read_commits(root, fresh_names)
        for name in self.missing:
            problems[name] = (f"part {name}: {root / PARTS / name} is missing, but the index lists it (deleted, or "
                              "left out of a copy)")
        if problems and strict:
            first = problems[min(problems)]
            raise StoreDamageError(f"{first} (run `vivitcache verify {root}`; a re-run of `vivitcache extract` "
                                   "re-creates a missing part, with --repair also damaged ones)")
        self.problems = [problems[p] for p in sorted(problems)]
        self.damaged_parts = set(problems)
        self.unindexed_commits = commits
        if commits:
            self.segments.append(Segment.from_commits(commits, self.label_overrides, self.unindexed_digests))
        self.fresh = self.mapped_ok and not commits and not problems and last_seq == labels_seq
        self._part_row = {}
        for seg in self.segments:
            for p, pid in enumerate(seg.part_names):
                if pid not in seg.dead:
                    self._part_row.setdefault(pid, (seg, p))
        # Fast paths (counts and id lists straight from the columns) hold while no video is in two places.
        self._simple = not any(s.dead for s in self.segments) and \
            all(s.attrs.get("duplicates", 0) == 0 for s in self.segments) and not self._cross_duplicates()
        self._ids: list[str] | None = None

    def _cross_duplicates(self) -> bool:
        """Whether any id is in two segments: each smaller segment's hashes searched in every larger one
        (vectorised, O(m log n)); equal hashes are confirmed on the ids."""
        by_size = sorted(self.segments, key=lambda s: len(s.id_hash))
        for i, small in enumerate(by_size):
            for big in by_size[i + 1 :]:
                pos = np.searchsorted(big.id_hash, small.id_hash)
                hit = np.flatnonzero(big.id_hash[np.minimum(pos, len(big.id_hash) - 1)] == small.id_hash) \
                    if len(big.id_hash) else []
                if any(big.rows_of(small.id[int(small.hash_row[k])]) for k in hit):
                    return True
        return False

    # ---- lookup -------------------------------------------------------------------------------------------------
    def find(self, video_id: str) -> tuple[Segment, int] | None:
        """(segment, row) of a committed video; a video committed twice resolves to the smaller part id."""
        if not isinstance(video_id, str):
            return None
        best = None
        for seg in self.segments:
            for row in seg.rows_of(video_id):
                pid = seg.part_names[int(seg.part[row])]
                if pid in seg.dead:
                    continue
                if best is None or pid < best[0]:
                    best = (pid, seg, row)
        return None if best is None else (best[1], best[2])

    def label(self, seg: Segment, row: int, video_id: str) -> int:
        override = self.label_overrides.get(video_id)
        return int(seg.label[row]) if override is None else int(override)

    def part_ids(self) -> list[str]:
        return sorted(self._part_row)

    def part_row(self, part_id: str) -> tuple[Segment, int] | None:
        return self._part_row.get(part_id)

    # ---- whole-store views ----------------------------------------------------------------------------------------
    def _winners(self) -> list[tuple[str, Segment, int]]:
        best: dict[str, tuple[str, Segment, int]] = {}
        for seg in self.segments:
            ids = seg.id.tolist()
            parts = seg.part.tolist()
            for row, vid in enumerate(ids):
                pid = seg.part_names[parts[row]]
                if pid in seg.dead:
                    continue
                if vid not in best or pid < best[vid][0]:
                    best[vid] = (pid, seg, row)
        return [(vid, *best[vid][1:]) for vid in sorted(best, key=lambda v: v.encode("utf-8", "surrogatepass"))]

    def ids(self) -> list[str]:
        """Committed video ids, sorted (by code point)."""
        if self._ids is None:
            if self._simple:  # sorted runs: timsort merges them in linear time
                runs = [seg.id.tolist() for seg in self.segments]
                self._ids = runs[0] if len(runs) == 1 else sorted(x for run in runs for x in run)
            else:
                self._ids = [w[0] for w in self._winners()]
        return self._ids

    def __len__(self) -> int:
        if self._simple:
            return sum(int(seg.attrs["unique"]) for seg in self.segments)
        return len(self.ids())

    def total_frames(self) -> int:
        if self._simple:
            return sum(int(np.asarray(seg.num_frames).sum()) for seg in self.segments)
        return sum(int(seg.num_frames[row]) for _, seg, row in self._winners())

    def duplicates(self) -> list[tuple[str, str, str]]:
        """(id, kept part, ignored part) for every video committed more than once."""
        if self._simple:
            return []
        owners: dict[str, list[str]] = {}
        for seg in self.segments:
            parts = seg.part.tolist()
            for row, vid in enumerate(seg.id.tolist()):
                pid = seg.part_names[parts[row]]
                if pid not in seg.dead:
                    owners.setdefault(vid, []).append(pid)
        out = []
        for vid, pids in sorted(owners.items()):
            pids = sorted(pids)
            out += [(vid, pids[0], other) for other in pids[1:]]
        return out

    def failures(self) -> list[dict]:
        """Ledger entries of videos with no tokens, one per id (smallest part id), sorted by id."""
        out: dict[str, dict] = {}
        for seg in self.segments:
            for i in range(len(seg.fail_id)):
                pid = seg.part_names[int(seg.fail_part[i])]
                vid = seg.fail_id[i]
                if pid in seg.dead or (vid in out and out[vid]["part_id"] <= pid):
                    continue
                out[vid] = {"id": vid, "source": seg.fail_source[i], "error": seg.fail_error[i], "part_id": pid}
        return [out[v] for v in sorted(out) if self.find(v) is None]

    def labels(self) -> dict[str, int]:
        """{id: label} of every committed video (label records applied)."""
        if self._simple:
            out = {}
            for seg in self.segments:
                out.update(zip(seg.id.tolist(), seg.label.tolist()))
        else:
            out = {vid: int(seg.label[row]) for vid, seg, row in self._winners()}
        out.update((k, int(v)) for k, v in self.label_overrides.items() if k in out)
        return out

    def part_videos(self, part_id: str) -> list[tuple[str, str, int]]:
        """(id, source, label) of a part's videos and ledger entries (label -1), from the index alone (also of a
        part missing from `parts/`: what re-creates it)."""
        where = self._part_row.get(part_id) or next(
            ((s, p) for s in self.segments for p, pid in enumerate(s.part_names) if pid == part_id), None)
        if where is None:
            return []
        seg, p = where
        rows = np.flatnonzero(np.asarray(seg.part) == p)
        out = [(seg.id[r], seg.source[r], int(seg.label[r])) for r in rows]
        fails = np.flatnonzero(np.asarray(seg.fail_part) == p)
        return out + [(seg.fail_id[r], seg.fail_source[r], -1) for r in fails]

    def part_sums(self) -> dict[str, int]:
        """Totals over the committed parts: frames, videos, failures, disk_bytes, files."""
        keys = ("frames", "videos", "failures", "disk_bytes", "files")
        sums = dict.fromkeys(keys, 0)
        for seg in self.segments:
            alive = np.array([self._part_row.get(p, (None,))[0] is seg for p in seg.part_names], dtype=bool)
            for key in keys:
                sums[key] += int(np.asarray(getattr(seg, key))[alive].sum())
        return sums


def _map_segments(root: Path, manifest: dict | None) -> tuple[list[Segment], str | None]:
    """(the manifest's segments, mapped and checked; None) or ([], why the index is damaged): a damaged index is
    never used, the view reads every commit record instead."""
    if manifest is None:
        return [], None
    try:
        return [Segment.open(root / INDEX / name) for name in manifest["segments"]], None
    except (StoreError, KeyError, TypeError, ValueError, OSError) as e:
        why = f"{root / INDEX} is damaged ({e}); {REBUILD.format(root=root)}"
        log.warning("warning: %s. Reading every commit record instead (slower, still right).", why)
        return [], why


def open_index(root: Path, strict: bool = True, reread: frozenset[str] = frozenset()) -> IndexView:
    return IndexView(Path(root), strict=strict, reread=reread)


__all__ = ["IndexView", "StoreDamageError", "index_state", "open_index", "part_names", "publish_labels", "read_commit",
           "read_commits", "update_index"]
