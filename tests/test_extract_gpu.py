"""Extraction on GPU nodes, tested on a CPU: worker placement with a faked GPU count, the device-side front end
equal to the old CPU one, pinned staging when a GPU is there (mocked), --batch-size auto, --compile, and the two
decoders agreeing. Tiny models (vit-ti, 32 px) and videos."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from vivitcache.data.transforms import Preprocess
from vivitcache.extract import ExtractConfig, ExtractConfigError, devices, pipeline, throughput
from vivitcache.models import create_spatial, frame_tokens

TINY = dict(model="vit-ti", img_size=32, patch_size=8, spatial_depth=2)


def fake_gpus(monkeypatch, count: int, visible: str | None = None) -> None:
    """torch sees `count` CUDA devices (only the count: nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def tiny_spatial(seed: int = 0):
    torch.manual_seed(seed)
    return create_spatial("vit-ti", img_size=32, patch_size=8, depth=2).eval()


def settings(preprocess, **kw) -> pipeline.PartSettings:
    base = dict(preprocess=preprocess, fps=None, stride=None, tokens="cls", store_dtype="fp16", batch_size=8,
                device="cpu", decode_threads=1, prefetch_frames=64, torch_threads=None)
    return pipeline.PartSettings(**{**base, **kw})


# ------------------------------------------------------------------------------------------------ placement
def test_one_worker_per_gpu_with_distinct_devices_and_cores(monkeypatch):
    fake_gpus(monkeypatch, 4)
    cfg = ExtractConfig(data="d", store="s", model="vit-ti", device="cuda")
    placement = devices.resolve_placement(cfg)
    slots = placement.slots(parts=100, decode_threads=None, torch_threads=None)
    assert [s.gpu for s in slots] == ["0", "1", "2", "3"]
    cores = [c for s in slots for c in s.cpus]
    assert sorted(cores) == devices.usable_cpus() or len(devices.usable_cpus()) < 4  # disjoint, all used
    assert placement.device(in_process=False) == "cuda" and placement.device(in_process=True) == "cuda:0"
    env = [s.env() for s in slots]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == ["0", "1", "2", "3"]
    assert devices.SLOT_ENV in env[0]

    # 16 cores, 4 GPUs: 4 disjoint slices of 4; decode threads = cores but one; torch 1 thread
    slots = devices.assign_workers(list(range(16)), ["0", "1", "2", "3"], None, parts=10)
    assert [s.cpus for s in slots] == [tuple(range(4 * i, 4 * i + 4)) for i in range(4)]
    assert {(s.decode_threads, s.torch_threads) for s in slots} == {(3, 1)}


def test_gpus_option_is_honoured_through_an_inherited_mask(monkeypatch):
    fake_gpus(monkeypatch, 4, visible="4,5,6,7")  # this process was itself given GPUs 4-7
    cfg = ExtractConfig(data="d", store="s", model="vit-ti", device="cuda", gpus="0,2,3")
    placement = devices.resolve_placement(cfg)
    assert placement.gpus == ["4", "6", "7"]  # what each worker's CUDA_VISIBLE_DEVICES must say
    assert placement.device(in_process=True) == "cuda:0"
    assert devices.resolve_placement(ExtractConfig(data="d", store="s", device="cuda:2")).gpus == ["6"]
    slots = placement.slots(parts=5, decode_threads=6, torch_threads=None)
    assert [s.gpu for s in slots] == ["4", "6", "7"] and {s.decode_threads for s in slots} == {6}


@pytest.mark.parametrize("spec", ["4", "0,9", "-1", "a,b", "1,1", ","])
def test_bad_gpu_index_is_a_config_error(monkeypatch, spec):
    fake_gpus(monkeypatch, 2)
    with pytest.raises(ExtractConfigError, match="--gpus"):
        devices.resolve_placement(ExtractConfig(data="d", store="s", device="cuda", gpus=spec))


def test_no_gpu_and_scheduler_rules(monkeypatch):
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ExtractConfigError, match="no CUDA device"):
        devices.resolve_placement(ExtractConfig(data="d", store="s", device="cuda"))
    auto = devices.resolve_placement(ExtractConfig(data="d", store="s", device="auto"))
    assert auto.device(in_process=True) == "cpu" and auto.gpus is None
    # --scheduler: the client may have no GPU; each worker uses what its launcher gave it
    remote = devices.resolve_placement(ExtractConfig(data="d", store="s", device="cuda", scheduler="tcp://h:1"))
    assert remote.device(in_process=False) == "cuda"
    with pytest.raises(ExtractConfigError, match="launcher"):
        devices.resolve_placement(ExtractConfig(data="d", store="s", device="cuda", scheduler="tcp://h:1", gpus="0"))
    fake_gpus(monkeypatch, 2)
    with pytest.raises(ExtractConfigError, match="one worker per GPU"):
        devices.resolve_placement(ExtractConfig(data="d", store="s", device="cuda", workers=3)).slots(9, None, None)


def test_fewer_parts_than_workers_strands_no_core():
    """A part has one writer: with one part, one worker is started and gets every core (not half of them)."""
    lone = devices.assign_workers(list(range(8)), ["0", "1"], None, parts=1)
    assert len(lone) == 1 and lone[0].cpus == tuple(range(8)) and lone[0].decode_threads == 7
    cpu = devices.assign_workers([0, 1], None, 2, parts=1)
    assert len(cpu) == 1 and cpu[0].cpus == (0, 1) and cpu[0].torch_threads == 2
    two = devices.assign_workers([0, 1], None, 2, parts=3)
    assert [s.cpus for s in two] == [(0,), (1,)] and [s.torch_threads for s in two] == [1, 1]
    many = devices.assign_workers([0], None, 3, parts=3)  # more workers than cores: they share, none is empty
    assert [s.cpus for s in many] == [(0,), (0,), (0,)]


def test_cli_bad_gpu_index_is_one_error_line(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from vivitcache.cli import app

    fake_gpus(monkeypatch, 2)
    (tmp_path / "labels.csv").write_text("path,label\n")
    result = CliRunner().invoke(app, ["extract", "--data", str(tmp_path / "labels.csv"), "--store",
                                      str(tmp_path / "s.zarr"), "--model", "vit-ti", "--device", "cuda",
                                      "--gpus", "0,7"])
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "--gpus" in lines[0]
    assert not (tmp_path / "s.zarr").exists()  # nothing created
    bad = CliRunner().invoke(app, ["extract", "--data", "x", "--store", "y", "--batch-size", "big"])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error:")


def test_local_cluster_pins_each_worker_to_its_gpu_and_cores():
    """The real LocalCluster: each worker process starts with its own CUDA_VISIBLE_DEVICES and slot, and
    `apply_slot` pins it to the slot's cores."""
    from distributed import Client

    cpus = devices.usable_cpus()
    slots = [devices.WorkerSlot("3", (cpus[0],), 1, 1), devices.WorkerSlot("5", (cpus[-1],), 2, 1)]

    def probe():
        slot = devices.WorkerSlot.from_env()
        devices.apply_slot(slot)
        return os.environ["CUDA_VISIBLE_DEVICES"], sorted(os.sched_getaffinity(0)), slot.decode_threads

    with devices.start_local_cluster(slots, dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        seen = sorted(client.run(probe).values())
        saturation = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
    assert seen == [("3", [cpus[0]], 1), ("5", [cpus[-1]], 2)]
    assert saturation == 1.0  # a worker holds only the part it runs; the rest wait for the first free worker


# ------------------------------------------------------------------------------------------------ front end
@pytest.mark.parametrize("hw", [(37, 64), (37, 37), (50, 37), (36, 80), (20, 33)])
def test_uint8_crop_then_device_normalise_equals_the_cpu_front_end(hw):
    """Odd and even borders (torchvision's rounding of the crop anchor), frames at and not at resize_short."""
    p = Preprocess(size=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), crop_pct=0.875)  # short 36
    frames = np.random.default_rng(sum(hw)).integers(0, 256, (3, *hw, 3), dtype=np.uint8)  # [T, H, W, 3]
    crops = p.crop_uint8(list(frames))
    assert crops.dtype == torch.uint8 and crops.shape == (3, 32, 32, 3)
    new = p.normalizer("cpu")(crops)  # [T, 3, S, S]
    old = p(frames)
    if min(hw) == p.resize_short:
        torch.testing.assert_close(new, old, rtol=0, atol=0)  # bit-identical
    else:  # resized by torchvision in both: same op, same result
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6)


def test_device_encoder_on_cpu_gives_the_old_tokens():
    model = tiny_spatial(0)
    p = Preprocess.from_timm(model, 32)
    frames = np.random.default_rng(1).integers(0, 256, (10, p.resize_short, 45, 3), dtype=np.uint8)
    for kind, dtype in (("cls", "fp16"), ("all", "bf16")):
        enc = pipeline.DeviceEncoder(model, settings(p, tokens=kind, store_dtype=dtype))
        pieces = [p.crop_uint8(list(frames[:3])), p.crop_uint8(list(frames[3:]))]  # a batch across two videos
        tokens, ready = enc(pieces)
        ready()
        with torch.inference_mode():
            old = frame_tokens(model, p(frames), kind)  # [10, K, D] float32, the old CPU path
        want = torch.float16 if dtype == "fp16" else torch.bfloat16
        assert tokens.dtype == want and tokens.shape == old.shape
        torch.testing.assert_close(tokens, old.to(want), rtol=0, atol=0)  # same input, same model, same rounding


def test_fp16_overflow_is_refused_with_the_store_message():
    from vivitcache.store import StoreError

    model = tiny_spatial(0)
    p = Preprocess.from_timm(model, 32)
    with torch.no_grad():
        model.norm.bias.fill_(1e6)  # every token > 65504
    tokens, ready = pipeline.DeviceEncoder(model, settings(p))([torch.zeros((2, 32, 32, 3), dtype=torch.uint8)])
    with pytest.raises(StoreError, match="overflow fp16.*bf16"):
        ready()


def test_pinned_staging_and_side_stream_when_a_gpu_is_present(monkeypatch):
    """With a (mocked) GPU the batch is staged in pinned memory and copied with non_blocking on a side stream."""
    fake_gpus(monkeypatch, 1)
    calls = {"pinned": [], "streams": 0}
    real_empty = torch.empty

    def empty(*shape, pin_memory=False, **kw):  # pinned memory needs a real GPU: record it, allocate plainly
        calls["pinned"].append(pin_memory)
        return real_empty(*shape, **kw)

    class FakeStream:
        def __init__(self, device):
            calls["streams"] += 1

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    normalizer = Preprocess.normalizer
    monkeypatch.setattr(Preprocess, "normalizer", lambda self, device: normalizer(self, "cpu"))
    p = Preprocess(size=4, mean=(0, 0, 0), std=(1, 1, 1))
    enc = pipeline.DeviceEncoder(torch.nn.Identity(), settings(p, device="cuda"))
    pieces = [torch.full((2, 4, 4, 3), 7, dtype=torch.uint8), torch.full((1, 4, 4, 3), 9, dtype=torch.uint8)]
    staged = enc.stage(pieces)
    assert calls["pinned"] == [True] and calls["streams"] == 1
    torch.testing.assert_close(staged, torch.cat(pieces))

    copies = []
    real_to = torch.Tensor.to
    def to(self, *args, **kw):  # the host → device copy is recorded and stays on the CPU; casts run as usual
        if args and isinstance(args[0], (str, torch.device)):
            copies.append(kw)
            return real_to(self, "cpu")
        return real_to(self, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: type("S", (), {"wait_stream": lambda *a: None})())
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, s: None)
    def stop(model, x, kind, *grid_layers):
        raise RuntimeError("stop after the copy")

    monkeypatch.setattr(pipeline, "frame_tokens", stop)
    with pytest.raises(RuntimeError, match="stop after the copy"):
        enc(pieces)
    assert copies[0].get("non_blocking") is True

    cpu = pipeline.DeviceEncoder(torch.nn.Identity(), settings(p, device="cpu"))
    calls["pinned"].clear()
    cpu.stage(pieces)
    assert calls["pinned"] == [False]  # no pinned memory without a GPU


def test_padded_batches_keep_one_shape(monkeypatch):
    shapes = []
    monkeypatch.setattr(pipeline, "frame_tokens", lambda m, x, *kind_grid_layers: shapes.append(tuple(x.shape)) or x[:, :1, 0])
    p = Preprocess(size=4, mean=(0, 0, 0), std=(1, 1, 1))
    enc = pipeline.DeviceEncoder(torch.nn.Identity(), settings(p, batch_size=8, pad_batches=True))
    tokens, _ = enc([torch.ones((3, 4, 4, 3), dtype=torch.uint8)])
    assert shapes == [(8, 3, 4, 4)] and tokens.shape[0] == 3


# ------------------------------------------------------------------------------------------------ throughput
def test_largest_batch_doubles_until_out_of_memory():
    tried = []

    def runs(b):
        tried.append(b)
        if b > 200:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")

    assert throughput.largest_batch(runs) == 128 and tried == [32, 64, 128, 256]
    assert throughput.largest_batch(lambda b: None) == throughput.AUTO_MAX
    assert throughput.probe_batch_size(None, 32, torch.device("cpu")) == throughput.CPU_BATCH


def test_compile_and_auto_batch_end_to_end(tmp_path, make_video, monkeypatch):
    """--compile wraps what the token rule calls and pads batches (tokens unchanged); auto batch on a CPU is 32."""
    from vivitcache.extract import run_extract
    from vivitcache.extract import runner
    from vivitcache.store import TokenStore

    videos = [make_video(tmp_path / f"{i}.mp4", frames=n, size=(40, 32), pattern="ramp") for i, n in enumerate((9, 5))]
    (tmp_path / "labels.csv").write_text("path,label\n" + "".join(f"{v.name},a\n" for v in videos))
    compiled, batches = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn.__name__) or fn)
    real = pipeline.DeviceEncoder.__call__
    monkeypatch.setattr(pipeline.DeviceEncoder, "__call__",
                        lambda self, pieces: batches.append((self.settings.batch_size, self.settings.pad_batches))
                        or real(self, pieces))
    base = dict(TINY, data=str(tmp_path / "labels.csv"), workers=0, progress=False, shard_frames=32, chunk_frames=8)
    run_extract(ExtractConfig(**base, store=str(tmp_path / "a.zarr"), compile=True, batch_size=4))
    assert compiled == ["forward_features", "forward_head"] and set(batches) == {(4, True)}
    runner._MODELS.clear()
    batches.clear()
    run_extract(ExtractConfig(**base, store=str(tmp_path / "b.zarr")))
    assert set(batches) == {(throughput.CPU_BATCH, False)}
    a, b = TokenStore.open(tmp_path / "a.zarr"), TokenStore.open(tmp_path / "b.zarr")
    for vid in a.ids():
        np.testing.assert_allclose(a.video(vid).astype(np.float32), b.video(vid).astype(np.float32), atol=2e-3)


# ------------------------------------------------------------------------------------------------ decoders
torchcodec_missing = importlib.util.find_spec("torchcodec") is None


def _torchcodec_loads() -> bool:
    if torchcodec_missing:
        return False
    try:
        from vivitcache.data.decoders import TorchCodecDecoder

        TorchCodecDecoder()
        return True
    except ValueError:
        return False


needs_torchcodec = pytest.mark.skipif(not _torchcodec_loads(), reason="torchcodec (or FFmpeg's libraries) missing")


@needs_torchcodec
@pytest.mark.parametrize("fps, stride", [(None, None), (10.0, None), (None, 3)])
def test_decoders_agree_on_real_h264(bbb_path, tmp_path, fps, stride):
    """Same kept frames, same timestamps; pixels within resize tolerance (torchcodec resizes bilinear, PyAV as the
    preprocessing says, bicubic). bigbuckbunny cut to its first 40 frames to stay fast."""
    import av

    from vivitcache.data.decoders import get_decoder

    short = tmp_path / "bbb40.mp4"
    with av.open(str(bbb_path)) as src, av.open(str(short), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for i, packet in enumerate(src.demux(src.streams.video[0])):
            if i >= 40 or packet.dts is None:
                break
            packet.stream = stream
            dst.mux(packet)
    frames = {name: list(get_decoder(name).frames(short, fps, stride, 64, "bicubic")) for name in ("pyav", "torchcodec")}
    a, b = frames["pyav"], frames["torchcodec"]
    assert len(a) == len(b) > 5
    assert [f.source_index for f in a] == [f.source_index for f in b]
    np.testing.assert_allclose([f.time for f in a], [f.time for f in b], atol=1e-6)
    for fa, fb in zip(a, b):
        assert fa.image.shape == fb.image.shape == (64, 113, 3)
        diff = np.abs(fa.image.astype(np.int16) - fb.image.astype(np.int16))
        assert diff.mean() < 3.0, diff.mean()  # bilinear vs bicubic, both antialiased, 720p → 64 px


@needs_torchcodec
def test_torchcodec_bad_videos_are_decode_errors(bad_videos, tmp_path):
    from vivitcache.data.decode import VideoDecodeError
    from vivitcache.data.decoders import get_decoder

    for path in [*bad_videos.values(), tmp_path / "missing.mp4"]:
        with pytest.raises(VideoDecodeError):
            list(get_decoder("torchcodec").frames(path, None, None, 32, "bicubic"))


def test_unknown_decoder_is_refused():
    from vivitcache.data.decoders import get_decoder

    with pytest.raises(ValueError, match="unknown decoder"):
        get_decoder("opencv")
    with pytest.raises(ExtractConfigError, match="--decoder"):
        ExtractConfig(data="d", store="s", model="vit-ti", decoder="opencv").check()
