"""Seeding, distributed setup and peak-memory measurement for both training stages (device and precision:
`vivitcache.device`)."""

from __future__ import annotations

import ctypes
import functools
import os
import random
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist



def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world_size() -> int:
    """Processes of this run: torchrun's WORLD_SIZE, 1 without torchrun (readable before the process group exists)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of torchrun (its RANK), or the only process (readable before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


class Distributed:
    """Process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""

    def __init__(self, device: torch.device):
        self.world = world_size()
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            dist.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over processes (identity for one process)."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def worker_init_fn(workers: int):
    """The DataLoader's `worker_init_fn` for `workers` processes: each dies with this one (`die_with_parent`)."""
    return functools.partial(die_with_parent, os.getpid()) if workers > 0 else None


def die_with_parent(parent_pid: int, worker_id: int = 0) -> None:
    """In a DataLoader worker (`worker_init_fn`, bound to the trainer's pid): the worker dies
    when its trainer does, even by `kill -9`, instead of living on with its copy of the data.

    torch's own watchdog only looks between batches and a worker can then hang at exit on its result queue, so: on
    Linux the kernel sends SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG; strictly, when the thread that
    started the worker ends: our DataLoaders are iterated on the main thread); elsewhere, or if prctl fails, a
    daemon thread polls the parent pid every `PARENT_POLL_S` seconds. Either way a parent already gone exits now."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:  # died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="vivitcache-parent-watch", daemon=True).start()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # not sys.exit: the worker's queues would wait for a reader that is gone


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak on GPU; on CPU, resident set size sampled every 5 ms.

    Hand-written because the stdlib only has the process-lifetime peak (`ru_maxrss`), which cannot separate
    two runs in one process (the side-by-side benchmark needs that).
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.start_bytes = self.peak_bytes = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes())
