"""`run_extract`: plan the parts still to do, fan them out (Dask or in-process), show progress, summarise.

Work unit = one part of the store's recorded plan (`extract/work.py`: the plan never depends on history, so runs
with other annotations or `--videos-per-part` never commit a video twice). One Dask task per part; the task claims
the part (`store/claims.py`, skipped while another live writer holds it) and its `PartWriter` owns the whole part,
so no two writers ever touch a shard. Each Dask worker builds the
spatial model once (cached per process, keyed by its recipe, which includes the weights sha256) and reuses it for
every part it runs. Resume is the store's commit protocol: committed parts are skipped, staging folders of dead
writers are removed, everything else is redone from scratch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch import nn

from vivitcache.data.annotations import VideoRecord, load_annotations
from vivitcache.errors import UserError
from vivitcache.extract import devices
from vivitcache.extract.config import ExtractConfig
from vivitcache.extract.pipeline import DeviceEncoder, PartSettings, Report, extract_videos
from vivitcache.extract.throughput import compile_spatial, probe_batch_size
from vivitcache.extract.source import SpatialSpec, resolve_source
from vivitcache.extract.work import disk_errors, find_work, storage_layout
from vivitcache.progress import make_progress
from vivitcache.provenance import provenance
from vivitcache.store import StoreWriter, TokenStore

PROGRESS_TOPIC = "vivitcache-extract-progress"
"""Dask event topic on which workers report progress to the client."""


class ExtractFailures(UserError, RuntimeError):
    """strict mode: some videos could not be extracted (they are in the store's failure ledger)."""

    def __init__(self, failures: list[dict], summary: dict):
        self.failures, self.summary = failures, summary
        first = failures[0]
        more = f" (and {len(failures) - 1} more; see `vivitcache info`)" if len(failures) > 1 else ""
        super().__init__(f"{len(failures)} video(s) failed: {first['id']!r}: {first['error']}{more}")


@dataclass
class PartJob:
    """One Dask task: write one part of the store (picklable)."""

    store: StoreWriter
    """The store (path + fingerprint records)."""
    part_id: str
    """Part id from `plan_parts`."""
    records: list[VideoRecord]
    """The part's videos, in id order."""
    spec: SpatialSpec
    """Recipe of the spatial model (with its weights sha256)."""
    settings: PartSettings
    """Decode/model/batch settings shared by all parts."""
    workers_per_host: dict[str, int] | None = None
    """Dask workers per host address, to split a host's cores among workers started by someone else."""
    compile: bool = False
    """torch.compile the spatial model (once per worker process)."""
    claim_timeout_s: float = 120.0
    """A claim on a part whose heartbeat is older than this is taken over (its writer is presumed dead)."""


# ------------------------------------------------------------------------------------------------ worker side
_MODELS: dict[tuple, tuple[nn.Module, int]] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(spec: SpatialSpec | None, settings: PartSettings, compile: bool, model: nn.Module | None = None,
                 ) -> tuple[nn.Module, int]:
    """(the spatial model on the settings' device, its batch size), prepared once per (worker) process and kept for
    its next parts: built from `spec` (or the given in-process `model`), `--batch-size auto` probed (eager), then
    compiled if asked."""
    key = (spec, settings.device, settings.batch_size, compile, id(model))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()  # one model per worker process: a new extraction replaces the last one
            built = (model if model is not None else spec.build()).to(settings.device)
            batch = settings.batch_size or probe_batch_size(
                lambda b: DeviceEncoder(built, replace(settings, batch_size=b, pad_batches=False)),
                settings.preprocess.size, torch.device(settings.device))
            _MODELS[key] = (compile_spatial(built) if compile else built, batch)
        return _MODELS[key]


def run_part(job: PartJob, model: nn.Module | None = None, report: Report | None = None) -> dict:
    """Extract one part and commit it; returns the writer's result (+ seconds). `model`: the built spatial model
    (in-process), else the worker's cached one. A part already committed (another writer won, or an earlier
    attempt of this task) is skipped.
    """
    s = job.settings
    if s.torch_threads is not None and torch.get_num_threads() != s.torch_threads:
        torch.set_num_threads(s.torch_threads)
    writer = job.store.part(job.part_id)
    skipped = {"part_id": job.part_id, "committed": False, "already_committed": True, "claimed_elsewhere": False,
               "frames": 0, "bytes": 0, "videos": 0, "failures": 0}
    if writer.already_committed:
        return skipped
    claim = job.store.claim(job.part_id, timeout_s=job.claim_timeout_s)
    if not claim.acquire():  # a live writer is on it: do not do its work twice
        return {**skipped, "already_committed": False, "claimed_elsewhere": True,
                "claimed_by": {"part_id": job.part_id, **(claim.holder or {})}}
    try:
        if writer.already_committed:  # committed between our first look and our claim
            return skipped
        start = time.perf_counter()
        model, batch_size = cached_model(job.spec, s, job.compile, model)
        s = replace(s, batch_size=batch_size, pad_batches=job.compile)
        begin = time.perf_counter()  # after the worker's one-off model build, batch probe and compile
        with disk_errors(job.store.path), writer:
            extract_videos(model, job.records, writer, s, report)
        extract_seconds = time.perf_counter() - begin
    finally:
        claim.release()
    return {**writer.result, "claimed_elsewhere": False, "seconds": time.perf_counter() - start,
            "extract_seconds": extract_seconds, "worker": f"{socket.gethostname()}:{os.getpid()}"}


_MALLOC_TUNED = False


def undo_dask_malloc_trim() -> None:
    """Give back glibc's large-allocation behaviour that Dask's nanny switches off (once per process).

    Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, and setting that disables glibc's dynamic mmap
    threshold: every tensor over 128 KiB is then a fresh mmap + page faults + munmap, which made extraction ~1.5x
    slower in a worker than in-process (sys time 2 s → 18 s on the benchmark). Setting the thresholds to what the
    dynamic rule would reach (mmap 32 MiB, its maximum on 64-bit; trim 2x that) restores in-process speed. Only on
    glibc; elsewhere a no-op.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _MALLOC_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 64 * 2**20)


def run_part_on_worker(job: PartJob) -> dict:
    """Dask task: `run_part`, reporting progress as Dask events the client subscribes to."""
    from distributed import get_worker

    undo_dask_malloc_trim()
    worker = get_worker()  # captured here: the reports come from the part's writer thread
    slot = devices.WorkerSlot.from_env()  # set by our LocalCluster; None: a worker someone else started
    if slot is None:  # its own affinity (and GPU), shared with the other workers on its host
        share = (job.workers_per_host or {}).get(_host_of(worker.address), 1)
        s = job.settings
        slot = devices.slot_from_affinity(s.device.startswith("cuda"), share, s.decode_threads, s.torch_threads)
    devices.apply_slot(slot)
    job = replace(job, settings=replace(job.settings, decode_threads=slot.decode_threads,
                                        torch_threads=slot.torch_threads))

    def report(**counts):
        worker.log_event(PROGRESS_TOPIC, counts)

    return run_part(job, report=report)


# ------------------------------------------------------------------------------------------------ progress
class ExtractProgress:
    """Rich bars over videos (with ETA) and frames (frames/s; total estimated from the mean video length)."""

    def __init__(self, enabled: bool, videos: int):
        self.bar = make_progress(enabled)
        self.lock = threading.Lock()
        self.total_videos, self.videos, self.frames, self.failed = videos, 0, 0, 0
        self.start = time.perf_counter()
        self.videos_task = self.bar.add_task("videos", total=videos, info="")
        self.frames_task = self.bar.add_task("frames", total=None, info="")

    def __enter__(self) -> ExtractProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def __call__(self, videos: int = 0, frames: int = 0, failed: int = 0) -> None:
        """Add counts (from the writer threads, or Dask events on the client's event thread)."""
        with self.lock:
            self.videos += videos + failed
            self.frames += frames
            self.failed += failed
            self._show()

    def finish(self, videos: int, frames: int, failed: int) -> None:
        """Set the final counts from the part results (Dask events may still be in flight when the tasks end)."""
        with self.lock:
            self.videos, self.frames, self.failed = videos + failed, frames, failed
            self._show()

    def _show(self) -> None:
        rate = self.frames / max(time.perf_counter() - self.start, 1e-9)
        done_ok = self.videos - self.failed
        estimate = round(self.frames / done_ok * (self.total_videos - self.failed)) if done_ok else None
        self.bar.update(self.videos_task, completed=self.videos, info=f"{self.failed} failed")
        self.bar.update(self.frames_task, completed=self.frames, total=estimate, info=f"{rate:,.0f} frames/s")


# ------------------------------------------------------------------------------------------------ fan-out
def _host_of(address: str) -> str:
    """'tcp://10.0.0.5:40123' → '10.0.0.5' (the `host` field of the scheduler's worker info)."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def _run_in_process(jobs: list[PartJob], model: nn.Module, progress: ExtractProgress) -> list[dict]:
    results = []
    before = torch.get_num_threads()
    try:
        for job in jobs:
            results.append(run_part(job, model=model, report=progress))
    finally:
        torch.set_num_threads(before)
    return results


def _run_on_dask(jobs: list[PartJob], cfg: ExtractConfig, progress: ExtractProgress,
                 slots: list[devices.WorkerSlot]) -> list[dict]:
    from distributed import Client, as_completed

    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:  # one pinned worker per slot (GPU and cores): extract.devices
        # workers log only what is fatal: a part's error reaches us through its future, and a Ctrl-C that reaches the
        # workers too (the terminal signals the whole group) would otherwise print their heartbeat tracebacks
        cluster = devices.start_local_cluster(slots, dashboard_address=None, silence_logs=logging.CRITICAL)
        client = Client(cluster)
        client.wait_for_workers(len(slots))
    futures: dict = {}
    try:
        def on_event(event):  # (time, msg); Dask adds a "worker" key to msg
            progress(**{k: v for k, v in event[1].items() if k in ("videos", "frames", "failed")})

        client.subscribe_topic(PROGRESS_TOPIC, on_event)
        hosts = Counter(w["host"] for w in client.scheduler_info()["workers"].values())
        jobs = [replace(job, workers_per_host=dict(hosts)) for job in jobs]
        run = uuid.uuid4().hex[:8]  # keys unique per run: a long-lived cluster must not hand back an old result
        futures = {client.submit(run_part_on_worker, job, key=f"extract-{run}-{job.part_id}", pure=False): job
                   for job in jobs}
        results, errors = [], []
        for future in as_completed(futures):
            try:
                results.append(future.result())
            except Exception as e:  # noqa: BLE001 — the other parts go on; the first error is raised at the end
                errors.append((futures[future].part_id, e))
        if errors:
            part_id, first = errors[0]
            if len(errors) > 1:
                logging.getLogger(__name__).error("%d parts failed; first: part %s", len(errors), part_id)
            raise first
        return results
    except KeyboardInterrupt:
        client.cancel(list(futures))
        if cluster is not None:
            _kill_workers(cluster)
        raise
    finally:
        client.unsubscribe_topic(PROGRESS_TOPIC)
        client.close()
        if cluster is not None:
            cluster.close()


def _kill_workers(cluster) -> None:
    """Ctrl-C: end the worker processes of our LocalCluster at once (SIGKILL) rather than wait for a busy one to
    finish its batch (the nanny gives up after seconds, then kills anyway). Nothing is lost: a part is published by
    one rename or not at all, and `run_extract` removes the dead writers' staging folders."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # the nannies would report each kill
    for nanny in list(cluster.workers.values()):
        pid = getattr(getattr(getattr(nanny, "process", None), "process", None), "pid", None)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextlib.contextmanager
def _staging_removed_on_interrupt(store: StoreWriter):
    """Ctrl-C: the staging folders of this run's writers (dead by now: in-process writers discard theirs, Dask
    workers were killed) are removed before the KeyboardInterrupt goes on; committed parts stay."""
    try:
        yield
    except KeyboardInterrupt:
        store.cleanup_stale_staging()
        raise


# ------------------------------------------------------------------------------------------------ entry point
def _summary(store: StoreWriter, videos: int, work, jobs: list, results: list[dict], seconds: float) -> dict:
    """What `run_extract` returns (its docstring lists the keys)."""
    part_sizes = {j.part_id: j.records for j in jobs}
    frames = sum(r["frames"] for r in results if r["committed"])
    return {
        "store": str(store.path),
        "videos": videos,
        "done": sum(r["videos"] for r in results if r["committed"]),
        "skipped": work.skipped + sum(len(part_sizes[r["part_id"]]) for r in results if r["already_committed"]),
        "claimed_elsewhere": sum(len(part_sizes[r["part_id"]]) for r in results if r.get("claimed_elsewhere")),
        "claims": [r["claimed_by"] for r in results if r.get("claimed_elsewhere")],
        "labels_updated": work.labels_updated,
        "retried": work.retried,
        "repaired_parts": work.repaired,
        "failed": sum(r["failures"] for r in results if r["committed"]),
        "frames": frames,
        "bytes": sum(r["bytes"] for r in results if r["committed"]),
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 1) if seconds > 0 else 0.0,
        "parts": len(results),
    }


def run_extract(cfg: ExtractConfig) -> dict:
    """Extract every video of `cfg.data` into `cfg.store` (creating or resuming it); returns the summary:

    {store, videos, done, skipped, failed, frames, bytes, seconds, frames_per_s, parts}: `done` videos committed
    by this run, `skipped` already in the store (committed or in the ledger), `failed` added to the ledger now,
    `frames`/`bytes` written now. strict: ExtractFailures after finishing if any video of `cfg.data` is in the ledger.
    """
    start = time.perf_counter()
    cfg.check()
    placement = devices.resolve_placement(cfg)  # before anything is loaded: a bad --gpus is an error line
    # Absolute: ids are paths relative to the annotations, and must not depend on the working directory.
    dataset = load_annotations(os.path.abspath(cfg.data), cfg.video_root, cfg.labels)
    source, model = resolve_source(replace(cfg, shard_frames=cfg.shard_frames or cfg.chunk_frames_for_layout()))
    source = replace(source, layout=storage_layout(cfg, source.layout))  # shards sized by bytes
    store = StoreWriter.create_or_open(
        cfg.store, source.fingerprint, source.layout, dataset.classes,
        provenance={**provenance(), "extract_config": cfg.to_dict()},
    )
    with disk_errors(store.path):
        store.cleanup_stale_staging()
        work = find_work(store, dataset.records, cfg)  # the store's part plan, changed labels, damaged parts
    parts = work.parts

    in_process = cfg.workers == 0 and not cfg.scheduler
    settings = PartSettings(
        preprocess=source.preprocess, fps=source.fps, stride=source.stride, tokens=source.layout.tokens,
        grid=source.layout.grid, layers=source.layout.layers,
        store_dtype=cfg.dtype, batch_size=cfg.batch_size, device=placement.device(in_process),
        decode_threads=cfg.decode_threads or devices.default_decode_threads(len(devices.usable_cpus()),
                                                                            placement.gpus is not None),
        prefetch_frames=cfg.prefetch_frames,
        # None: in-process, 1 thread beside a GPU (idle OpenMP threads spin and take the decoders' cores: 0.84x ->
        # 1.01x of decode-only in bench_extract's null-model row), torch's default on a CPU; on Dask the slot's
        torch_threads=cfg.torch_threads or (1 if placement.on_gpu else None),
        decoder=cfg.decoder,
    )
    slots = placement.slots(len(parts), cfg.decode_threads, cfg.torch_threads)
    jobs = [PartJob(store, part_id, records, source.spec, settings, compile=cfg.compile,
                    claim_timeout_s=cfg.claim_timeout_s) for part_id, records in parts]
    with ExtractProgress(cfg.progress and bool(jobs), work.videos) as progress, _staging_removed_on_interrupt(store):
        if not jobs:
            results = []
        elif in_process:
            results = _run_in_process(jobs, model, progress)
        else:
            del model  # workers build their own; do not hold a second copy of a large model here
            results = _run_on_dask(jobs, cfg, progress, slots)
        committed = [r for r in results if r["committed"]]
        progress.finish(sum(r["videos"] for r in committed), sum(r["frames"] for r in committed),
                        sum(r["failures"] for r in committed))
    with disk_errors(store.path):
        # Incremental; writes nothing when the index is fresh (a finished store may be read-only). Parts this run
        # published are re-read even if indexed: it may have re-created a vanished or repaired one under its id.
        store.consolidate(reread={r["part_id"] for r in results if r["committed"]})

    summary = _summary(store, len(dataset.records), work, jobs, results, time.perf_counter() - start)
    if cfg.strict:
        wanted = {r.id for r in dataset.records}
        failures = [f for f in TokenStore.open(store.path).failures() if f["id"] in wanted]
        if failures:
            raise ExtractFailures(failures, summary)
    return summary
