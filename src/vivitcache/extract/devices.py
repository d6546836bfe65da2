"""Where extraction work runs: one worker process per GPU, each pinned to its device and to its share of the cores.

```
this process: affinity = cores C, GPUs visible = G (or --gpus)      one Dask worker per slot (spawned processes)
assign_workers ──► WorkerSlot(gpu=G[i], cpus=C[i·|C|/n : (i+1)·|C|/n])  ──► env CUDA_VISIBLE_DEVICES=G[i]
                 n = min(workers or |G|, parts)                          + VIVITCACHE_SLOT (cores, threads)
```
- **Pinning by `CUDA_VISIBLE_DEVICES`, set per worker process by us**, not dask-cuda's `LocalCUDACluster`: a
  `pip install --dry-run dask-cuda` (26.10) beside our stack downgrades dask and distributed (2026.8.0 → 2026.7.1,
  pinned exactly by rapids-dask-dependency) and pulls pandas, bokeh and cuda-core, for what is one environment
  variable per worker. We do what it does (a `LocalCluster` whose `new_worker_spec` gives each worker its own env),
  in a few lines. In the worker, `cuda` is then `cuda:0`, its one visible GPU.
- With `--scheduler` the launcher places workers (dask-jobqueue / SLURM: one GPU per worker process); the worker
  uses the GPU it was given and the cores in its own affinity (`slot_from_affinity`).
- Never more workers than parts: a part has exactly one writer, so a worker without a part would hold cores (and
  a GPU) idle; with fewer workers each gets a larger share of the cores (a lone worker gets them all).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch

from vivitcache.extract.config import ExtractConfigError

SLOT_ENV = "VIVITCACHE_SLOT"
"""Environment variable carrying a worker's `WorkerSlot` (JSON) into its process."""


@dataclass(frozen=True)
class WorkerSlot:
    """One extraction worker: its GPU, its cores and how it uses them."""

    gpu: str | None
    """The worker's GPU as this process names it in CUDA_VISIBLE_DEVICES (index or UUID); None on CPU."""
    cpus: tuple[int, ...]
    """Cores the worker is pinned to (its share of this process's affinity)."""
    decode_threads: int
    """Videos decoded at the same time in the worker."""
    torch_threads: int
    """torch intra-op threads of the worker."""

    def env(self) -> dict[str, str]:
        """Environment of the worker process: its one visible GPU, and this slot for `apply_slot`."""
        env = {SLOT_ENV: json.dumps(asdict(self))}
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    @classmethod
    def from_env(cls) -> WorkerSlot | None:
        """The slot a worker process was started with, or None (a worker started by someone else)."""
        raw = os.environ.get(SLOT_ENV)
        if not raw:
            return None
        d = json.loads(raw)
        return cls(d["gpu"], tuple(d["cpus"]), int(d["decode_threads"]), int(d["torch_threads"]))


def usable_cpus() -> list[int]:
    """Cores this process may run on (its affinity mask, which containers and batch systems restrict)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def visible_gpus() -> list[str]:
    """GPUs this process sees, named as a child's CUDA_VISIBLE_DEVICES must name them (torch index i → entry i)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [n.strip() for n in inherited.split(",")] if inherited else [str(i) for i in range(count)]
    return names[:count]


def select_gpus(spec: str | None, visible: list[str]) -> list[int]:
    """`--gpus 0,2,3` → torch indices [0, 2, 3] among the visible GPUs (None: all); ExtractConfigError when bad."""
    if not visible:
        raise ExtractConfigError("extract: --device cuda asked for, but torch sees no CUDA device")
    if spec is None:
        return list(range(len(visible)))
    try:
        chosen = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise ExtractConfigError(f"extract: --gpus {spec!r}: give GPU indices like 0,2,3") from None
    bad = [i for i in chosen if not 0 <= i < len(visible)]
    if bad or not chosen:
        raise ExtractConfigError(
            f"extract: --gpus {spec!r}: {len(visible)} GPU(s) visible, indices 0-{len(visible) - 1}"
        )
    if len(set(chosen)) != len(chosen):
        raise ExtractConfigError(f"extract: --gpus {spec!r}: each GPU once (one worker per GPU)")
    return chosen


def default_decode_threads(cores: int, on_gpu: bool) -> int:
    """Decode threads for a worker with `cores` cores: all but one on a GPU (that one feeds the GPU and writes);
    2 on a CPU, whose cores mostly run the model (torch threads)."""
    return max(1, cores - 1) if on_gpu else 2


def assign_workers(
    cpus: list[int], gpus: list[str] | None, workers: int | None, parts: int,
    decode_threads: int | None = None, torch_threads: int | None = None,
) -> list[WorkerSlot]:
    """One slot per worker process to start: on GPUs one per GPU in `gpus` (`workers` may ask for fewer), on the
    CPU `workers` (default 1); never more than `parts`. Cores are split into contiguous, disjoint slices (shared
    round-robin only when there are more workers than cores). Threads not given are derived from the slice."""
    if gpus is not None:
        if workers is not None and workers > len(gpus):
            raise ExtractConfigError(
                f"extract: --workers {workers} > {len(gpus)} GPU(s): one worker per GPU (a worker's decode threads "
                "use the cores)"
            )
        n = len(gpus) if workers is None else workers
    else:
        n = 1 if workers is None else workers
    n = max(1, min(n, parts))
    slots = []
    for i in range(n):
        share = tuple(cpus[i * len(cpus) // n:(i + 1) * len(cpus) // n]) or (cpus[i % len(cpus)],)
        slots.append(WorkerSlot(
            gpu=gpus[i] if gpus is not None else None,
            cpus=share,
            decode_threads=decode_threads or default_decode_threads(len(share), gpus is not None),
            torch_threads=torch_threads or (1 if gpus is not None else len(share)),
        ))
    return slots


def slot_from_affinity(on_gpu: bool, sharing: int, decode_threads: int | None, torch_threads: int | None) -> WorkerSlot:
    """The slot of a worker someone else started (`--scheduler`): its own affinity, shared by `sharing` workers
    on its host; its GPU is whatever its launcher made visible (`cuda` = cuda:0)."""
    cpus = usable_cpus()
    cores = max(1, len(cpus) // max(1, sharing))
    return WorkerSlot(None, tuple(cpus), decode_threads or default_decode_threads(cores, on_gpu),
                      torch_threads or (1 if on_gpu else cores))


_PINNED = False


def apply_slot(slot: WorkerSlot) -> None:
    """Pin this worker process to its slot's cores and set its torch threads (the affinity once per process)."""
    global _PINNED
    if not _PINNED and slot.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, slot.cpus)
        _PINNED = True
    if torch.get_num_threads() != slot.torch_threads:
        torch.set_num_threads(slot.torch_threads)


def start_local_cluster(slots: list[WorkerSlot], **kwargs):
    """A Dask LocalCluster with one single-threaded worker process per slot, each with `slot.env()` (its GPU).

    What dask-cuda's LocalCUDACluster does, without the dependency (module docstring): `new_worker_spec` hands
    each new worker the env of the next free slot. Worker saturation 1.0: a worker holds only the part it runs, the
    others wait on the scheduler for whichever worker frees first (Dask's default 1.1 queues a second part on each
    single-threaded worker, which can leave a worker idle at the end while another still has a part queued).
    """
    import dask
    from distributed import LocalCluster

    class PinnedCluster(LocalCluster):
        def new_worker_spec(self):
            name = next(f"slot-{i}" for i in range(len(slots)) if f"slot-{i}" not in self.worker_spec)
            spec = {"cls": self.new_spec["cls"], "options": dict(self.new_spec["options"])}
            spec["options"]["env"] = slots[int(name.split("-")[1])].env()
            return {name: spec}

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):  # read when the scheduler starts
        cluster = PinnedCluster(n_workers=0, threads_per_worker=1, processes=True, **kwargs)
    cluster.scale(len(slots))
    return cluster


@dataclass(frozen=True)
class Placement:
    """Where one extraction runs: the CPU, or these GPUs (one worker each), with this process's cores."""

    gpus: list[str] | None
    """Selected GPUs, named as CUDA_VISIBLE_DEVICES names them (None: CPU, or GPUs a --scheduler's launcher gave)."""
    first_index: int
    """torch index of the first selected GPU (what an in-process run uses)."""
    on_gpu: bool
    """Whether the model runs on CUDA."""
    workers: int | None
    """--workers as given (None: one per GPU, or 1 on the CPU)."""
    cpus: list[int]
    """Cores of this process's affinity, split among the workers started here."""

    def device(self, in_process: bool) -> str:
        """Torch device of the model: `cuda:i` in this process; `cuda` (its one visible GPU) in a worker."""
        if not self.on_gpu:
            return "cpu"
        return f"cuda:{self.first_index}" if in_process else "cuda"

    def slots(self, parts: int, decode_threads: int | None, torch_threads: int | None) -> list[WorkerSlot]:
        """The worker processes a LocalCluster starts for `parts` parts (`assign_workers`)."""
        return assign_workers(self.cpus, self.gpus, self.workers, parts, decode_threads, torch_threads)


def resolve_placement(cfg) -> Placement:
    """Placement of an `ExtractConfig`; ExtractConfigError for a GPU that is not there (`--gpus 7`, `cuda:7`).

    `--device cuda:i` is `--gpus i`. With `--scheduler` nothing is checked here (this process may have no GPU): each
    worker uses what its launcher made visible.
    """
    cpus = usable_cpus()
    cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if not cuda:
        return Placement(None, 0, False, cfg.workers, cpus)
    if cfg.scheduler:
        if cfg.gpus is not None:
            raise ExtractConfigError("extract: --gpus is for workers started here; with --scheduler each worker "
                                     "uses the GPU its launcher gave it (CUDA_VISIBLE_DEVICES)")
        return Placement(None, 0, True, cfg.workers, cpus)
    spec = cfg.gpus
    if ":" in cfg.device:
        if spec is not None:
            raise ExtractConfigError(f"extract: --device {cfg.device} and --gpus are exclusive (use --device cuda)")
        spec = cfg.device.split(":", 1)[1]
    visible = visible_gpus()
    chosen = select_gpus(spec, visible)
    return Placement([visible[i] for i in chosen], chosen[0], True, cfg.workers, cpus)
