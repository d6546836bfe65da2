"""Failure modes of runs and of CLI input (issue 12, the run-folder half): a used --out is refused, a lock keeps two
runs apart, --resume survives a kill at any moment (also between the checkpoint swap's renames), bad options and bad
input files are one `error:` line, Ctrl-C stops an extraction promptly, and a bug keeps its traceback.

Runs use a tiny linear model on separable points (seconds); the CLI tests use a tiny token store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from vivitcache.config import OptimConfig, RunConfig
from vivitcache.errors import ConfigError
from vivitcache.training import run_folder
from vivitcache.training.checkpoint import CheckpointError, checkpoint_path, load_model_state
from vivitcache.training.loop import Task, fit
from vivitcache.lease import host_name
from vivitcache.training.run_folder import RunFolderError, RunLock, RunLockedError

REPO = Path(__file__).resolve().parents[1]


class Points(Dataset):
    """Separable points in 4-D, 3 classes."""

    def __init__(self, n=48, views=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 4, generator=g) + 4 * nn.functional.one_hot(self.y, 4).float()
        self.views = views

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i] if self.views is None else self.x[i].expand(self.views, -1)), self.y[i]


def task() -> Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.GELU(), nn.Linear(8, 3))
    return Task(model=model, forward=lambda m, x: m(x), train_set=Points(), val_set=Points(12, views=2, seed=1),
                num_classes=3, config={"run": {"resume": False}, "what": "points"}, title="points")


OPTIM = OptimConfig(epochs=2, batch_size=8, lr=1e-2, warmup_epochs=0.5)


def run(out, **kw) -> RunConfig:
    return RunConfig(out=str(out), checkpoint_every=2, log_every=1, **kw)


def same_weights(a, b) -> bool:
    sa, sb = load_model_state(a), load_model_state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def metrics(folder) -> list[dict]:
    drop = ("clips_per_s", "frames_per_s", "seconds")  # timings
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in open(Path(folder) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted run: the reference every resumed run must equal bit for bit."""
    out = tmp_path_factory.mktemp("straight") / "run"
    fit(task(), OPTIM, run(out))
    return out


# ------------------------------------------------------------------------------------------------ --out
def test_used_out_is_refused_and_overwrite_removes_only_run_files(tmp_path, straight):
    unrelated = tmp_path / "unrelated"
    (unrelated / "checkpoint").mkdir(parents=True)
    (unrelated / "checkpoint" / "mine.bin").write_bytes(b"precious")
    (unrelated / "notes.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="not empty|does not write"):
            fit(task(), OPTIM, run(unrelated, overwrite=overwrite))
    assert (unrelated / "checkpoint" / "mine.bin").read_bytes() == b"precious"
    assert sorted(p.name for p in unrelated.iterdir()) == ["checkpoint", "notes.txt"]  # no lock left behind

    used = tmp_path / "used"
    fit(task(), OptimConfig(epochs=1, batch_size=8), run(used))
    before = (used / "summary.json").read_text()
    with pytest.raises(RunFolderError, match="--resume continues its run, --overwrite"):
        fit(task(), OPTIM, run(used))
    assert (used / "summary.json").read_text() == before
    fit(task(), OPTIM, run(used, overwrite=True))  # replaces the run: same as a run into a new folder
    assert same_weights(used, straight) and metrics(used) == metrics(straight)

    with pytest.raises(ConfigError, match="--overwrite and --resume"):
        run(used, overwrite=True, resume=True)


# ------------------------------------------------------------------------------------------------ lock
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_lock_refuses_a_second_run_and_a_dead_one_is_taken_over(tmp_path, straight):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock.acquire_folder(out):  # a live run (this process) writes into out
        with pytest.raises(RunLockedError, match=f"in use by another run \\(host {host_name()}, pid "
                                                 f"{os.getpid()}"):
            fit(task(), OPTIM, run(out))
        assert not (out / "metrics.jsonl").exists()
    assert not (out / ".lock").exists()

    # kill -9 leaves its lock: same host, dead pid → taken over (it counts as a started run for --resume)
    (out / ".lock").write_text(json.dumps({"host": host_name(), "pid": _dead_pid(), "start": None}))
    fit(task(), OPTIM, run(out, resume=True))
    assert same_weights(out, straight) and not (out / ".lock").exists()

    # another host: live unless not refreshed for STALE_AFTER_S
    other = tmp_path / "other"
    other.mkdir()
    (other / ".lock").write_text(json.dumps({"host": "node-17", "pid": 1, "since": "earlier"}))
    with pytest.raises(RunLockedError, match="host node-17, pid 1"):
        fit(task(), OPTIM, run(other, resume="auto"))
    old = time.time() - run_folder.STALE_AFTER_S - 60
    os.utime(other / ".lock", (old, old))
    fit(task(), OPTIM, run(other, resume="auto"))
    assert same_weights(other, straight)


def test_a_reused_pid_does_not_keep_a_dead_lock_alive(tmp_path):
    """In containers a requeued job often gets the pid of the dead one: the process start time tells them apart."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"host": host_name(), "pid": os.getpid(), "start": "1"}))
    with RunLock.acquire_folder(out) as lock:
        assert lock.took_over["start"] == "1"


# ------------------------------------------------------------------------------------------------ --resume
def test_resume_before_the_first_checkpoint_starts_over_and_resume_auto(tmp_path, straight, capsys):
    killed_early = tmp_path / "killed_early"  # what a run killed before its first checkpoint leaves
    killed_early.mkdir()
    (killed_early / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    fit(task(), OPTIM, run(killed_early, resume=True))
    assert "no checkpoint yet" in capsys.readouterr().err
    assert same_weights(killed_early, straight) and metrics(killed_early) == metrics(straight)

    with pytest.raises(CheckpointError, match="no checkpoint and no run in"):  # a mistyped --out
        fit(task(), OPTIM, run(tmp_path / "typo", resume=True))
    fresh = tmp_path / "fresh"
    fit(task(), OPTIM, run(fresh, resume="auto"))  # nothing to continue: starts
    assert same_weights(fresh, straight)
    fit(task(), OPTIM, run(fresh, resume="auto"))  # finished run: continues (nothing left to do), same weights
    assert same_weights(fresh, straight) and metrics(fresh) == metrics(straight)


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from test_failure_modes import OPTIM, run, task
    from vivitcache.training.loop import fit

    rename, swaps = os.rename, []
    def dying_rename(src, dst):
        if os.path.basename(str(dst)).startswith(".checkpoint.old"):
            swaps.append(dst)
        elif len(swaps) == 2 and os.path.basename(str(src)).startswith(".checkpoint.tmp"):
            os._exit(9)  # killed between the two renames of the second swap: no checkpoint/ on disk
        rename(src, dst)
    os.rename = dying_rename
    fit(task(), OPTIM, run(sys.argv[1]))
""")


def test_kill_between_the_checkpoint_renames_still_resumes_bit_exactly(tmp_path, straight):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(out), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert "checkpoint" not in names and any(n.startswith(".checkpoint.old") for n in names)
    assert any(n.startswith(".checkpoint.tmp") for n in names)
    assert checkpoint_path(out).name.startswith(".checkpoint.old")  # readers (eval, --init) find it

    fit(task(), OPTIM, run(out, resume=True))
    assert same_weights(out, straight) and metrics(out) == metrics(straight)
    assert not [n for n in os.listdir(out) if n.startswith((".checkpoint", ".lock"))]


def test_a_failed_checkpoint_write_keeps_the_last_one_and_partial_temps_are_cleaned(tmp_path, straight,
                                                                                   monkeypatch):
    import vivitcache.training.checkpoint as checkpoint

    out = tmp_path / "run"
    real_save, calls = checkpoint.save_file, []

    def disk_full(tensors, path):
        calls.append(path)
        if len(calls) == 3:  # the second checkpoint's first file: half written, then ENOSPC
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(28, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="cannot write a checkpoint \\(No space left on device\\); the previous one is kept"):
        fit(task(), OPTIM, run(out))
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert sorted(os.listdir(out)) == ["checkpoint", "metrics.jsonl"]  # no temp folder, no lock
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2

    partial = out / ".checkpoint.tmp999999"  # as a kill while writing leaves it
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 10)
    fit(task(), OPTIM, run(out, resume=True))
    assert not partial.exists()
    assert same_weights(out, straight) and metrics(out) == metrics(straight)


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "--batch-size 0: must be at least 1"),
    ("accum_steps", 0, "--accum-steps 0: must be at least 1"),
    ("label_smoothing", 2.0, "--label-smoothing 2.0: must be in \\[0, 1\\)"),
    ("epochs", -1, "--epochs -1: must be at least 1"),
    ("lr", float("nan"), "--lr nan: must be a positive number"),
])
def test_option_ranges_are_named_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        OptimConfig(**{field: value})


def test_epochs_zero_and_an_indivisible_batch_are_refused_before_the_run_folder(tmp_path):
    with pytest.raises(ConfigError, match="--epochs 0: must be at least 1"):
        fit(task(), OptimConfig(epochs=0), run(tmp_path / "zero"))
    with pytest.raises(ConfigError, match="--batch-size 9: must divide by processes × --accum-steps = 2"):
        fit(task(), OptimConfig(batch_size=9, accum_steps=2), run(tmp_path / "odd"))
    with pytest.raises(ConfigError, match="more than the 48 training videos"):
        fit(task(), OptimConfig(batch_size=64), run(tmp_path / "big"))
    assert not any(tmp_path.iterdir())  # nothing written


# ------------------------------------------------------------------------------------------------ input files
def test_an_unquoted_comma_is_refused_not_misparsed(tmp_path):
    from vivitcache.data.annotations import AnnotationError, load_annotations

    header = tmp_path / "header.csv"
    header.write_text("path,label\nv/ok.mp4,cls\nv/comma,name.mp4,cls\n")
    with pytest.raises(AnnotationError, match="line 3: 3 cells under a header of 2 columns \\(path,label\\): quote"):
        load_annotations(header)
    bare = tmp_path / "bare.csv"  # no header: the third cell could be a split, but the label is a file name
    bare.write_text("v/ok.mp4,cls\nv/comma,name.mp4,cls\n")
    with pytest.raises(AnnotationError, match="line 2: label 'name.mp4' looks like a file name"):
        load_annotations(bare)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('path,label\nv/ok.mp4,cls\n"v/comma,name.mp4",cls\n')
    assert [r.id for r in load_annotations(quoted).records] == ["v/ok", "v/comma,name"]


def test_symlink_loop_fifo_and_broken_link_say_what_they_are(tmp_path):
    from vivitcache.data.decode import VideoDecodeError, iter_frames, probe_video
    from vivitcache.extract.pipeline import _source_rate

    os.symlink("loop.mp4", tmp_path / "loop.mp4")
    os.symlink("gone.mp4", tmp_path / "broken.mp4")
    os.mkfifo(tmp_path / "x.mp4")
    causes = {"loop.mp4": "symlink loop", "broken.mp4": "broken symlink (to 'gone.mp4', which does not exist)",
              "x.mp4": "a FIFO (named pipe), not a file (a video must be a regular file)"}
    for name, cause in causes.items():
        for read in (probe_video, lambda p: list(iter_frames(p))):
            with pytest.raises(VideoDecodeError) as err:
                read(tmp_path / name)
            assert err.value.cause == cause
        assert _source_rate(str(tmp_path / name)) is None  # returns: never opens the FIFO


def test_extract_ledgers_a_fifo_and_a_symlink_loop_and_finishes(tmp_path, make_video):
    import threading

    from vivitcache.extract import ExtractConfig, run_extract
    from vivitcache.store import TokenStore

    data = tmp_path / "data"
    make_video(data / "good.mp4", frames=4)
    os.mkfifo(data / "x.mp4")
    os.symlink("loop.mp4", data / "loop.mp4")
    (data / "labels.csv").write_text("path,label\ngood.mp4,a\nx.mp4,a\nloop.mp4,b\n")
    cfg = ExtractConfig(data=str(data / "labels.csv"), store=str(tmp_path / "s.zarr"), model="vit-ti", img_size=32,
                        patch_size=8, spatial_depth=1, workers=0, progress=False)
    done = []
    worker = threading.Thread(target=lambda: done.append(run_extract(cfg)), daemon=True)  # a hang must not hang us
    worker.start()
    worker.join(120)
    assert done, "extract hangs on a FIFO"
    failures = {f["id"]: f["error"] for f in TokenStore.open(tmp_path / "s.zarr").failures()}
    assert "a FIFO (named pipe), not a file" in failures["x"]
    assert "symlink loop" in failures["loop"]
    assert done[0]["done"] == 1
    from vivitcache.data.decode import ORIENTATION

    assert TokenStore.open(tmp_path / "s.zarr").fingerprint["orientation"] == ORIENTATION  # older stores refuse


def encode_oriented(path: Path, rotation: int | None, size=(48, 32), frames=3) -> Path:
    """A video with an asymmetric picture (blue ramp left → right, white top-left corner), and a display matrix of
    `rotation` degrees (counter-clockwise, PyAV's and ffprobe's sign) unless None. The coded frames do not depend
    on `rotation`: the matrix is container metadata."""
    import av

    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", "threads": "1"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            image = np.zeros((height, width, 3), dtype=np.uint8)
            image[..., 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
            image[: height // 4, : width // 4] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def coded_frames(path: Path) -> list[np.ndarray]:
    """The frames as coded (PyAV ignores the display matrix): uint8 [H, W, 3] each."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_a_rotated_video_is_decoded_as_players_show_it(tmp_path):
    import shutil as sh

    from vivitcache.data.decode import iter_frames, probe_video

    rotated_path = encode_oriented(tmp_path / "rotated.mp4", -90)
    frames = list(iter_frames(rotated_path))
    assert probe_video(rotated_path).rotation == -90 and {f.rotation for f in frames} == {-90}
    assert frames[0].image.shape == (48, 32, 3)
    for f, coded in zip(frames, coded_frames(rotated_path), strict=True):  # -90°: turned clockwise
        np.testing.assert_array_equal(f.image, np.rot90(coded, -1))
    assert frames[0].image[:4, -4:].min() > 200 and frames[0].image[:4, :4].max() < 100

    resized = next(iter_frames(rotated_path, resize_short=16))  # the short side is the displayed width
    assert resized.image.shape == (24, 16, 3)

    if sh.which("ffmpeg"):  # and FFmpeg's own player pipeline (autorotate) agrees
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(rotated_path), "-frames:v", "1", "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
        ffmpeg_frame = np.frombuffer(raw, dtype=np.uint8).reshape(48, 32, 3)
        assert np.abs(ffmpeg_frame.astype(int) - frames[0].image.astype(int)).max() <= 4  # conversions differ a bit


def test_pyav_and_torchcodec_agree_on_a_rotated_video(tmp_path):
    from vivitcache.data.decoders import get_decoder

    try:
        torchcodec = get_decoder("torchcodec")
    except ValueError:
        pytest.skip("torchcodec (or FFmpeg's shared libraries) missing")
    path = encode_oriented(tmp_path / "rotated.mp4", -90)
    a, b = list(get_decoder("pyav").frames(path, None, None, None, "bilinear")), list(torchcodec.frames(path, None, None, None, "bilinear"))
    assert [f.rotation for f in a] == [f.rotation for f in b] == [-90] * 3
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.image, fb.image)


@pytest.mark.parametrize("rotation", [90, 180])
def test_other_rotations_follow_ffmpeg(tmp_path, rotation):
    from vivitcache.data.decode import iter_frames

    path = encode_oriented(tmp_path / "turned.mp4", rotation)
    turned = next(iter_frames(path))
    assert turned.rotation == (rotation + 180) % 360 - 180  # as FFmpeg reports it, in [-180, 180)
    np.testing.assert_array_equal(turned.image, np.rot90(coded_frames(path)[0], rotation // 90))


# ------------------------------------------------------------------------------------------------ Ctrl-C
CLI = "import sys; from vivitcache.cli import main; sys.argv = ['vivitcache'] + sys.argv[1:]; main()"


def test_ctrl_c_stops_a_two_worker_extraction_promptly_and_cleanly(tmp_path, synth_dataset):
    import signal

    import psutil

    from vivitcache.extract import ExtractConfig, run_extract
    from vivitcache.store import TokenStore, verify_store

    store, data = tmp_path / "s.zarr", tmp_path / "labels.csv"
    rows = (synth_dataset / "labels.csv").read_text().splitlines()
    data.write_text("\n".join(rows[0:1] + [f"{synth_dataset / r}" for r in rows[1:11]]) + "\n")  # 10 videos
    tiny = ["--model", "vit-ti", "--img-size", "32", "--patch-size", "8", "--spatial-depth", "1"]
    proc = subprocess.Popen([sys.executable, "-c", CLI, "extract", "--data", str(data),
                             "--store", str(store), *tiny, "--workers", "2", "--videos-per-part", "1",
                             "--batch-size", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        staging = store / "staging"
        deadline = time.monotonic() + 120
        def worker_writing() -> bool:  # a part staging folder `<part>.<host>.<pid>.<token>` of a worker process
            names = [p.name.split(".") for p in staging.iterdir() if p.is_dir()] if staging.is_dir() else []
            return any(len(n) == 4 and n[2].isdigit() and int(n[2]) != proc.pid for n in names)

        while not (worker_writing() and any((store / "parts").glob("*/zarr.json"))):  # mid-run: some parts done
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no worker started a part within 120 s"
            time.sleep(0.02)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert workers
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        start = time.monotonic()
        proc.wait(30)
        assert time.monotonic() - start < 10
        assert proc.returncode == 130
        err = proc.stderr.read()
        assert "interrupted:" in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert not [w.pid for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
    assert not [p.name for p in (store / "staging").iterdir() if p.is_dir()]

    # nothing lost: the same extraction continues and completes
    summary = run_extract(ExtractConfig(data=str(data), store=str(store), model="vit-ti",
                                        img_size=32, patch_size=8, spatial_depth=1, workers=0, videos_per_part=1,
                                        batch_size=4, progress=False))
    assert summary["done"] + summary["skipped"] == 10 and summary["skipped"] >= 1
    assert len(TokenStore.open(store)) == 10 and verify_store(store) == []


# ------------------------------------------------------------------------------------------------ the CLI
def tiny_store(path: Path, videos=8, frames=12) -> Path:
    """A token store of `videos` random videos of `frames` frames, 2 classes, D=16 (no extraction needed)."""
    from vivitcache.store import StoreLayout, StoreWriter
    from vivitcache.store.writer import plan_parts

    rng = np.random.default_rng(0)
    writer = StoreWriter.create_or_open(path, {"model": "vit-ti", "weights_sha256": "0" * 64},
                                        StoreLayout("cls", 1, 16, "fp16", shard_frames=32, chunk_frames=8),
                                        ["a", "b"], {})
    ids = [f"v{i:02d}" for i in range(videos)]
    for part in plan_parts(ids, 4):
        with writer.part(part.part_id) as pw:
            for vid in part.ids:
                pw.begin_video(vid, int(vid[1:]) % 2, f"{vid}.mp4", 25.0)
                pw.append(rng.normal(size=(frames, 1, 16)).astype(np.float32), np.arange(frames) / 25.0)
                pw.end_video()
    return path


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory) -> Path:
    return tiny_store(tmp_path_factory.mktemp("cli") / "s.zarr")


def invoke(*args):
    from typer.testing import CliRunner

    from vivitcache.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=400)


TRAIN = ["train", "--frames", "4", "--epochs", "1", "--batch-size", "2", "--device", "cpu"]


def one_error_line(result, code=2) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "0", "--batch-size 0: must be at least 1"),
    ("--accum-steps", "0", "--accum-steps 0: must be at least 1"),
    ("--label-smoothing", "2", "--label-smoothing 2.0: must be in [0, 1)"),
    ("--epochs", "0", "--epochs 0: must be at least 1"),
    ("--epochs", "-1", "--epochs -1: must be at least 1"),
    ("--frames", "100000", "--frames 100000: more than the longest training video"),
])
def test_bad_numeric_options_are_one_error_line(tmp_path, cli_store, option, value, message):
    result = invoke(*TRAIN, "--store", cli_store, "--out", tmp_path / "run", option, value)
    assert message in one_error_line(result)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_run_folder_lock_resume_auto_and_a_damaged_checkpoint(tmp_path, cli_store):
    out = tmp_path / "run"
    assert invoke(*TRAIN, "--store", cli_store, "--out", out, "--resume", "auto").exit_code == 0
    assert "is not empty" in one_error_line(invoke(*TRAIN, "--store", cli_store, "--out", out))
    with RunLock.acquire_folder(out):  # a second run into the same --out while one writes
        assert "in use by another run" in one_error_line(invoke(*TRAIN, "--store", cli_store, "--out", out,
                                                                "--resume"))
    assert invoke(*TRAIN, "--store", cli_store, "--out", out, "--overwrite").exit_code == 0
    assert "unexpected argument 'sometimes'" in one_error_line(
        invoke(*TRAIN, "--store", cli_store, "--out", out, "--resume", "sometimes"))

    model = out / "checkpoint" / "model.safetensors"
    model.write_bytes(b"\xff" * 8 + b"{not a header")  # a damaged checkpoint file: named, one line
    line = one_error_line(invoke("eval", "--store", cli_store, "--checkpoint", out))
    assert "model.safetensors: unreadable checkpoint file" in line


def test_a_bug_keeps_its_traceback_and_bad_input_does_not(tmp_path, cli_store, monkeypatch):
    import vivitcache.store as store

    def buggy(path):
        raise ValueError("an internal invariant broke")  # a bug, not bad input

    monkeypatch.setattr(store, "store_info", buggy)
    result = invoke("info", cli_store)
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "error:" not in result.output
    monkeypatch.undo()
    assert "token store" in one_error_line(invoke("info", tmp_path))
    if not torch.cuda.is_available():
        line = one_error_line(invoke(*TRAIN, "--store", cli_store, "--out", tmp_path / "r", "--device", "cuda"))
        assert "--device cuda: torch sees no CUDA device" in line


class _Payload:
    """Pickled, it runs `touch <marker>` when unpickled by anything that runs pickle code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_what_already_held_still_holds_pickle_payloads_and_bad_headers(tmp_path, synth_dataset):
    marker = tmp_path / "pwned"
    for suffix in (".pth", ".bin", ".ckpt"):
        evil = tmp_path / f"evil{suffix}"
        torch.save({"state_dict": _Payload(marker)}, evil)
        line = one_error_line(invoke("extract", "--data", synth_dataset / "labels.csv", "--store", tmp_path / "s.zarr",
                                     "--model", "vit-ti", "--img-size", "32", "--patch-size", "8",
                                     "--spatial-depth", "1", "--weights", evil, "--workers", "0"))
        assert str(evil) in line and not marker.exists()
    line = one_error_line(invoke("extract", "--data", synth_dataset / "labels.csv", "--store", tmp_path / "s.zarr",
                                 "--model", "vit-ti", "--batch-size", "0", "--workers", "0"))
    assert "--batch-size '0': give a number >= 1 or auto" in line
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 8 + b"{not a header")
    line = one_error_line(invoke("extract", "--data", synth_dataset / "labels.csv", "--store", tmp_path / "s.zarr",
                                 "--model", "vit-ti", "--weights", bad, "--workers", "0"))
    assert str(bad) in line


def test_an_unwritable_out_is_one_named_error(tmp_path):
    (tmp_path / "a_file").write_text("")  # --out inside a file: cannot be created, whoever runs it
    with pytest.raises(RunFolderError, match="a_file/run: cannot write the run folder \\(Not a directory\\)"):
        fit(task(), OPTIM, run(tmp_path / "a_file" / "run"))


def test_a_class_folder_lists_broken_entries_so_they_are_ledgered(tmp_path, make_video):
    from vivitcache.data.annotations import load_annotations

    make_video(tmp_path / "data" / "a" / "good.mp4", frames=2)
    os.symlink("loop.mp4", tmp_path / "data" / "a" / "loop.mp4")
    (tmp_path / "data" / "b").mkdir()
    os.mkfifo(tmp_path / "data" / "b" / "x.mp4")
    (tmp_path / "data" / "b" / "clip.mp4").mkdir()  # a folder named like a video is not one
    assert [r.id for r in load_annotations(tmp_path / "data").records] == ["a/good", "a/loop", "b/x"]
