"""One part, end to end: decode its videos on threads, run the spatial ViT on batches, write tokens in order.

```
decode threads ───────► batcher ──────────► DeviceEncoder ─────────(bounded queue)──► writer thread ──► PartWriter
 decoder (decode +       fixed-size batches  pinned uint8 staging ─► copy       waits for the batch's
 swscale resize) +       that cross video    (side stream) ─► normalise + model  D2H copy, then begin/append/
 uint8 center crop,      boundaries          on the device ─► tokens in the      end/abort_video, add_failure
 a whole video/thread                        store dtype, async copy back        (in stream order)
 (queue per video, at most `prefetch_frames` frames ahead per thread)
```
- Decode thread t takes videos t, t+T, t+2T, ... of the part and streams each (never whole in memory) into that
  video's queue, holding at most `prefetch_frames` frames ahead of the batcher; the batcher reads the videos in
  part order, so while it consumes video i the other threads already decode i+1 … i+T-1. PyAV and torch release
  the GIL, so decode, model and writes overlap.
- Batches are cut every `batch_size` frames of the ordered frame stream, whatever the decode timing: the same part
  always gives the same batches, hence bit-identical tokens on a re-run (what makes resume exact).
- Frames of a video that fails midway are dropped from the batcher (they are its tail) and the writer aborts the
  video; a video that fails before any frame, or has none after sampling, goes to the ledger with `add_failure`.
- The CPU only decodes, resizes (swscale) and copies the uint8 crop of each frame (`Preprocess.crop_uint8`); the
  float conversion and normalisation run on the model's device (`DeviceEncoder`). On a GPU the batch is staged in
  pinned memory, copied on a side stream while the previous batch computes, and the tokens come back through
  pinned memory without blocking the batcher: the writer thread waits for them. On a CPU the same code runs with
  no copies, and gives the same tokens as the old all-CPU front end.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import av
import numpy as np
import torch
from torch import nn

from vivitcache.data.annotations import VideoRecord
from vivitcache.data.decode import VideoDecodeError, check_video_file
from vivitcache.data.decoders import get_decoder
from vivitcache.data.transforms import Preprocess
from vivitcache.models.tokens import frame_tokens
from vivitcache.store import PartWriter, StoreError
from vivitcache.device import autocast, autocast_dtype

Report = Callable[..., None]
"""`report(videos=0, frames=0, failed=0)`: progress counts, called as tokens are written (from the writer thread)."""

NO_FRAMES = "no frames after sampling (video too short for the fps/stride, or empty)"

_POLL_S = 0.1  # how often a blocked thread checks whether the part was cancelled


@dataclass(frozen=True)
class PartSettings:
    """How every part of one extraction is processed (the same for all parts and workers)."""

    preprocess: Preprocess
    """Frame preprocessing; the decoder already resizes the short side to `preprocess.resize_short`."""
    fps: float | None
    """Frame sampling by rate (None: not by rate)."""
    stride: int | None
    """Frame sampling by stride (None: not by stride)."""
    tokens: str
    """Token kind (`store.layout.TOKEN_KINDS`)."""
    store_dtype: str
    """fp16 or bf16: bf16 model outputs are handed to the store unconverted when the store is bf16."""
    batch_size: int
    """Frames per model forward (resolved: `throughput.resolve_batch_size` turns `auto` into a number)."""
    device: str
    """Resolved torch device name (cpu, cuda, cuda:1)."""
    decode_threads: int
    """Videos decoded at the same time."""
    prefetch_frames: int
    """Frames each decode thread may hold ahead of the model."""
    torch_threads: int | None
    """torch intra-op threads for this worker (None: leave torch's setting)."""
    decoder: str = "pyav"
    """Video decoder (`data.decoders`): pyav or torchcodec."""
    grid: int = 0
    """N of `grid` tokens (0: not a grid)."""
    layers: tuple[int, ...] = (-1,)
    """Blocks the tokens come from, deepest first (`models.tokens.canonical_layers`)."""
    pad_batches: bool = False
    """Pad every batch to `batch_size` rows (one input shape, so a compiled model never recompiles)."""

    @property
    def decode_group(self) -> int:
        """Frames decoded, cropped and queued together (amortises queue and crop overheads); not the store's
        `chunk_frames`."""
        return max(1, min(16, self.batch_size))


# ------------------------------------------------------------------------------------------------ decoding
def _source_rate(path: str) -> float | None:
    """Average frame rate from the container header (no demuxing); None when unknown or unreadable.

    Only informational (the store keeps every frame's time); a bad file is reported by `iter_frames` instead.
    """
    try:
        check_video_file(path)  # never hand FFmpeg a FIFO: opening one blocks forever
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            return float(rate) if rate else None
    except (VideoDecodeError, av.error.FFmpegError, OSError, IndexError, ValueError, UnicodeDecodeError):
        return None


def stored_fps(source_rate: float | None, fps: float | None, stride: int | None) -> float | None:
    """Nominal rate of the stored frames: the sampling rate (at most the source's), source / stride, or the source's."""
    if fps is not None:
        return min(fps, source_rate) if source_rate else fps
    if source_rate is None:
        return None
    return source_rate / stride if stride else source_rate


def decode_chunks(record: VideoRecord, settings: PartSettings) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """A video as cropped uint8 chunks: (frames [n, S, S, 3] uint8, times [n] float64). Raises VideoDecodeError."""
    p = settings.preprocess
    images, times = [], []
    frames = get_decoder(settings.decoder).frames(record.path, settings.fps, settings.stride, p.resize_short,
                                                  p.interpolation)
    try:
        for frame in frames:
            images.append(frame.image)  # [h, w, 3] uint8
            times.append(frame.time)
            if len(images) == settings.decode_group:
                yield p.crop_uint8(images), np.asarray(times, dtype=np.float64)
                images, times = [], []
    finally:
        frames.close()
    if images:
        yield p.crop_uint8(images), np.asarray(times, dtype=np.float64)


class _Cancelled(Exception):
    pass


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    """Blocking put that gives up when the part is cancelled (a consumer that died never drains the queue)."""
    while True:
        if stop.is_set():
            raise _Cancelled
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event, error: list):
    while True:
        if error:
            raise error[0]
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set() and not error:
                raise _Cancelled from None


class PrefetchingDecoder:
    """Decode a part's videos on `threads` threads, each a whole video at a time; iterate them in order.

    `for record, events in decoder:` gives each video's events in order: ("start", stored fps), then
    ("frames", x uint8 [n,S,S,3], times [n]) …, then ("end", None) or ("error", message).
    Memory: each thread holds at most `prefetch_frames` decoded frames not yet taken by the consumer, over all
    its videos (a per-thread budget, not a per-video queue size: short videos must not pile up a whole part).
    """

    def __init__(self, records: list[VideoRecord], settings: PartSettings):
        self.records, self.settings = records, settings
        self.queues = [queue.Queue() for _ in records]  # unbounded; the budgets below bound them
        self.stop = threading.Event()
        self.errors: list[BaseException] = []  # unexpected (non-decode) errors: they fail the part
        self.n = max(1, min(settings.decode_threads, len(records)))
        chunks = max(1, settings.prefetch_frames // settings.decode_group)
        self.budgets = [threading.Semaphore(chunks) for _ in range(self.n)]  # free chunk slots per thread
        self.threads = [threading.Thread(target=self._work, args=(t,), daemon=True, name=f"decode-{t}")
                        for t in range(self.n)]

    def _work(self, t: int) -> None:
        try:
            for i in range(t, len(self.records), self.n):
                self._decode(self.records[i], self.queues[i], self.budgets[t])
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 — handed to the consumer thread, which raises it
            self.errors.append(e)
            self.stop.set()

    def _decode(self, record: VideoRecord, q: queue.Queue, budget: threading.Semaphore) -> None:
        s = self.settings
        q.put(("start", stored_fps(_source_rate(record.path), s.fps, s.stride)))
        try:
            for x, times in decode_chunks(record, s):
                while not budget.acquire(timeout=_POLL_S):  # wait for the consumer, unless cancelled
                    if self.stop.is_set():
                        raise _Cancelled
                q.put(("frames", x, times))
        except VideoDecodeError as e:
            q.put(("error", str(e)))
            return
        q.put(("end", None))

    def __enter__(self) -> PrefetchingDecoder:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def __iter__(self) -> Iterator[tuple[VideoRecord, Iterator[tuple]]]:
        for i, record in enumerate(self.records):
            yield record, self._events(self.queues[i], self.budgets[i % self.n])

    def _events(self, q: queue.Queue, budget: threading.Semaphore) -> Iterator[tuple]:
        while True:
            event = _get(q, self.stop, self.errors)
            if event[0] == "frames":
                budget.release()
            yield event
            if event[0] in ("end", "error"):
                return


# ------------------------------------------------------------------------------------------------ writing
class OrderedSink:
    """Applies token writes and video ends/failures to a PartWriter, in stream order, on its own thread.

    Encoding tokens to the store dtype, checksumming and shard writes run here while the model computes the next
    batch. Errors (e.g. StoreError) are re-raised in the producing thread at its next call.
    """

    def __init__(self, writer: PartWriter, report: Report | None, depth: int = 2):
        self.writer, self.report = writer, report
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.current: VideoRecord | None = None
        self.fps: dict[str, float | None] = {}  # id → stored fps, from "start" until the video is begun
        self.videos = self.failures = self.frames = 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="token-writer")
        self.thread.start()

    def submit(self, ops: list[tuple], ready: Callable[[], None] | None = None) -> None:
        """Queue ops: ("start", record, fps) | ("tokens", record, tokens [n, K, D], times [n]) | ("end", record, None)
        | ("fail", record, message). `ready()` is called first (waits until the tokens have arrived)."""
        self._put((ready, ops))

    def close(self) -> None:
        """Wait until every op is applied; re-raise a writer error."""
        self._put((None, None))
        self.thread.join()
        if self.errors:
            raise self.errors[0]

    def _put(self, item) -> None:
        try:
            _put(self.q, item, self.stop)
        except _Cancelled:
            pass
        if self.errors:  # the writer thread died: its error, not a silent stop, is what the caller sees
            raise self.errors[0]

    def cancel(self) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        try:
            while True:
                ready, ops = _get(self.q, self.stop, [])
                if ops is None:
                    return
                if ready is not None:
                    ready()
                for op in ops:
                    self._apply(*op)
        except _Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 — re-raised by submit/close in the producing thread
            self.errors.append(e)
            self.stop.set()

    def _apply(self, kind: str, record: VideoRecord, *args) -> None:
        w = self.writer
        if kind == "start":
            self.fps[record.id] = args[0]
        elif kind == "tokens":
            tokens, times = args
            if self.current is not record:
                w.begin_video(record.id, record.label, record.path, self.fps.pop(record.id, None))
                self.current = record
            w.append(tokens, times)
            self.frames += len(times)
            if self.report:
                self.report(frames=len(times))
        elif kind == "end":
            if self.current is record:
                w.end_video()
                self.current = None
                self.videos += 1
                if self.report:
                    self.report(videos=1)
            else:
                self._fail(record, NO_FRAMES)
        elif kind == "fail":
            self._fail(record, args[0])
        else:  # pragma: no cover — programming error
            raise ValueError(f"unknown sink op {kind!r}")

    def _fail(self, record: VideoRecord, error: str) -> None:
        self.fps.pop(record.id, None)
        if self.current is record:
            self.writer.abort_video(error)
            self.current = None
        else:
            self.writer.add_failure(record.id, record.path, error)
        self.failures += 1
        if self.report:
            self.report(failed=1)


class TokenBatcher:
    """Cuts the ordered frame stream into `batch_size` batches, runs the model, hands results to the sink in order.

    Holds an ordered list of events: frames (possibly split across batches) and video ends/failures, so an end is
    applied only after the video's last frames have been through the model.
    """

    def __init__(self, encode: DeviceEncoder, sink: OrderedSink, batch_size: int):
        self.encode, self.sink, self.batch_size = encode, sink, batch_size
        self.events: deque[list] = deque()  # ["frames", record, x, times] | [control kind, record, arg]
        self.pending = 0  # frames waiting in `events`

    def frames(self, record: VideoRecord, x: torch.Tensor, times: np.ndarray) -> None:
        self.events.append(["frames", record, x, times])
        self.pending += len(x)
        while self.pending >= self.batch_size:
            self._run(self.batch_size)
        self._control()

    def control(self, kind: str, record: VideoRecord, arg=None) -> None:
        """A "start" (arg: stored fps) or "end" of a video, applied after every frame before it."""
        self.events.append([kind, record, arg])
        self._control()

    def fail(self, record: VideoRecord, error: str) -> None:
        # This video is the newest in the stream, so its waiting frames are the tail of `events`.
        while self.events and self.events[-1][0] == "frames" and self.events[-1][1] is record:
            self.pending -= len(self.events.pop()[2])
        self.events.append(["fail", record, error])
        self._control()

    def flush(self) -> None:
        while self.pending:
            self._run(min(self.pending, self.batch_size))
        self._control()

    def _control(self) -> None:
        """Send the ends/failures at the head of the stream (no frames before them are waiting)."""
        ops = []
        while self.events and self.events[0][0] != "frames":
            kind, record, arg = self.events.popleft()
            ops.append((kind, record, arg))
        if ops:
            self.sink.submit(ops)

    def _run(self, n: int) -> None:
        """Take the first n waiting frames (and the ends between them), encode them, send tokens and ends in order."""
        ops_in_order, pieces, taken = [], [], 0
        while taken < n:
            event = self.events[0]
            if event[0] != "frames":
                ops_in_order.append(tuple(self.events.popleft()))
                continue
            _, record, x, times = event
            take = min(len(x), n - taken)
            if take == len(x):
                self.events.popleft()
            else:
                event[2], event[3] = x[take:], times[take:]
            pieces.append(x[:take])
            ops_in_order.append(("tokens", record, taken, taken + take, times[:take]))
            taken += take
        self.pending -= n
        tokens, ready = self.encode(pieces)  # [n, K, D], arriving once ready() returns
        ops = [(op[0], op[1], tokens[op[2]:op[3]], op[4]) if op[0] == "tokens" else op for op in ops_in_order]
        self.sink.submit(ops, ready)


FP16_MAX = 65504.0


class DeviceEncoder:
    """uint8 frame pieces on the CPU → tokens [n, K, D] in the store dtype on the CPU, the work on the model's device.

    `encoder(pieces) -> (tokens, ready)`: the pieces are copied once into one staging batch (pinned memory on a
    GPU), which goes to the device on a side stream (so it overlaps the previous batch's compute), is normalised
    there (`Preprocess.normalizer`), runs through the model in inference mode under bf16 autocast on CUDA (fp32
    on CPU), is converted to the store dtype on the device and copied back into pinned memory without blocking.
    `ready()` (called by the writer thread) waits for that copy and refuses fp16 overflow with the store's
    message. Staging buffers come from torch's caching pinned-memory allocator, which reuses a block only after the
    copies recorded on it have finished: that is the double buffering, without our own ring of buffers.
    On a CPU there is no copy and `ready` does nothing.
    """

    def __init__(self, model: nn.Module, settings: PartSettings):
        self.model, self.settings = model, settings
        self.device = torch.device(settings.device)
        self.cuda = self.device.type == "cuda"
        self.amp = autocast_dtype("auto", self.device)  # bf16 on CUDA with bf16 support, None (fp32) on CPU
        self.dtype = torch.bfloat16 if settings.store_dtype == "bf16" else torch.float16
        self.normalize = settings.preprocess.normalizer(self.device)
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None

    def stage(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """The pieces as one uint8 batch [rows, S, S, 3] on the CPU (pinned on a GPU; zero-padded to batch_size
        rows when `pad_batches`)."""
        n = sum(len(p) for p in pieces)
        rows = max(n, self.settings.batch_size) if self.settings.pad_batches else n
        staged = torch.empty((rows, *pieces[0].shape[1:]), dtype=torch.uint8, pin_memory=self.cuda)
        torch.cat(pieces, out=staged[:n])  # the one CPU copy of the pixels
        if rows > n:
            staged[n:].zero_()
        return staged

    def __call__(self, pieces: list[torch.Tensor]) -> tuple[torch.Tensor, Callable[[], None]]:
        n = sum(len(p) for p in pieces)
        staged = self.stage(pieces)  # [rows, S, S, 3] uint8
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self.copy_stream):
                x = staged.to(self.device, non_blocking=True)
            compute.wait_stream(self.copy_stream)
            x.record_stream(compute)  # x is used on the compute stream; keep its memory until that is done
        else:
            x = staged
        with torch.inference_mode(), autocast(self.device, self.amp):
            tokens = frame_tokens(self.model, self.normalize(x), self.settings.tokens, self.settings.grid,
                                  self.settings.layers)[:n]  # [n, K, D]
        peak = tokens.detach().abs().amax().float() if self.dtype == torch.float16 else None  # [] overflow check
        tokens = tokens.to(self.dtype)
        if not self.cuda:
            return tokens, lambda: _check_fp16(peak)
        host = torch.empty(tokens.shape, dtype=self.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        peak_host = None
        if peak is not None:
            peak_host = torch.empty((), dtype=torch.float32, pin_memory=True)
            peak_host.copy_(peak, non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)

        def ready():
            done.synchronize()
            _check_fp16(peak_host)

        return host, ready


def _check_fp16(peak: torch.Tensor | None) -> None:
    """The store's fp16 overflow refusal, from the max |token| before the cast (the cast itself makes inf)."""
    if peak is not None and torch.isfinite(peak) and float(peak) > FP16_MAX:
        raise StoreError(f"tokens overflow fp16 (max |value| {float(peak):.4g} > 65504): store this model as bf16")


def extract_videos(
    model: nn.Module, records: list[VideoRecord], writer: PartWriter, settings: PartSettings,
    report: Report | None = None,
) -> dict:
    """Extract `records` (in this order) into an open PartWriter; returns {videos, failures, frames}.

    Decode failures go to the ledger; any other error (store, model, a bug) propagates and the part is not
    committed (the caller's `with writer` discards it).
    """
    encode = DeviceEncoder(model, settings)
    sink = OrderedSink(writer, report)
    try:
        batcher = TokenBatcher(encode, sink, settings.batch_size)
        with PrefetchingDecoder(records, settings) as decoder:
            for record, events in decoder:
                for event in events:
                    if event[0] == "frames":
                        batcher.frames(record, event[1], event[2])
                    elif event[0] == "error":
                        batcher.fail(record, event[1])
                    else:
                        batcher.control(event[0], record, event[1])
        batcher.flush()
        sink.close()
    except BaseException:
        sink.cancel()
        raise
    return {"videos": sink.videos, "failures": sink.failures, "frames": sink.frames}
