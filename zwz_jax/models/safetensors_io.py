"""Streaming safetensors reader and writer on numpy alone (no torch, no full-checkpoint copies).

The format: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor
name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into the data that follows)
plus an optional "__metadata__" of strings, then the raw little-endian tensor bytes.

Reading memory-maps each file, so `get` returns a zero-copy read-only view and a 72B
checkpoint costs no host RAM until its pages are touched. Writing takes an iterator so the
caller can produce (and free) one tensor at a time; bfloat16 and float8 come from ml_dtypes.
Kept instead of safetensors' own `safe_open` / `save_file`: `safe_open` copies each tensor out of
the file and `save_file` needs every tensor in memory at once.
"""
import json
import os
import re
import struct
import types
from typing import Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
_MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit
_COPY_CHUNK = 64 << 20

# Ascending in the reference implementation's dtype order: it writes tensors by descending
# dtype, then name, so that every tensor starts aligned to its item size. Matching it makes
# our files byte-identical to `safetensors.*.save_file` for the same tensors.
_DTYPE_ORDER = (
    ("BOOL", np.dtype(np.bool_)),
    ("U8", np.dtype(np.uint8)),
    ("I8", np.dtype(np.int8)),
    ("F8_E5M2", np.dtype(ml_dtypes.float8_e5m2)),
    ("F8_E4M3", np.dtype(ml_dtypes.float8_e4m3fn)),
    ("F8_E8M0", np.dtype(ml_dtypes.float8_e8m0fnu)),
    ("I16", np.dtype("<i2")),
    ("U16", np.dtype("<u2")),
    ("F16", np.dtype("<f2")),
    ("BF16", np.dtype(ml_dtypes.bfloat16)),
    ("I32", np.dtype("<i4")),
    ("U32", np.dtype("<u4")),
    ("F32", np.dtype("<f4")),
    ("C64", np.dtype("<c8")),
    ("F64", np.dtype("<f8")),
    ("I64", np.dtype("<i8")),
    ("U64", np.dtype("<u8")),
)
_DTYPES = dict(_DTYPE_ORDER)
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPE_ORDER}
_DTYPE_RANK = {name: rank for rank, (name, _) in enumerate(_DTYPE_ORDER)}
_PT_METADATA = types.MappingProxyType({"format": "pt"})


class SafetensorsError(ValueError):
  """A malformed or truncated safetensors file; the message names the file and tensor."""


class _Entry:
  __slots__ = ("dtype", "shape", "begin", "end")

  def __init__(self, dtype, shape, begin, end):
    self.dtype, self.shape, self.begin, self.end = dtype, shape, begin, end


class _File:
  """One .safetensors file: header parsed on first use, data memory-mapped on first `get`."""

  def __init__(self, path: str):
    self.path = path
    self._header = None
    self._metadata = None
    self._data_start = 0
    self._map = None

  @property
  def header(self) -> dict[str, _Entry]:
    if self._header is None:
      self._read_header()
    return self._header

  @property
  def metadata(self) -> dict[str, str]:
    if self._header is None:
      self._read_header()
    return self._metadata

  def _read_header(self):
    try:
      size = os.path.getsize(self.path)
      with open(self.path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
          raise SafetensorsError(f"{self.path}: {size} bytes, too short for a safetensors "
                                 "header (truncated?)")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER_BYTES or 8 + length > size:
          raise SafetensorsError(f"{self.path}: header length {length} does not fit in the "
                                 f"{size}-byte file (truncated or not safetensors?)")
        raw = f.read(length)
    except OSError as e:
      raise SafetensorsError(f"{self.path}: cannot read: {e}") from e
    try:
      header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise SafetensorsError(f"{self.path}: header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
      raise SafetensorsError(f"{self.path}: header is not a JSON object")
    self._data_start = 8 + length
    data_size = size - self._data_start
    self._metadata = header.pop("__metadata__", None) or {}
    self._header = {name: self._parse_entry(name, info, data_size)
                    for name, info in header.items()}

  def _parse_entry(self, name, info, data_size) -> _Entry:
    where = f"{self.path}: tensor {name!r}"
    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
      raise SafetensorsError(f"{where}: malformed header entry {info!r}")
    if info["dtype"] not in _DTYPES:
      raise SafetensorsError(f"{where}: unsupported dtype {info['dtype']!r}")
    dtype = _DTYPES[info["dtype"]]
    try:
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise SafetensorsError(f"{where}: malformed header entry {info!r}") from None
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if any(d < 0 for d in shape) or begin < 0 or end - begin != nbytes:
      raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] do not match "
                             f"{info['dtype']}{list(shape)} ({nbytes} bytes)")
    if end > data_size:
      raise SafetensorsError(f"{where}: needs data bytes [{begin}, {end}) but the file holds "
                             f"only {data_size} (truncated?)")
    return _Entry(dtype, shape, begin, end)

  def get(self, name: str) -> np.ndarray:
    entry = self.header[name]
    if self._map is None:
      self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
    start = self._data_start + entry.begin
    raw = self._map[start:start + (entry.end - entry.begin)]
    # Plain ndarray (not the memmap subclass), still backed by the mapping.
    return np.asarray(raw).view(entry.dtype).reshape(entry.shape)

  def close(self):
    # Arrays already handed out keep the mapping alive; unmapping under them would crash.
    self._map = None


class SafetensorsCheckpoint:
  """Lazy read access to a safetensors checkpoint: one file, or shards with an index.

  `path` is a .safetensors file, a *.safetensors.index.json, or a directory holding
  model.safetensors or model.safetensors.index.json (or exactly one other file of either
  kind). Nothing is read until asked for; `get` returns read-only memory-mapped arrays.
  """

  def __init__(self, path: str):
    path = os.fspath(path)
    if os.path.isdir(path):
      path = _find_checkpoint(path)
    elif not os.path.exists(path):
      raise FileNotFoundError(f"no safetensors checkpoint at {path!r}")
    self.path = path
    self._files: dict[str, _File] = {}
    if path.endswith(".json"):
      self._weight_map = _read_index(path)
    else:
      self._weight_map = None
      self._single = self._file(path)

  def _file(self, path: str) -> _File:
    if path not in self._files:
      self._files[path] = _File(path)
    return self._files[path]

  def _locate(self, name: str) -> tuple[_File, _Entry]:
    if self._weight_map is None:
      file = self._single
    else:
      if name not in self._weight_map:
        raise KeyError(f"tensor {name!r} not in {self.path}")
      file = self._file(self._weight_map[name])
    header = file.header
    if name not in header:
      if self._weight_map is None:
        raise KeyError(f"tensor {name!r} not in {self.path}")
      raise SafetensorsError(f"{self.path} maps tensor {name!r} to {file.path}, "
                             "whose header does not have it")
    return file, header[name]

  def keys(self) -> list[str]:
    if self._weight_map is None:
      return list(self._single.header)
    return list(self._weight_map)

  def __iter__(self) -> Iterator[str]:
    return iter(self.keys())

  def __len__(self) -> int:
    return len(self.keys())

  def __contains__(self, name: str) -> bool:
    if self._weight_map is None:
      return name in self._single.header
    return name in self._weight_map

  def shape(self, name: str) -> tuple[int, ...]:
    return self._locate(name)[1].shape

  def dtype(self, name: str) -> np.dtype:
    return self._locate(name)[1].dtype

  def get(self, name: str) -> np.ndarray:
    """The tensor as a read-only view of the mapped file (no copy; np.array() it to own it)."""
    file, _ = self._locate(name)
    return file.get(name)

  def metadata(self) -> dict[str, str]:
    """`__metadata__` of the single file, or of the first shard."""
    if self._weight_map is None:
      return dict(self._single.metadata)
    if not self._weight_map:
      return {}
    return dict(self._file(next(iter(self._weight_map.values()))).metadata)

  def close(self):
    for file in self._files.values():
      file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _find_checkpoint(directory: str) -> str:
  for name in (SINGLE_FILE, INDEX_FILE):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name)
  names = sorted(os.listdir(directory))
  for suffix in (".safetensors.index.json", ".safetensors"):
    found = [n for n in names if n.endswith(suffix)]
    if len(found) == 1:
      return os.path.join(directory, found[0])
    if found:
      raise SafetensorsError(f"{directory}: several *{suffix} files and no {SINGLE_FILE} or "
                             f"{INDEX_FILE}; pass one file: {found}")
  raise FileNotFoundError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}")


def _read_index(path: str) -> dict[str, str]:
  try:
    with open(path, "rb") as f:
      index = json.load(f)
    weight_map = index["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise SafetensorsError(f"{path}: not a safetensors index with a weight_map: {e!r}") from None
  directory = os.path.dirname(path)
  files = {}
  for filename in sorted(set(weight_map.values())):
    full = os.path.join(directory, filename)
    if not os.path.isfile(full):
      raise SafetensorsError(f"{path}: shard {filename!r} is missing")
    files[filename] = full
  return {name: files[filename] for name, filename in weight_map.items()}


def write_safetensors(path_dir: str,
                      named_arrays: Iterable[tuple[str, np.ndarray]],
                      max_shard_bytes: int = 5 * 2**30,
                      metadata: Mapping[str, str] | None = _PT_METADATA) -> list[str]:
  """Streams (name, array) pairs into a safetensors checkpoint in `path_dir`.

  Arrays are consumed one at a time and not kept, so a generator that converts tensors on
  the fly needs host RAM for one tensor only. Shards fill in iteration order up to
  `max_shard_bytes` (a bigger tensor gets a shard of its own). One shard is written as
  model.safetensors; more as model-0000i-of-0000N.safetensors plus model.safetensors.index.json,
  the layout `transformers` loads. Files of an earlier checkpoint with those names are
  removed, as `save_pretrained` does, so a reader never mixes two checkpoints.

  Args:
    path_dir: output directory, created if missing.
    named_arrays: iterable of (tensor name, array-like); names must be unique.
    max_shard_bytes: shard size limit in tensor bytes.
    metadata: string-to-string `__metadata__` for every shard; None for none.

  Returns:
    The paths of the written .safetensors files, in shard order.
  """
  path_dir = os.fspath(path_dir)
  os.makedirs(path_dir, exist_ok=True)
  metadata = _check_metadata(metadata)
  tmp_prefix = os.path.join(path_dir, f".tmp-safetensors-{os.getpid()}")
  shards: list[tuple[str, list[str]]] = []  # (tmp path, tensor names)
  seen = set()
  total = 0
  writer = None
  try:
    for name, array in named_arrays:
      if not isinstance(name, str) or name == "__metadata__":
        raise ValueError(f"invalid tensor name {name!r}")
      if name in seen:
        raise ValueError(f"tensor {name!r} given twice")
      seen.add(name)
      array = np.asarray(array)
      dtype_name = _dtype_name(name, array.dtype)
      if writer is None or (writer.nbytes and writer.nbytes + array.nbytes > max_shard_bytes):
        if writer is not None:
          shards.append((writer.finish(metadata), writer.names))
        writer = _ShardWriter(f"{tmp_prefix}-{len(shards) + 1:05d}")
      writer.add(name, dtype_name, array)
      total += array.nbytes
      del array  # the caller's next tensor may be big; hold none meanwhile
    if writer is None:
      writer = _ShardWriter(f"{tmp_prefix}-00001")  # an empty checkpoint is still a file
    shards.append((writer.finish(metadata), writer.names))
    writer = None
    return _publish(path_dir, shards, total)
  finally:
    if writer is not None:
      writer.abort()
    for tmp, _ in shards:
      if os.path.exists(tmp):
        os.remove(tmp)


def _check_metadata(metadata):
  if metadata is None:
    return None
  metadata = dict(metadata)
  for k, v in metadata.items():
    if not isinstance(k, str) or not isinstance(v, str):
      raise ValueError(f"safetensors metadata must map str to str, got {k!r}: {v!r}")
  return metadata


def _dtype_name(name: str, dtype: np.dtype) -> str:
  key = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
  try:
    return _DTYPE_NAMES[key]
  except KeyError:
    raise ValueError(f"tensor {name!r}: dtype {dtype} has no safetensors equivalent "
                     f"(supported: {', '.join(_DTYPES)})") from None


class _ShardWriter:
  """Appends tensor bytes to a scratch file; `finish` writes the real shard beside it.

  The header, which precedes the data, is only known once the shard is full, and the
  reference order (by dtype, then name) is only known then too: so the bytes go to scratch
  first and are copied into place in the kernel (copy_file_range) where it can.
  """

  def __init__(self, path: str):
    self.path = path + ".safetensors"
    self._scratch_path = path + ".data"
    self._scratch = open(self._scratch_path, "wb")
    self._entries = {}  # name -> (dtype name, shape, scratch offset, nbytes)
    self.names = []
    self.nbytes = 0

  def add(self, name: str, dtype_name: str, array: np.ndarray):
    for chunk in _little_endian_chunks(array):
      self._scratch.write(chunk)
    self._entries[name] = (dtype_name, array.shape, self.nbytes, array.nbytes)
    self.names.append(name)
    self.nbytes += array.nbytes

  def finish(self, metadata) -> str:
    self._scratch.close()
    order = sorted(self._entries, key=lambda n: (-_DTYPE_RANK[self._entries[n][0]], n))
    header = {}
    if metadata is not None:
      header["__metadata__"] = metadata
    offset = 0
    for name in order:
      dtype_name, shape, _, nbytes = self._entries[name]
      header[name] = {"dtype": dtype_name, "shape": list(shape),
                      "data_offsets": [offset, offset + nbytes]}
      offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference pads
    with open(self._scratch_path, "rb") as src, open(self.path, "wb") as dst:
      dst.write(struct.pack("<Q", len(blob)))
      dst.write(blob)
      dst.flush()
      for name in order:
        _, _, start, nbytes = self._entries[name]
        _copy_range(src.fileno(), dst.fileno(), start, nbytes)
    os.remove(self._scratch_path)
    return self.path

  def abort(self):
    self._scratch.close()
    for path in (self._scratch_path, self.path):
      if os.path.exists(path):
        os.remove(path)


def _little_endian_chunks(array: np.ndarray) -> Iterator[memoryview]:
  """The array's C-order little-endian bytes, in pieces of about _COPY_CHUNK bytes."""
  if array.dtype.byteorder == ">":
    array = array.astype(array.dtype.newbyteorder("<"))
  if array.ndim == 0 or array.size == 0:
    yield memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return
  if array.flags.c_contiguous:
    flat = array.reshape(-1).view(np.uint8)
    for i in range(0, flat.size, _COPY_CHUNK):
      yield memoryview(flat[i:i + _COPY_CHUNK])
    return
  # Strided input (e.g. a transposed view): copy a few rows at a time, not the whole tensor.
  rows = max(1, _COPY_CHUNK // max(1, array[0].nbytes))
  for i in range(0, array.shape[0], rows):
    yield memoryview(np.ascontiguousarray(array[i:i + rows]).reshape(-1).view(np.uint8))


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int):
  """Copies [offset, offset + count) of src to the current end of dst."""
  if hasattr(os, "copy_file_range"):
    try:
      while count > 0:
        n = os.copy_file_range(src_fd, dst_fd, min(count, 1 << 30), offset)
        if n == 0:
          raise SafetensorsError("scratch file shorter than expected")
        offset += n
        count -= n
      return
    except OSError:
      pass  # not supported here (file system, kernel); fall back to reads and writes
    os.lseek(dst_fd, 0, os.SEEK_END)
  while count > 0:
    chunk = os.pread(src_fd, min(count, _COPY_CHUNK), offset)
    if not chunk:
      raise SafetensorsError("scratch file shorter than expected")
    os.write(dst_fd, chunk)
    offset += len(chunk)
    count -= len(chunk)


def _publish(path_dir: str, shards: list[tuple[str, list[str]]], total: int) -> list[str]:
  """Renames the finished shards into place, writes the index, removes stale files."""
  n = len(shards)
  finals = ([SINGLE_FILE] if n == 1 else
            [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)])
  written = set(finals)
  if n > 1:
    weight_map = {name: final for final, (_, names) in zip(finals, shards) for name in names}
    index = {"metadata": {"total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    tmp_index = os.path.join(path_dir, f".tmp-safetensors-{os.getpid()}.index.json")
    with open(tmp_index, "w", encoding="utf-8") as f:
      f.write(json.dumps(index, indent=2) + "\n")
    written.add(INDEX_FILE)
  for final, (tmp, _) in zip(finals, shards):
    os.replace(tmp, os.path.join(path_dir, final))
  if n > 1:
    os.replace(tmp_index, os.path.join(path_dir, INDEX_FILE))
  for name in os.listdir(path_dir):
    if name in written:
      continue
    if name in (SINGLE_FILE, INDEX_FILE) or _SHARD_RE.fullmatch(name):
      os.remove(os.path.join(path_dir, name))
  return [os.path.join(path_dir, final) for final in finals]
