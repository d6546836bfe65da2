"""Columns of the index as zarr arrays that readers memory-map: numbers as 1-D arrays, strings as offsets + bytes.

Why zarr arrays (and not Arrow/Parquet): the index lives inside the store, so plain `zarr.open(STORE)` reads it with
no new dependency (pyarrow is ~100 MB and not otherwise needed), and every column carries the same crc32c as the
tokens. Each column is written as ONE chunk with only the `bytes` and `crc32c` codecs, so its chunk file `c/0` is
the raw little-endian array followed by a 4-byte checksum: a reader `np.memmap`s the first `n * itemsize` bytes,
pages are shared between every process on a host (DataLoader workers, ranks), and nothing is parsed at open. The
checksum IS checked at open (`map_column`): one pass of hardware crc32c over the mapped bytes, so a flipped bit in
a label or offset column is found before the index answers anything (cost in BENCHMARKS.md, "Index open"). Strings
use Arrow's own layout (int64 offsets [n + 1] + UTF-8 bytes) because zarr's variable-length strings decode into
one Python object per row, which is what made the JSON index cost ~0.9 KB per video per reader.
"""

from __future__ import annotations

from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from vivitcache.store.layout import StoreError

ENCODING = ("utf-8", "surrogatepass")
"""Ids may hold lone surrogates (they come from file names); UTF-8 byte order equals code point order."""


def encode_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings → (offsets int64 [n + 1], bytes uint8 [total]); string i is bytes[offsets[i]:offsets[i + 1]]."""
    encoded = [v.encode(*ENCODING) for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


class StringColumn:
    """Read access to a string column (offsets + bytes, numpy or memory-mapped)."""

    def __init__(self, offsets: np.ndarray, data: np.ndarray):
        self.offsets, self.data = offsets, data

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])].tobytes()

    def __getitem__(self, i: int) -> str:
        return self.raw(i).decode(*ENCODING)

    def tolist(self) -> list[str]:
        """Every string, in row order (one decode of the whole buffer when it is ASCII, the common case)."""
        offsets = self.offsets.tolist()
        blob = self.data.tobytes()
        if blob.isascii():
            text = blob.decode("ascii")
            return [text[a:b] for a, b in zip(offsets, offsets[1:])]
        return [blob[a:b].decode(*ENCODING) for a, b in zip(offsets, offsets[1:])]


def write_column(group_path: Path, name: str, values: np.ndarray) -> dict:
    """Write a 1-D array as a one-chunk zarr array `group_path/name`; returns its description for the manifest."""
    values = np.ascontiguousarray(values)
    arr = zarr.create_array(
        store=str(group_path / name), shape=values.shape, dtype=values.dtype, chunks=(max(len(values), 1),),
        compressors=[Crc32cCodec()], filters=None, fill_value=0, config={"write_empty_chunks": True},
    )
    if len(values):
        arr[:] = values
    return {"dtype": values.dtype.str, "n": int(len(values))}


def write_strings(group_path: Path, name: str, values: list[str]) -> dict:
    offsets, data = encode_strings(values)
    return {"offsets": write_column(group_path, f"{name}_offsets", offsets),
            "bytes": write_column(group_path, f"{name}_bytes", data)}


class ColumnDamageError(StoreError):
    """An index column's file is missing, of the wrong size, or fails its crc32c: the index must not be used."""


def map_column(group_path: Path, name: str, desc: dict) -> np.ndarray:
    """Memory-map a column written by `write_column` (read-only, shared page cache) after checking its crc32c;
    ColumnDamageError if it is damaged."""
    n, dtype = int(desc["n"]), np.dtype(desc["dtype"])
    if n == 0:
        return np.zeros(0, dtype=dtype)
    chunk = group_path / name / "c" / "0"
    try:
        size = chunk.stat().st_size
    except FileNotFoundError:
        raise ColumnDamageError(f"{chunk}: index column file missing") from None
    if size != n * dtype.itemsize + 4:  # + the crc32c
        raise ColumnDamageError(f"{chunk}: index column has {size} bytes, expected {n * dtype.itemsize + 4}")
    mapped = np.memmap(chunk, dtype=np.uint8, mode="r")  # [bytes + 4]
    if google_crc32c.value(mapped[:-4]) != int.from_bytes(mapped[-4:].tobytes(), "little"):
        raise ColumnDamageError(f"{chunk}: index column fails its crc32c checksum")
    # A plain ndarray view of the map: indexing a np.memmap subclass is ~10x slower per scalar.
    return mapped[:-4].view(np.ndarray).view(dtype)


def map_strings(group_path: Path, name: str, desc: dict) -> StringColumn:
    return StringColumn(map_column(group_path, f"{name}_offsets", desc["offsets"]),
                        map_column(group_path, f"{name}_bytes", desc["bytes"]))
