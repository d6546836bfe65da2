"""Annotations: folder / CSV / Kinetics CSV / SSv2 JSON load into records; bad input raises AnnotationError naming
the file and the line. Video files here are empty placeholders: annotations never open them."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from vivitcache.data.annotations import AnnotationError, VideoDataset, VideoRecord, load_annotations


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def by_id(ds: VideoDataset) -> dict[str, VideoRecord]:
    return {r.id: r for r in ds.records}


# ------------------------------------------------------------------------------------------------ folder
def test_folder_per_class_with_hashed_split(tmp_path):
    for cls in ("walk", "jump", "run"):
        for i in range(10):
            touch(tmp_path / cls / f"v{i}.mp4")
    touch(tmp_path / "jump" / "nested" / "deep.webm")
    touch(tmp_path / "jump" / "notes.txt")  # not a video
    touch(tmp_path / "jump" / ".hidden.mp4")
    (tmp_path / "empty_class").mkdir()
    ds = load_annotations(tmp_path, val_fraction=0.2, seed=0)
    assert ds.classes == ["jump", "run", "walk"]
    records = by_id(ds)
    assert len(records) == 31
    deep = records["jump/nested/deep"]
    assert deep.label == 0 and deep.path == str(tmp_path / "jump" / "nested" / "deep.webm")
    assert os.path.isabs(deep.path)
    assert records["walk/v3"].label == 2
    # stratified: round(0.2 · n) val videos per class
    for cls, n in (("jump", 11), ("run", 10), ("walk", 10)):
        val = [r for r in ds.split("val") if r.id.startswith(cls + "/")]
        assert len(val) == round(0.2 * n)
    assert len(ds.split("train")) + len(ds.split("val")) == 31
    again = load_annotations(tmp_path, val_fraction=0.2, seed=0)
    assert again.records == ds.records  # deterministic
    other_seed = load_annotations(tmp_path, val_fraction=0.2, seed=1)
    assert {r.id for r in other_seed.split("val")} != {r.id for r in ds.split("val")}


def test_folder_with_train_and_val_subfolders(tmp_path):
    touch(tmp_path / "train" / "a" / "1.mp4")
    touch(tmp_path / "train" / "b" / "2.avi")
    touch(tmp_path / "val" / "a" / "3.mkv")
    touch(tmp_path / "val" / "c" / "4.MOV")
    ds = load_annotations(tmp_path)
    assert ds.classes == ["a", "b", "c"]
    assert {r.id: (r.split, ds.classes[r.label]) for r in ds.records} == {
        "train/a/1": ("train", "a"),
        "train/b/2": ("train", "b"),
        "val/a/3": ("val", "a"),
        "val/c/4": ("val", "c"),
    }


def test_folder_without_videos(tmp_path):
    (tmp_path / "a").mkdir()
    touch(tmp_path / "a" / "readme.txt")
    with pytest.raises(AnnotationError, match="no class sub-folders") as err:
        load_annotations(tmp_path)
    assert str(tmp_path) in str(err.value)


# ------------------------------------------------------------------------------------------------ CSV
def test_csv_with_header_and_split(tmp_path):
    csv = write(
        tmp_path / "ann" / "labels.csv",
        "path,label,split\nclips/x.mp4,dance,train\nclips/y.mp4,cook,validation\n/abs/z.mp4,dance,test\n",
    )
    ds = load_annotations(csv)
    assert ds.classes == ["cook", "dance"]
    r = by_id(ds)
    assert r["clips/x"] == VideoRecord("clips/x", str(tmp_path / "ann" / "clips" / "x.mp4"), 1, "train")
    assert r["clips/y"].split == "val" and r["clips/y"].label == 0
    assert r["abs/z"].path == "/abs/z.mp4" and r["abs/z"].split == "test"


def test_csv_without_header_video_root_and_numeric_labels(tmp_path):
    lines = [f"v{i}.mp4,{i % 12}" for i in range(24)]
    csv = write(tmp_path / "list.csv", "\n".join(lines) + "\n")
    root = tmp_path / "videos"
    ds = load_annotations(csv, video_root=root, val_fraction=0.5)
    assert ds.classes == [str(i) for i in range(12)]  # numeric order, not "0", "1", "10", "11", "2"
    assert all(ds.classes[r.label] == str(int(r.id[1:]) % 12) for r in ds.records)
    assert by_id(ds)["v5"].path == str(root / "v5.mp4")
    assert len(ds.split("val")) == 12 and len(ds.split("train")) == 12  # 1 of each class's 2


def test_csv_with_labels_file_fixes_class_order(tmp_path):
    csv = write(tmp_path / "l.csv", "a.mp4,zebra\nb.mp4,ant\n")
    labels = write(tmp_path / "classes.txt", "zebra\nant\nbee\n")
    ds = load_annotations(csv, labels=labels)
    assert ds.classes == ["zebra", "ant", "bee"]
    assert [r.label for r in ds.records] == [0, 1]


# ------------------------------------------------------------------------------------------------ Kinetics
def test_kinetics_csv_finds_videos_in_both_layouts(tmp_path):
    root = tmp_path / "k400"
    nested = touch(root / "train" / "playing guitar" / "abc123_000010_000020.mp4")
    flat = touch(root / "xyz789_000005_000015.mp4")
    csv = write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "playing guitar,abc123,10,20,train\n"
        "abseiling,xyz789,5,15,validate\n"
        "abseiling,missing0,0,10,train\n",
    )
    ds = load_annotations(csv, video_root=root)
    assert ds.classes == ["abseiling", "playing guitar"]
    r = by_id(ds)
    assert r["abc123_000010_000020"].path == str(nested) and r["abc123_000010_000020"].label == 1
    assert r["xyz789_000005_000015"].path == str(flat) and r["xyz789_000005_000015"].split == "val"
    assert r["missing0_000000_000010"].path == str(root / "missing0_000000_000010.mp4")  # missing: not an error


# ------------------------------------------------------------------------------------------------ SSv2
def test_ssv2_json_with_labels_dict(tmp_path):
    root = tmp_path / "20bn"
    touch(root / "101.webm")
    touch(root / "102.mp4")
    labels = write(
        tmp_path / "labels.json",
        json.dumps({"Putting something on a surface": "1", "Pushing something from left to right": "0"}),
    )
    items = [
        {"id": "101", "label": "putting a pen on a table", "template": "Putting [something] on a surface",
         "placeholders": ["a pen"]},
        {"id": "102", "template": "Pushing [something] from left to right"},
        {"id": 103, "label": "Pushing something from left to right"},
    ]
    ann = write(tmp_path / "something-something-v2-validation.json", json.dumps(items, indent=1))
    ds = load_annotations(ann, video_root=root, labels=labels)
    assert ds.classes == ["Pushing something from left to right", "Putting something on a surface"]
    r = by_id(ds)
    assert (r["101"].label, r["102"].label, r["103"].label) == (1, 0, 0)
    assert r["101"].path == str(root / "101.webm") and r["102"].path == str(root / "102.mp4")
    assert r["103"].path == str(root / "103.webm")  # neither exists: the default name, not an error
    assert {rec.split for rec in ds.records} == {"val"}
    train = write(tmp_path / "train.json", json.dumps(items[:1]))
    assert load_annotations(train, video_root=root, labels=labels).records[0].split == "train"


# ------------------------------------------------------------------------------------------------ errors
def _bad_cases(tmp_path: Path) -> list[tuple[Path, dict, int | None, str]]:
    """(annotation file, extra kwargs, line named in the error, words of the cause)."""
    labels = write(tmp_path / "labels.json", json.dumps({"a": 0, "b": 1}))
    return [
        (write(tmp_path / "missing_col.csv", "path,label\nx.mp4,a\ny.mp4\n"), {}, 3, "missing column"),
        (write(tmp_path / "too_many.csv", "x.mp4,a\ny.mp4,a,train,extra\n"), {}, 2, "path,label"),
        (write(tmp_path / "empty_label.csv", "x.mp4,a\n\ny.mp4, \n"), {}, 3, "empty label"),
        (write(tmp_path / "unknown.csv", "x.mp4,a\ny.mp4,zzz\n"), {"labels": labels}, 2, "unknown label"),
        (write(tmp_path / "dup.csv", "path,label\nx.mp4,a\ny.mp4,b\nx.mp4,b\n"), {}, 4, "duplicate id"),
        (write(tmp_path / "empty.csv", ""), {}, 1, "empty"),
        (write(tmp_path / "header_only.csv", "path,label,split\n"), {}, 1, "no video rows"),
        (write(tmp_path / "bad_header.csv", "path,category\nx.mp4,a\n"), {}, 1, "label"),
        (write(tmp_path / "k.csv", "label,youtube_id,time_start,time_end,split\na,id1,1,2,train\na,id2,x,3,train\n"),
         {}, 3, "not numbers"),
        (write(tmp_path / "kdup.csv", "label,youtube_id,time_start,time_end\na,id1,1,2\nb,id1,1,2\n"),
         {}, 3, "duplicate id"),
        (write(tmp_path / "broken.json", '[\n  {"id": "1", "template": "a"},\n  {"id": "2" "template": "b"}\n]'),
         {}, 3, "invalid JSON"),
        (write(tmp_path / "no_template.json", '[\n {"id": "1", "template": "a"},\n {"id": "2"}\n]'), {}, 3,
         "template"),
        (write(tmp_path / "no_id.json", '[\n {"id": "1", "template": "a"},\n\n {"template": "b"}\n]'), {}, 4, "id"),
        (write(tmp_path / "dup.json", '[{"id": "1", "template": "a"},\n{"id": "1", "template": "b"}]'), {}, 2,
         "duplicate id"),
        (write(tmp_path / "unknown.json", '[{"id": "1", "template": "a"},\n {"id": "2", "template": "[c]"}]'),
         {"labels": labels}, 2, "unknown label"),
        (write(tmp_path / "not_list.json", '{"id": "1"}'), {}, 1, "list"),
        (write(tmp_path / "empty.json", "  \n"), {}, 1, "empty"),
        (write(tmp_path / "empty_list.json", "[]"), {}, 1, "no videos"),
    ]


def test_every_bad_input_names_file_and_line(tmp_path):
    for path, kwargs, line, cause in _bad_cases(tmp_path):
        with pytest.raises(AnnotationError) as err:
            load_annotations(path, **kwargs)
        message = str(err.value)
        assert message.startswith(f"{path}, line {line}: "), message
        assert cause in message, message
        assert err.value.line == line and err.value.path == str(path)
        assert "\n" not in message


def test_bad_labels_file_and_missing_annotations(tmp_path):
    csv = write(tmp_path / "ok.csv", "x.mp4,a\n")
    bad = write(tmp_path / "labels.json", '{"a": 0, "b": 2}')
    with pytest.raises(AnnotationError, match="indices") as err:
        load_annotations(csv, labels=bad)
    assert str(bad) in str(err.value)
    with pytest.raises(AnnotationError, match="not found"):
        load_annotations(tmp_path / "nope.csv")
    with pytest.raises(AnnotationError, match="listed twice"):
        load_annotations(csv, labels=write(tmp_path / "dup.txt", "a\nb\na\n"))


def test_annotation_error_is_a_value_error_and_pickles():
    err = AnnotationError("/data/x.csv", 7, "duplicate id 'a'")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.cause, str(again)) == (err.path, 7, err.cause, str(err))
