"""On-disk layout of a token store: names, the `StoreLayout` record, atomic JSON, and `StoreError`.

```
STORE.zarr/
  zarr.json                 root group; attributes["vivitcache"] = {schema, fingerprint, classes, layout, created,
                            provenance}
  parts/zarr.json           group holding the committed parts
  parts/<part_id>/          one group per PART (a group of videos written by exactly one writer)
      zarr.json             the COMMIT RECORD: group attributes["vivitcache_commit"] = {part_id, videos: [{id, label,
                            offset, num_frames, source, fps}], failures: [{id, source, error, source_stat}],
                            frames, bytes, disk_bytes, tokens_sha256, writer: {host, pid, time, token}}
      tokens                zarr array [F_part, K, D] float16 (or uint16 holding bfloat16 bits), sharded along frames
      frame_times           zarr array [F_part] float64, presentation time in seconds of every stored frame
  staging/zarr.json         group holding parts being written
  staging/<part_id>.<host>.<pid>.<token>/   a part before it is published; zarr.json here holds the owner record
  index/zarr.json           optional consolidated index: attributes["vivitcache_index"] = {parts_mtime_ns, parts:
                            {part_id: commit record}}, written by `StoreWriter.consolidate()`
```

Why the commit record is the part group's own `zarr.json` (and not a separate `commit.json`): a file zarr does not
know makes every `group.members()` warn, and attributes are readable with plain `zarr.open(STORE)`. The record is
still written last: the staging group's `zarr.json` first holds the owner record and is atomically replaced by the
commit record just before the staging folder is renamed to `parts/<part_id>`.

Video ids come from user files: they are only ever data inside JSON, never path components. Part ids and staging
names are checked against `PART_ID_PATTERN` / built from sanitised parts before they touch the filesystem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vivitcache import jsonio
from vivitcache.errors import UserError

SCHEMA = 1
"""Version of this on-disk layout; a reader refuses a store with a newer schema."""

ROOT_KEY = "vivitcache"
COMMIT_KEY = "vivitcache_commit"
STAGING_KEY = "vivitcache_staging"
INDEX_KEY = "vivitcache_index"

PARTS = "parts"
STAGING = "staging"
INDEX = "index"
TOKENS = "tokens"
FRAME_TIMES = "frame_times"
META = "zarr.json"

TOKEN_KINDS = ("pooled", "cls", "pooled+mean", "cls+mean", "all", "grid")
"""Stored token kinds: the model's own image embedding (`pooled`), the class token (`cls`), either followed by the
mean of the patch tokens (`+mean`, K=2), every token (`all`, prefix + patches, K>=2), or the pooled embedding then
the patch tokens average-pooled to an N x N grid (`grid`, K=1+N²); all but `all` may come from several blocks."""
FRAME_TOKENS = tuple(kind for kind in TOKEN_KINDS if kind not in ("all", "grid"))
"""What a temporal model can take per frame: every stored kind but `all` (its meaning: `models/tokens.py`)."""
TOKENS_PER_KIND = {"pooled": 1, "cls": 1, "pooled+mean": 2, "cls+mean": 2}
"""K fixed by the kind (`all` has K >= 2, the model's prefix + patch tokens)."""
DTYPES = ("fp16", "bf16")
COMPRESSIONS = ("none", "zstd")
BYTES_PER_VALUE = {"fp16": 2, "bf16": 2}

PART_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
"""Part ids become folder names: letters, digits, `_` and `-` only (no dots, no slashes), at most 64 characters."""


def bytes_per_frame(tokens_per_frame: int, dim: int, dtype: str) -> int:
    """Stored bytes of one frame's tokens, before compression: K * D * 2 for fp16 and bf16 (also for estimates of
    stores not yet written)."""
    if dtype not in BYTES_PER_VALUE:
        raise StoreError(f"unknown store dtype {dtype!r}, use one of {', '.join(BYTES_PER_VALUE)}")
    return tokens_per_frame * dim * BYTES_PER_VALUE[dtype]


class StoreError(UserError):
    """A token store is missing, damaged, of another schema, or used wrongly (one line: path and cause)."""


REPAIR_HINT = "run `vivitcache verify STORE`, then `vivitcache extract ... --repair` to re-extract damaged parts"
"""What every damage error ends with."""


class StoreDamageError(StoreError):
    """Committed data is damaged (a missing or changed file, a checksum error): the message names the part and the
    file. The CLI exits 1 for it (damage, not bad input); `vivitcache extract --repair` re-extracts such parts."""


@dataclass(frozen=True)
class StoreLayout:
    """How tokens are laid out in a store; part of what a resumed extraction or a trainer must agree on."""

    tokens: str
    """Which tokens per frame: one of `TOKEN_KINDS` (`pooled`, `cls`, `pooled+mean`, `cls+mean`, `all`)."""
    tokens_per_frame: int
    """K, tokens stored per frame (1 for `pooled`/`cls`, 2 for `pooled+mean`/`cls+mean`, prefix + patches for `all`)."""
    dim: int
    """D, width of one token."""
    dtype: str
    """`fp16` (stored as float16) or `bf16` (stored as the uint16 bits of bfloat16; zarr has no bfloat16)."""
    shard_frames: int = 256
    """Frames per shard file (one file per shard; a writer always writes whole shards)."""
    chunk_frames: int = 16
    """Frames per inner chunk (the unit a reader decodes); must divide `shard_frames`. zarr costs ~0.3 ms per chunk
    read, so aim for chunks of ~100 KB-1 MB: 16 suits `all` tokens, `cls` tokens read faster with 64-256."""
    compression: str = "none"
    """`none` or `zstd` (level 1). fp16 tokens compress ~1.1x, bf16 ~1.3x; every chunk carries a crc32c either way."""
    grid: int = 0
    """N of a `grid` store (N x N cells of average-pooled patch tokens per block), 0 for the other kinds."""
    layers: tuple[int, ...] = (-1,)
    """Blocks the tokens come from, as offsets from the last (-1), deepest first; tokens stored block after block."""
    token_map: tuple[tuple[int, str], ...] | None = None
    """Which token is which, K entries (block, name: `pooled`, `cls`, `mean`, `rRcC` grid cell); None for a one-block
    store of a fixed kind (written by `models.tokens.token_map`; a reader picks tokens by it, never by guessing)."""

    def __post_init__(self):
        def bad(msg: str):
            raise StoreError(f"invalid store layout: {msg}")

        if self.tokens not in TOKEN_KINDS:
            bad(f"tokens={self.tokens!r}, use one of {', '.join(TOKEN_KINDS)}")
        if self.dtype not in DTYPES:
            bad(f"dtype={self.dtype!r}, use one of {', '.join(DTYPES)}")
        if self.compression not in COMPRESSIONS:
            bad(f"compression={self.compression!r}, use one of {', '.join(COMPRESSIONS)}")
        for name in ("tokens_per_frame", "dim", "shard_frames", "chunk_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(f"{name}={value!r} must be a positive integer")
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.grid, *self.layers))
        if not ints or not self.layers or self.layers[0] != -1 or list(self.layers) != sorted(set(self.layers))[::-1]:
            bad(f"layers={list(self.layers)} must be distinct negative block offsets, deepest (-1) first")
        if (self.tokens == "grid") != (self.grid > 0) or (self.tokens == "all" and self.layers != (-1,)):
            bad(f"tokens={self.tokens!r} with grid={self.grid}, layers={list(self.layers)}")
        if self.token_map is not None and len(self.token_map) != self.tokens_per_frame:
            bad(f"token_map has {len(self.token_map)} entries for {self.tokens_per_frame} tokens per frame")
        per_layer = 1 + self.grid**2 if self.tokens == "grid" else TOKENS_PER_KIND.get(self.tokens)
        expected_k = None if per_layer is None else per_layer * len(self.layers)
        if expected_k is not None and self.tokens_per_frame != expected_k:
            bad(f"tokens={self.tokens!r} stores {expected_k} token(s) per frame, not {self.tokens_per_frame}")
        if self.tokens == "all" and self.tokens_per_frame < 2:
            bad(f"tokens='all' needs tokens_per_frame >= 2 (CLS + patches), got {self.tokens_per_frame}")
        if self.shard_frames % self.chunk_frames:
            bad(f"chunk_frames={self.chunk_frames} must divide shard_frames={self.shard_frames}")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one stored frame (K * D * 2), before compression."""
        return bytes_per_frame(self.tokens_per_frame, self.dim, self.dtype)

    @property
    def numpy_dtype(self) -> str:
        """The zarr/numpy dtype of the tokens array."""
        return "float16" if self.dtype == "fp16" else "uint16"

    def to_dict(self) -> dict:
        """As JSON data; `grid`, `layers` and `token_map` only when set, so one-token stores keep their layout."""
        out = dataclasses.asdict(self)
        for key, default in (("grid", 0), ("layers", (-1,)), ("token_map", None)):
            if out[key] == default:
                del out[key]
        if "token_map" in out:
            out["token_map"] = [list(entry) for entry in out["token_map"]]
        if "layers" in out:
            out["layers"] = list(out["layers"])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> StoreLayout:
        """Build from a dict, refusing unknown keys (a typo or a newer layout must not be ignored)."""
        if not isinstance(data, dict):
            raise StoreError(f"invalid store layout: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StoreError(f"invalid store layout: unknown key(s) {', '.join(unknown)}")
        data = dict(data)
        if "layers" in data:
            data["layers"] = tuple(data["layers"])
        if data.get("token_map") is not None:
            data["token_map"] = tuple(tuple(entry) for entry in data["token_map"])
        try:
            return cls(**data)
        except TypeError as e:
            raise StoreError(f"invalid store layout: {e}") from None


def check_part_id(part_id: str) -> str:
    """Refuse a part id that could not safely be a folder name."""
    if not isinstance(part_id, str) or not PART_ID_PATTERN.match(part_id):
        raise StoreError(f"invalid part id {part_id!r}: use 1-64 letters, digits, '_' or '-'")
    return part_id


def staging_name(part_id: str, host: str, pid: int, token: str) -> str:
    return f"{part_id}.{host}.{pid}.{token}"


def parse_staging_name(name: str) -> dict | None:
    """`{part_id, host, pid, token}` from a staging folder name, or None if it is not one of ours."""
    bits = name.split(".")
    if len(bits) != 4 or not bits[2].isdigit():
        return None
    return {"part_id": bits[0], "host": bits[1], "pid": int(bits[2]), "token": bits[3]}


def source_stat(source: str) -> dict | None:
    """{size, mtime_ns, inode} of a video's source file (symlinks followed), None when it cannot be stat'ed (missing,
    a broken link, not a path): what the failure ledger keeps, so that a later run retries a changed source."""
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def write_json_atomic(path: Path, data) -> None:
    """A store record, atomically (`jsonio.write_json_atomic`); NaN refused, ASCII (ids may hold lone surrogates)."""
    jsonio.write_json_atomic(path, data, allow_nan=False)


def read_json(path: Path):
    """Parse a JSON file; StoreError naming the file if it is missing or damaged."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise StoreError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{path}: cannot be read as JSON ({e})") from None


def group_meta(attributes: dict) -> dict:
    """A zarr v3 group's `zarr.json` with these attributes."""
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def read_group_attrs(path: Path, key: str) -> dict:
    """attributes[key] of the zarr v3 group at folder `path`; StoreError if absent or malformed."""
    meta = read_json(path / META)
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or not isinstance(attrs.get(key), dict):
        raise StoreError(f"{path / META}: no {key!r} record")
    return attrs[key]
