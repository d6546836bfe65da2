"""Video annotations: which video files there are, their class and their split, from four formats (auto-detected):

1. a folder with one sub-folder per class holding video files (.mp4 .avi .mkv .webm .mov, searched recursively;
   broken symlinks and FIFOs with those names are listed too, so `extract` ledgers them instead of skipping them);
   when it has `train/` and `val/` (or `validation/`) sub-folders that each hold class folders, those give the
   split (a `test/` one too), else a deterministic split (`val_fraction` of each class, chosen by hashing ids);
2. a CSV `path,label[,split]` (header optional; relative paths are relative to `video_root` if given, else to the
   CSV's folder); without a split column the same hashed split is used;
3. a Kinetics CSV with header `label,youtube_id,time_start,time_end[,split]`; the video of a row is
   `{youtube_id}_{time_start:06d}_{time_end:06d}.mp4` under `video_root/<split>/<label>/` or `video_root/`
   (both tried; `video_root` defaults to the CSV's folder);
4. a Something-Something v2 JSON list of objects with `id` and `template` (its `[something]` brackets removed) or
   `label`; the video is `{video_root}/{id}.webm` or `.mp4`; the split comes from the file name (train /
   validation / val / test, else train).

Classes are sorted (numerically when every class name is an integer) unless `labels` gives the class list: a JSON
dict name → index (SSv2's labels.json), a JSON list, or a text file with one name per line. Ids are unique
strings: the path relative to the data folder (or CSV base) without extension, the Kinetics file stem, the SSv2 id.
Split names are normalised: validation/validate/valid → val, training → train, testing → test.

Malformed annotations raise `AnnotationError` naming the file and line. A video file that does not exist is not
an annotation error: extraction records it as a failure.
"""

from __future__ import annotations

import bisect
import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vivitcache.errors import ConfigError, UserError
from vivitcache.splits import hashed_val_ids

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
_SPLIT_ALIASES = {"validation": "val", "validate": "val", "valid": "val", "training": "train", "testing": "test"}


class AnnotationError(UserError, ValueError):
    """Malformed annotations; message `"<file>, line <n>: <cause>"` (or `"<file>: <cause>"` without a line)."""

    def __init__(self, path: str | os.PathLike, line: int | None, cause: str):
        self.path, self.line, self.cause = str(path), line, cause
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {cause}")

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.path, self.line, self.cause))


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video."""

    id: str
    """Unique id within the dataset (relative path without extension, Kinetics file stem, or SSv2 id)."""
    path: str
    """Absolute path of the video file (it may not exist)."""
    label: int
    """Class index into `VideoDataset.classes`."""
    split: str
    """Split name: train, val, test, ..."""


@dataclass
class VideoDataset:
    """Annotated videos and their class names."""

    records: list[VideoRecord]
    """All videos, in file order (folder format: sorted by id)."""
    classes: list[str]
    """Class names; a record's label indexes this list."""

    def split(self, name: str) -> list[VideoRecord]:
        """Records of one split (e.g. "train", "val")."""
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        """Split names present, sorted."""
        return sorted({r.split for r in self.records})


def load_annotations(
    data: str | os.PathLike,
    video_root: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> VideoDataset:
    """Read annotations in any of the four formats (module docstring); AnnotationError when malformed."""
    data = Path(data).absolute()  # ids must not depend on the working directory
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not data.exists():
        raise AnnotationError(data, None, "annotations not found")
    class_list = _read_class_list(Path(labels)) if labels is not None else None
    if data.is_dir():
        rows = _folder_rows(data)
    elif data.suffix.lower() == ".json":
        rows = _ssv2_rows(data, Path(video_root) if video_root is not None else data.parent)
    else:
        rows = _csv_rows(data, Path(video_root) if video_root is not None else None)
    return _build(data, rows, class_list, val_fraction, seed)


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class _Row:
    """One video as read from the annotations, before class indices and splits are settled."""

    line: int | None
    id: str
    path: str
    class_name: str
    split: str | None  # None: decided by the hashed split


def _normalise_split(name: str) -> str:
    name = name.strip().lower()
    return _SPLIT_ALIASES.get(name, name)


def _absolute(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _relative_id(path: Path, base: Path) -> str:
    """Path relative to base (else absolute, leading / dropped), POSIX separators, without extension."""
    stem = path.with_suffix("")
    try:
        rel = Path(os.path.normpath(stem)).relative_to(os.path.normpath(base.absolute()))
    except ValueError:
        rel = Path(os.path.normpath(stem.absolute()))
        return rel.as_posix().lstrip("/")
    return rel.as_posix()


# folder -------------------------------------------------------------------------------------------
def _is_video(p: Path) -> bool:
    """A video entry of a class folder: any non-hidden name with a video extension that is not a folder, so a
    broken symlink, a symlink loop or a FIFO is listed too, and extraction ledgers it as what it is."""
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".") and not p.is_dir()


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class name → its video files (recursive, sorted), for sub-folders that hold any."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        videos = sorted(p for p in sub.rglob("*") if _is_video(p))
        if videos:
            classes[sub.name] = videos
    return classes


def _folder_rows(folder: Path) -> list[_Row]:
    split_dirs = {}
    for name in ("train", "val", "validation", "test"):
        if (folder / name).is_dir() and _class_folders(folder / name):
            split_dirs.setdefault(_normalise_split(name), folder / name)
    layout = split_dirs if {"train", "val"} <= split_dirs.keys() else {None: folder}
    rows = []
    for split, root in layout.items():
        for class_name, videos in _class_folders(root).items():
            rows += [_Row(None, _relative_id(v, folder), _absolute(v), class_name, split) for v in videos]
    if not rows:
        raise AnnotationError(
            folder, None, f"no class sub-folders with video files ({' '.join(VIDEO_EXTENSIONS)}) found"
        )
    return sorted(rows, key=lambda r: r.id)


# CSV ----------------------------------------------------------------------------------------------
def _csv_rows(path: Path, video_root: Path | None) -> list[_Row]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(path, None, f"cannot read ({e})") from e
    reader = csv.reader(text.splitlines(keepends=True))
    rows = []
    for cells in reader:
        cells = [c.strip() for c in cells]
        if any(cells) and not cells[0].startswith("#"):
            rows.append((reader.line_num, cells))
    if not rows:
        raise AnnotationError(path, 1, "empty file: no rows")
    header = [c.lower() for c in rows[0][1]]
    if set(KINETICS_COLUMNS) <= set(header):
        return _kinetics_rows(path, header, rows[1:], video_root if video_root is not None else path.parent)
    base = video_root if video_root is not None else path.parent
    if "path" in header and "label" in header:
        columns = {name: header.index(name) for name in ("path", "label", "split") if name in header}
        body, positional = rows[1:], False
        if not body:
            raise AnnotationError(path, rows[0][0], "header only, no video rows")
    elif "path" in header or "label" in header or "youtube_id" in header:
        missing = [c for c in (KINETICS_COLUMNS if "youtube_id" in header else ("path", "label")) if c not in header]
        raise AnnotationError(path, rows[0][0], f"header lacks column(s) {', '.join(missing)}")
    else:  # no header: path,label[,split]
        columns = {"path": 0, "label": 1, "split": 2}
        body, positional = rows, True
    out = []
    for line, cells in body:
        if positional and not 2 <= len(cells) <= 3:
            raise AnnotationError(path, line, f"expected path,label[,split], got {len(cells)} column(s)")
        if not positional:
            _check_no_extra_cells(path, line, header, cells)
        if len(cells) <= max(columns["path"], columns["label"]):
            raise AnnotationError(path, line, "missing column: expected path,label[,split]")
        video, label = cells[columns["path"]], cells[columns["label"]]
        if not video:
            raise AnnotationError(path, line, "empty path")
        if not label:
            raise AnnotationError(path, line, "empty label")
        if label.lower().endswith(VIDEO_EXTENSIONS):  # `v/a,b.mp4,cls` unquoted: path `v/a`, label `b.mp4`
            raise AnnotationError(path, line, f"label {label!r} looks like a file name: quote a path that holds a "
                                  'comma ("v/a,b.mp4")')
        split = None
        if "split" in columns and columns["split"] < len(cells) and cells[columns["split"]]:
            split = _normalise_split(cells[columns["split"]])
        file = Path(video) if Path(video).is_absolute() else base / video
        out.append(_Row(line, _relative_id(file, base), _absolute(file), label, split))
    return out


def _check_no_extra_cells(path: Path, line: int, header: list[str], cells: list[str]) -> None:
    """A row with more cells than its header has columns: an unquoted comma split a path or a label."""
    if len(cells) > len(header) and any(cells[len(header):]):
        raise AnnotationError(path, line, f"{len(cells)} cells under a header of {len(header)} columns "
                              f"({','.join(header)}): quote a path or label that holds a comma (\"v/a,b.mp4\")")


def _kinetics_rows(path: Path, header: list[str], body: list, video_root: Path) -> list[_Row]:
    if not body:
        raise AnnotationError(path, 1, "header only, no video rows")
    col = {name: header.index(name) for name in (*KINETICS_COLUMNS, "split") if name in header}
    out = []
    for line, cells in body:
        if len(cells) < len(header):
            raise AnnotationError(path, line, f"missing column: expected {','.join(header)}")
        _check_no_extra_cells(path, line, header, cells)
        label, youtube_id = cells[col["label"]], cells[col["youtube_id"]]
        if not label or not youtube_id:
            raise AnnotationError(path, line, "empty label or youtube_id")
        try:
            start, end = int(float(cells[col["time_start"]])), int(float(cells[col["time_end"]]))
        except ValueError:
            raise AnnotationError(path, line, "time_start/time_end are not numbers") from None
        split = _normalise_split(cells[col["split"]]) if "split" in col and cells[col["split"]] else None
        name = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
        folders = [video_root]
        if split is not None:
            raw_split = cells[col["split"]]
            folders = [video_root / s / lab for s in dict.fromkeys((raw_split, split))
                       for lab in dict.fromkeys((label, label.replace(" ", "_")))] + folders
        file = next((f / name for f in folders if (f / name).is_file()), video_root / name)
        out.append(_Row(line, Path(name).stem, _absolute(file), label, split))
    return out


# SSv2 JSON ----------------------------------------------------------------------------------------
def _read_json(path: Path):
    """Parsed JSON and the text; AnnotationError with the line of a syntax error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(path, None, f"cannot read ({e})") from e
    if not text.strip():
        raise AnnotationError(path, 1, "empty file")
    try:
        return json.loads(text), text
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno})") from None


def _list_item_lines(text: str) -> list[int]:
    """Line number where each element of a (valid) top-level JSON list starts.

    Hand-written because `json` reports no positions for parsed values; raw_decode walks the list element by
    element and gives each one's end offset.
    """
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]
    line_of = lambda pos: bisect.bisect_left(newlines, pos) + 1  # noqa: E731
    decoder, ws = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos = ws.match(text, text.index("[") + 1).end()
    lines = []
    while pos < len(text) and text[pos] != "]":
        lines.append(line_of(pos))
        _, pos = decoder.raw_decode(text, pos)
        pos = ws.match(text, pos).end()
    return lines


def _ssv2_split(path: Path) -> str:
    name = path.name.lower()
    for key, split in (("validation", "val"), ("val", "val"), ("test", "test"), ("train", "train")):
        if key in name:
            return split
    return "train"


def _ssv2_rows(path: Path, video_root: Path) -> list[_Row]:
    items, text = _read_json(path)
    if not isinstance(items, list):
        raise AnnotationError(path, 1, f"expected a JSON list of objects, got {type(items).__name__}")
    if not items:
        raise AnnotationError(path, 1, "empty list: no videos")
    split = _ssv2_split(path)
    out = []
    for line, item in zip(_list_item_lines(text), items):
        if not isinstance(item, dict):
            raise AnnotationError(path, line, f"expected an object, got {type(item).__name__}")
        if "id" not in item or not isinstance(item["id"], (str, int)) or str(item["id"]).strip() == "":
            raise AnnotationError(path, line, "missing or invalid 'id'")
        if isinstance(item.get("template"), str):
            class_name = re.sub(r"\[([^\]]*)\]", r"\1", item["template"])  # "[something]" → "something"
        elif isinstance(item.get("label"), str):
            class_name = item["label"]
        else:
            raise AnnotationError(path, line, "missing 'template' or 'label'")
        video_id = str(item["id"]).strip()
        candidates = [video_root / f"{video_id}{ext}" for ext in (".webm", ".mp4")]
        file = next((c for c in candidates if c.is_file()), candidates[0])
        out.append(_Row(line, video_id, _absolute(file), class_name.strip(), split))
    return out


# class list ---------------------------------------------------------------------------------------
def _read_class_list(path: Path) -> list[str]:
    """Class names in index order from a JSON dict name → index, a JSON list, or a text file (one per line)."""
    if not path.is_file():
        raise AnnotationError(path, None, "labels file not found")
    if path.suffix.lower() != ".json":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        names = [n.strip() for n in lines if n.strip()]
        if not names:
            raise AnnotationError(path, 1, "empty labels file")
        return _unique_names(path, names)
    value, _ = _read_json(path)
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise AnnotationError(path, 1, "expected a non-empty list of class names")
        return _unique_names(path, value)
    if isinstance(value, dict):
        try:
            by_index = {int(v): k for k, v in value.items()}
        except (TypeError, ValueError):
            raise AnnotationError(path, None, "expected class name → integer index") from None
        if sorted(by_index) != list(range(len(value))):
            raise AnnotationError(path, None, f"class indices must be 0..{len(value) - 1}, each once")
        return [by_index[i] for i in range(len(value))]
    raise AnnotationError(path, 1, f"expected a JSON dict or list, got {type(value).__name__}")


def _unique_names(path: Path, names: list[str]) -> list[str]:
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            raise AnnotationError(path, None, f"class {name!r} listed twice (entry {i})")
        seen.add(name)
    return list(names)


def _sorted_classes(names) -> list[str]:
    names = set(names)
    if all(re.fullmatch(r"\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


# ------------------------------------------------------------------------------------------------ build
def _build(data: Path, rows: list[_Row], class_list, val_fraction: float, seed: int) -> VideoDataset:
    where = lambda r: data if r.line is not None else r.path  # noqa: E731 — the file an error names
    first_line: dict[str, _Row] = {}
    for r in rows:
        if r.id in first_line:
            first = first_line[r.id]
            previous = f" (first on line {first.line})" if first.line is not None else f" (also {first.path})"
            raise AnnotationError(where(r), r.line, f"duplicate id {r.id!r}{previous}")
        first_line[r.id] = r
    classes = class_list if class_list is not None else _sorted_classes(r.class_name for r in rows)
    index = {name: i for i, name in enumerate(classes)}
    for r in rows:
        if r.class_name not in index:
            raise AnnotationError(where(r), r.line, f"unknown label {r.class_name!r} (not in the labels file)")
    val = hashed_val_ids(((r.id, r.class_name) for r in rows if r.split is None), val_fraction, seed)
    records = [
        VideoRecord(r.id, r.path, index[r.class_name], r.split if r.split is not None else ("val" if r.id in val else "train")) for r in rows
    ]
    return VideoDataset(records, list(classes))
