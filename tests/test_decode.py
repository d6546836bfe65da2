"""PyAV streaming decode: timing from demuxed packets, fps/stride sampling by content, VFR, resizing, streaming
memory, and one named error for every kind of bad file."""

from __future__ import annotations

import inspect
import pickle
import tracemalloc

import numpy as np
import pytest

from vivitcache.data.decode import (
    Frame,
    VideoDecodeError,
    frame_times,
    iter_frames,
    probe_video,
    read_frames,
    sample_times,
)


def reference_fps_rule(times: np.ndarray, fps: float) -> list[int]:
    """The fps rule written out directly from its definition: for each target k/fps (< duration, from the first
    frame), the first frame at or after it; duplicates dropped."""
    t = np.asarray(times) - times[0]
    picked = []
    k = 0
    while k / fps <= t[-1] + 1e-9:
        i = int(np.argmax(t >= k / fps - 1e-9))
        if i not in picked:
            picked.append(i)
        k += 1
    return picked


# ------------------------------------------------------------------------------------------------ basics
@pytest.mark.parametrize("codec,suffix", [("libx264", ".mp4"), ("mpeg4", ".mp4"), ("ffv1", ".mkv")])
def test_every_frame_decodes_in_order(make_video, frame_index, codec, suffix):
    path = make_video(f"order_{codec}{suffix}", frames=12, size=(40, 24), fps=25, codec=codec)
    frames = list(iter_frames(path))
    assert [f.source_index for f in frames] == list(range(12))
    assert [f.index for f in frames] == list(range(12))
    assert [frame_index(f.image) for f in frames] == list(range(12))
    assert all(f.image.shape == (24, 40, 3) and f.image.dtype == np.uint8 for f in frames)
    np.testing.assert_allclose([f.time for f in frames], np.arange(12) / 25, atol=1e-6)


def test_probe_video(make_video):
    path = make_video("probe.mp4", frames=20, size=(48, 32), fps=20)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames) == (48, 32, 20)
    assert info.fps == pytest.approx(20.0)
    assert info.duration == pytest.approx(1.0, abs=0.06)
    assert info.path == str(path)


def test_frame_times_constant_and_variable_rate(make_video, vfr_times):
    constant = make_video("times_cfr.mp4", frames=10, fps=25)
    np.testing.assert_allclose(frame_times(constant), np.arange(10) / 25, atol=1e-6)
    vfr = make_video("times_vfr.mp4", frames=17, fps=25, vfr=True)
    times = frame_times(vfr)
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, vfr_times(17, 25), atol=1e-6)
    assert len(np.unique(np.round(np.diff(times), 4))) >= 3  # really variable


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("stride", [1, 2, 3, 7])
def test_stride_keeps_every_kth_frame(make_video, frame_index, stride):
    path = make_video("stride.mp4", frames=20, fps=25)
    frames = list(iter_frames(path, stride=stride))
    expected = list(range(0, 20, stride))
    assert [f.source_index for f in frames] == expected
    assert [frame_index(f.image) for f in frames] == expected
    assert [f.index for f in frames] == list(range(len(expected)))
    assert sample_times(frame_times(path), stride=stride).tolist() == expected


def test_fps_picks_first_frame_at_or_after_each_target(make_video, frame_index):
    path = make_video("fps.mp4", frames=20, fps=25)  # frames at 0, 0.04, ..., 0.76 s
    # 5 fps: targets 0, .2, .4, .6 fall exactly on frames 0, 5, 10, 15
    assert [frame_index(f.image) for f in iter_frames(path, fps=5)] == [0, 5, 10, 15]
    # 10 fps: targets .1, .3, .5, .7 fall between frames: the next frame (.12 → 3, .32 → 8, ...)
    assert [frame_index(f.image) for f in iter_frames(path, fps=10)] == [0, 3, 5, 8, 10, 13, 15, 18]
    # faster than the source: every frame once, never duplicated
    assert [f.source_index for f in iter_frames(path, fps=60)] == list(range(20))
    for fps in (5, 10, 60, 7.3):
        assert sample_times(frame_times(path), fps=fps).tolist() == reference_fps_rule(frame_times(path), fps)


@pytest.mark.parametrize("fps", [4.0, 10.0, 12.5, 30.0])
def test_variable_frame_rate_sampled_by_time(make_video, frame_index, vfr_times, fps):
    path = make_video("vfr.mp4", frames=24, fps=25, vfr=True)
    true_times = vfr_times(24, 25)
    expected = reference_fps_rule(true_times, fps)
    frames = list(iter_frames(path, fps=fps))
    assert [f.source_index for f in frames] == expected
    assert [frame_index(f.image) for f in frames] == expected  # the right pictures, not just the right counts
    np.testing.assert_allclose([f.time for f in frames], true_times[expected], atol=1e-6)
    assert sample_times(frame_times(path), fps=fps).tolist() == expected
    # a constant-rate assumption (every 25/fps-th frame) would pick different frames here
    assert expected != sample_times(np.arange(24) / 25, fps=fps).tolist() or fps >= 25


def test_sample_times_arguments():
    times = np.arange(10) / 10
    assert sample_times(times).tolist() == list(range(10))
    with pytest.raises(ValueError, match="not both"):
        sample_times(times, fps=5, stride=2)
    for bad in ({"fps": 0}, {"fps": -1.0}, {"stride": 0}, {"stride": 1.5}):
        with pytest.raises(ValueError):
            sample_times(times, **bad)
    # times need not start at zero: targets count from the first frame
    assert sample_times(times + 3.7, fps=5).tolist() == sample_times(times, fps=5).tolist()


# ------------------------------------------------------------------------------------------------ read_frames
def test_read_frames_order_repeats_and_sampling(make_video, frame_index):
    path = make_video("read.mp4", frames=30, fps=25)
    out = read_frames(path, [9, 2, 2, 0, 5])
    assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    assert [frame_index(im) for im in out] == [9, 2, 2, 0, 5]
    by_stride = read_frames(path, [3, 1], stride=4)  # sampled frames 3, 1 = source frames 12, 4
    assert [frame_index(im) for im in by_stride] == [12, 4]
    kept = sample_times(frame_times(path), fps=10)
    by_fps = read_frames(path, np.array([2, 0]), fps=10)
    assert [frame_index(im) for im in by_fps] == [kept[2], kept[0]]
    assert read_frames(path, []).shape == (0, 32, 32, 3)


def test_read_frames_past_the_end_names_the_file(make_video):
    path = make_video("short.mp4", frames=6)
    with pytest.raises(VideoDecodeError, match="wanted index 6") as err:
        read_frames(path, [1, 6])
    assert err.value.path == str(path)
    with pytest.raises(ValueError):
        read_frames(path, [-1])


def test_read_frames_stops_after_last_wanted_frame(make_video, frame_index, tmp_path):
    """The tail of this file is cut off: frames before the cut read fine because decoding stops early."""
    good = make_video(tmp_path / "faststart.mp4", frames=40, size=(64, 64), movflags="faststart")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: int(0.6 * good.stat().st_size)])
    assert [frame_index(im) for im in read_frames(cut, [1, 0])] == [1, 0]
    with pytest.raises(VideoDecodeError, match=str(cut)):
        read_frames(cut, [39])
    # streaming to the end yields the good frames, then names the cut-off tail
    seen = []
    with pytest.raises(VideoDecodeError, match="ends early|decoding failed"):
        for frame in iter_frames(cut):
            seen.append(frame_index(frame.image))
    assert seen == list(range(len(seen))) and 0 < len(seen) < 40


@pytest.mark.parametrize("size,resize_short,expected_hw", [((48, 32), 16, (16, 24)), ((32, 48), 16, (24, 16)),
                                                           ((40, 40), 20, (20, 20))])
def test_resize_short_keeps_aspect_and_content(make_video, frame_index, size, resize_short, expected_hw):
    path = make_video(f"resize_{size[0]}x{size[1]}.mp4", frames=5, size=size, pattern="ramp")
    frames = list(iter_frames(path, resize_short=resize_short))
    assert all(f.image.shape == (*expected_hw, 3) for f in frames)
    assert [frame_index(f.image) for f in frames] == list(range(5))
    blue = frames[0].image[..., 2].astype(int).mean(axis=0)  # ramps left → right: orientation kept
    assert blue[-1] - blue[0] > 150


# ------------------------------------------------------------------------------------------------ long video
def test_bigbuckbunny_probe_and_sampling(bbb_path):
    info = probe_video(bbb_path)
    assert (info.width, info.height) == (1280, 720)
    assert info.num_frames == len(frame_times(bbb_path)) > 100
    assert info.fps == pytest.approx(25.0)
    kept = sample_times(frame_times(bbb_path), fps=5)
    assert len(kept) == pytest.approx(info.duration * 5, abs=1)
    assert np.all(np.diff(kept) > 0)
    # the decoder applies the same rule to decoded frames' timestamps as sample_times to demuxed ones
    decoded = [f.source_index for f in iter_frames(bbb_path, fps=7, resize_short=16)]
    assert decoded == sample_times(frame_times(bbb_path), fps=7).tolist()


def test_bigbuckbunny_streams_with_bounded_memory(bbb_path):
    frames = iter_frames(bbb_path)
    assert inspect.isgenerator(frames)
    frame_bytes = 1280 * 720 * 3
    tracemalloc.start()
    try:
        count, last = 0, None
        for frame in frames:
            assert isinstance(frame, Frame) and frame.image.shape == (720, 1280, 3)
            count += 1
            last = frame.image[::90, ::160].copy()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == probe_video(bbb_path).num_frames
    assert peak < 4 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames for {count} decoded"  # not count × frame
    # the last frames through read_frames (one pass, only two kept), resized by the decoder
    tail = read_frames(bbb_path, [count - 1, count - 2], resize_short=72)
    assert tail.shape == (2, 72, 128, 3)
    full_last = read_frames(bbb_path, [count - 1])[0]
    np.testing.assert_array_equal(full_last[::90, ::160], last)


# ------------------------------------------------------------------------------------------------ bad files
READERS = {
    "probe_video": probe_video,
    "frame_times": frame_times,
    "iter_frames": lambda p: list(iter_frames(p)),
    "read_frames": lambda p: read_frames(p, [0]),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", ["zero_bytes", "random_bytes", "text", "audio_only", "truncated", "missing"])
def test_bad_video_raises_video_decode_error(bad_videos, tmp_path, kind, reader):
    path = tmp_path / "does_not_exist.mp4" if kind == "missing" else bad_videos[kind]
    with pytest.raises(VideoDecodeError) as err:
        READERS[reader](path)
    assert err.value.path == str(path)
    assert str(err.value).startswith(f"{path}: ")
    assert err.value.cause and "\n" not in str(err.value)


def test_bad_video_causes_are_specific(bad_videos, tmp_path):
    def cause(path):
        with pytest.raises(VideoDecodeError) as err:
            probe_video(path)
        return err.value.cause

    assert "empty" in cause(bad_videos["zero_bytes"])
    assert "no video stream" in cause(bad_videos["audio_only"])
    assert "not a readable video" in cause(bad_videos["text"])
    assert "not found" in cause(tmp_path / "missing.mp4")
    assert "not a file" in cause(tmp_path)


def test_video_decode_error_pickles():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/x/y.mp4", "empty file (0 bytes)")))
    assert (err.path, err.cause, str(err)) == ("/x/y.mp4", "empty file (0 bytes)", "/x/y.mp4: empty file (0 bytes)")
