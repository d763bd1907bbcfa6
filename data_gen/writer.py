"""Crash-safe, resumable ArrayRecord output of one data-generation worker, and the global merge.

A worker's images are cut into fixed chunks (`images_per_shard` consecutive images of its list).
While a chunk is in progress every finished image is appended to a staging log (length-prefixed
msgpack frames, fsync'd), so a kill loses at most the image being processed. When the chunk's last
image is done its records become one ArrayRecord shard (`group_size:1`), written under a temporary
name and renamed, and a stats file is renamed into place last: a chunk is complete exactly when its
stats file exists. A restarted worker skips complete chunks, replays the staging log of the current
one, and continues; shards are therefore identical to an uninterrupted run's.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import struct
from typing import Any, Iterable

import msgpack
from array_record.python import array_record_module

from zwz_jax import records

STAGING = "_staging"
STATS = "_stats"
_FRAME = struct.Struct("<Q")


def shard_name(worker: int, chunk: int) -> str:
  return f"records-w{worker:05d}-c{chunk:05d}.array_record"


def _stats_path(out_dir: str, worker: int, chunk: int) -> str:
  return os.path.join(out_dir, STATS, f"w{worker:05d}-c{chunk:05d}.json")


def _staging_path(out_dir: str, worker: int, chunk: int) -> str:
  return os.path.join(out_dir, STAGING, f"w{worker:05d}-c{chunk:05d}.log")


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def read_staging(path: str) -> list[dict]:
  """Complete frames of a staging log; a torn frame at the end (killed mid-write) is ignored."""
  if not os.path.exists(path):
    return []
  entries = []
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + _FRAME.size <= len(data):
    (n,) = _FRAME.unpack_from(data, pos)
    if pos + _FRAME.size + n > len(data):
      break
    entries.append(msgpack.unpackb(data[pos + _FRAME.size:pos + _FRAME.size + n], raw=False))
    pos += _FRAME.size + n
  return entries


class ChunkWriter:
  """Collects the per-image results of one chunk, durably, and commits the chunk as a shard."""

  def __init__(self, out_dir: str, worker: int, chunk: int, keys: list[str]):
    self.out_dir, self.worker, self.chunk, self.keys = out_dir, worker, chunk, keys
    os.makedirs(os.path.join(out_dir, STAGING), exist_ok=True)
    os.makedirs(os.path.join(out_dir, STATS), exist_ok=True)
    self.path = _staging_path(out_dir, worker, chunk)
    self.entries = {e["key"]: e for e in read_staging(self.path)}
    unexpected = set(self.entries) - set(keys)
    if unexpected:
      raise RuntimeError(f"{self.path} holds images {sorted(unexpected)[:3]} that are not in chunk {chunk} "
                         "of this worker: the pool or --num_shards/images_per_shard changed since the "
                         "interrupted run; use a fresh out_dir")
    # Rewrite the log without a torn tail so later appends stay framed.
    self._rewrite()

  def _rewrite(self):
    tmp = self.path + ".tmp"
    with open(tmp, "wb") as f:
      for key in self.keys:
        if key in self.entries:
          blob = msgpack.packb(self.entries[key], use_bin_type=True)
          f.write(_FRAME.pack(len(blob)) + blob)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)

  def done(self, key: str) -> bool:
    return key in self.entries

  def add(self, key: str, serialized: list[bytes], stats: dict[str, int], dimensions: dict[str, int]) -> None:
    entry = {"key": key, "records": serialized, "stats": stats, "dimensions": dimensions}
    blob = msgpack.packb(entry, use_bin_type=True)
    with open(self.path, "ab") as f:
      f.write(_FRAME.pack(len(blob)) + blob)
      f.flush()
      os.fsync(f.fileno())
    self.entries[key] = entry

  def commit(self) -> dict:
    """Writes the shard + stats of a finished chunk (images in chunk order) and drops the log."""
    missing = [k for k in self.keys if k not in self.entries]
    if missing:
      raise RuntimeError(f"chunk {self.chunk} is missing images {missing[:3]}")
    ordered = [self.entries[k] for k in self.keys]
    recs = [r for e in ordered for r in e["records"]]
    name = shard_name(self.worker, self.chunk)
    if recs:
      tmp = os.path.join(self.out_dir, name + ".tmp")
      writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
      for r in recs:
        writer.write(r)
      writer.close()
      os.replace(tmp, os.path.join(self.out_dir, name))
    stats = collections.Counter()
    dims = collections.Counter()
    for e in ordered:
      stats.update(e["stats"])
      dims.update(e["dimensions"])
    ids = [records.decode(r).id for r in recs]
    summary = {"worker": self.worker, "chunk": self.chunk, "shard": name if recs else None,
               "num_records": len(recs), "images": self.keys, "record_ids": ids,
               "stats": dict(stats), "dimensions": dict(dims)}
    path = _stats_path(self.out_dir, self.worker, self.chunk)
    with open(path + ".tmp", "w") as f:
      json.dump(summary, f)
      f.flush()
      os.fsync(f.fileno())
    _fsync_dir(self.out_dir)
    os.replace(path + ".tmp", path)  # the commit point
    os.remove(self.path)
    return summary


def chunk_done(out_dir: str, worker: int, chunk: int) -> bool:
  return os.path.exists(_stats_path(out_dir, worker, chunk))


def merge(out_dir: str, config: dict[str, Any] | None = None, expected_workers: Iterable[int] | None = None) -> dict:
  """Writes the global manifest from every committed chunk of every worker in `out_dir`."""
  summaries = []
  for path in sorted(glob.glob(os.path.join(out_dir, STATS, "w*-c*.json"))):
    with open(path) as f:
      summaries.append(json.load(f))
  workers = sorted({s["worker"] for s in summaries})
  if expected_workers is not None and sorted(expected_workers) != workers:
    missing = sorted(set(expected_workers) - set(workers))
    raise RuntimeError(f"{out_dir}: no finished chunks from workers {missing}; run them before merging")
  pending = sorted(glob.glob(os.path.join(out_dir, STAGING, "*.log")))
  stats, dims = collections.Counter(), collections.Counter()
  for s in summaries:
    stats.update(s["stats"])
    dims.update(s["dimensions"])
  shards = [{"path": s["shard"], "num_records": s["num_records"]} for s in summaries if s["shard"]]
  manifest = {
      "shards": shards,
      "num_records": sum(s["num_records"] for s in shards),
      "num_images": sum(len(s["images"]) for s in summaries),
      "stages": dict(sorted(stats.items())),
      "dimensions": dict(sorted(dims.items())),
      "workers": workers,
      "incomplete_chunks": [os.path.basename(p) for p in pending],
      "config": config or {},
  }
  records.write_manifest(out_dir, manifest)
  return manifest
