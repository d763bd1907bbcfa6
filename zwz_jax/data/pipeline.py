"""grain input pipeline: ArrayRecord shards -> preprocessed examples -> static-shape bucketed batches.

Training data order is one global stream: the concatenated shards of `data.train`, shuffled with a
fresh permutation every epoch (epoch e uses seed `data.shuffle_seed + e`) and repeated forever.
Process i of P takes stream elements i, i + P, i + 2P, ..., so processes are disjoint, together
cover the data, and the global batch of a step is the same stream window whatever P is (up to
skipped records).

Preprocessing (decode, grounding, resize, tokenize) runs in grain worker processes; a record that
breaks the contract comes back as `Skipped` and is counted and logged in the training process,
never fatal. Batching happens in the training process: a batch takes the smallest bucket of
`data.buckets` that fits all its examples, so jit sees a bounded set of shapes.

Training batches are grouped by size (`data.bucket_lookahead` batches' worth of examples may be held
back): one large image in a batch of small ones would otherwise pad every row to the largest
bucket, and with 64 rows and a few percent of large images nearly every step would run there. A
batch is emitted as soon as the examples whose smallest fitting bucket is the same fill a batch.
When the look-ahead is full first, or its oldest example has waited that many stream elements, the
oldest example goes out in the smallest bucket fitting the oldest batch of examples, filled with the
largest held examples that fit it (look-ahead 1: batches in stream order).
The held examples' stream indices are part of the iterator state, so a resumed run re-reads them.

Multi-host: every process must pick the same bucket at a step, but each one only sees its own
examples. With several buckets and process_count > 1, pass `bucket_sync` (a max over processes,
e.g. `jax_bucket_sync()`), or configure a single bucket; otherwise construction fails.
"""
from __future__ import annotations

import bisect
import collections
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterator, Sequence

import grain
import msgpack
import numpy as np

from zwz_jax import records
from zwz_jax.data import batch as batch_lib
from zwz_jax.data import processor as processor_lib

log = logging.getLogger(__name__)

TARGETS = ("letter", "letter_text")
VIEWS = ("global", "regional")  # data.view
_STATE_VERSION = 2  # 2: adds the held examples (version 1 held none)


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A record the pipeline could not use: reason is bad_record | bad_image | unprocessable | too_long."""
  id: str
  reason: str
  detail: str


# ----------------------------------------------------------------------------------------------
# Config checks
# ----------------------------------------------------------------------------------------------


def check_buckets(buckets, vision: batch_lib.VisionLayout) -> tuple[tuple[int, int], ...]:
  """data.buckets as int pairs; raises naming the key if they cannot work."""
  try:
    out = tuple((int(t), int(p)) for t, p in buckets)
  except (TypeError, ValueError):
    raise ValueError(f"data.buckets must be (max_tokens, max_patches) pairs, got {buckets!r}") from None
  if not out:
    raise ValueError("data.buckets is empty: give at least one (max_tokens, max_patches) pair")
  unit = vision.window_patches
  for t, p in out:
    if t <= 0 or p <= 0:
      raise ValueError(f"data.buckets: {(t, p)} must be positive")
    if p % unit:
      raise ValueError(f"data.buckets: max_patches={p} in {(t, p)} is not a multiple of the attention "
                       f"window ({unit} patches)")
  for a, b in zip(out, out[1:]):
    # Sorted on both axes, so the last bucket fits everything any bucket fits.
    if not (a[0] <= b[0] and a[1] <= b[1] and a != b):
      raise ValueError(f"data.buckets must grow in both max_tokens and max_patches, got {out}")
  return out


def _dirs(value, key) -> tuple[str, ...]:
  dirs = (value,) if isinstance(value, str) else tuple(value)
  if not dirs:
    raise ValueError(f"{key} is empty: set it to record directories, e.g. --config.{key}=\"('out/run',)\"")
  return dirs


def local_batch_size(config, process_count: int) -> int:
  gbs = int(config.data.global_batch_size)
  if gbs <= 0 or gbs % process_count:
    raise ValueError(f"data.global_batch_size={gbs} must be a positive multiple of the number of "
                     f"processes ({process_count})")
  return gbs // process_count


# ----------------------------------------------------------------------------------------------
# Per-record preprocessing (runs in workers)
# ----------------------------------------------------------------------------------------------


class Preprocessor:
  """Serialized record -> the processor's example dict plus "id", or `Skipped`.

  Picklable (grain ships it to spawned workers); holds plain values, not the config.
  """

  def __init__(self, config, tokenizer, *, prompts_only: bool = False):
    d = config.data
    if d.grounding not in records.GROUNDING_MODES:
      raise ValueError(f"data.grounding={d.grounding!r} is not one of {records.GROUNDING_MODES}")
    if d.target not in TARGETS:
      raise ValueError(f"data.target={d.target!r} is not one of {TARGETS}")
    if d.view not in VIEWS:
      raise ValueError(f"data.view={d.view!r} is not one of {VIEWS}")
    self.grounding = d.grounding
    self.view = d.view
    self.target = d.target
    # RL rollouts: the prompt alone (the policy writes the answer), plus what the reward needs.
    self.prompts_only = prompts_only
    self.processor = processor_lib.Processor.from_config(config, tokenizer)
    self.vision = batch_lib.VisionLayout.from_config(config.model)
    self.max_tokens, self.max_patches = check_buckets(d.buckets, self.vision)[-1]

  def target_text(self, record: records.Record) -> str:
    if record.options and self.target == "letter_text":
      return f"{record.answer}. {record.answer_text}"
    return record.answer

  def __call__(self, raw: bytes, where: str = "") -> dict[str, Any] | Skipped:
    try:
      record = records.decode(raw, where=where)
    except records.RecordError as e:
      return Skipped(_peek_id(raw), "bad_record", str(e))
    at = f" ({where})" if where else ""
    try:
      image = records.open_image(record)
    except records.RecordError as e:
      return Skipped(record.id, "bad_image", f"{e}{at}")
    try:
      if self.view == "regional":
        image, text = records.crop_region(image, record.bbox), records.format_question(record.question, record.options)
      else:
        image, text = records.ground(record, self.grounding, image=image,
                                     **self.processor.box_frame(image.width, image.height))
      example = self.processor([image], text, None if self.prompts_only else self.target_text(record))
    except ValueError as e:  # extreme aspect ratio, answer merging with the prompt, ...
      return Skipped(record.id, "unprocessable", f"{e}{at}")
    tokens = len(example["input_ids"])
    patches = self.vision.padded_patches(example["grid_thw"])
    if tokens > self.max_tokens or patches > self.max_patches:
      return Skipped(record.id, "too_long", f"{tokens} tokens / {patches} window-padded patches > "
                     f"largest bucket {(self.max_tokens, self.max_patches)} in data.buckets{at}")
    example["id"] = record.id
    if self.prompts_only:
      example["answer"], example["options"] = record.answer, tuple(record.options)
    return example


def _peek_id(raw: bytes) -> str:
  """The record's id if its bytes still carry one, for the skip log."""
  try:
    d = msgpack.unpackb(raw, raw=False)
    rid = d.get("id") if isinstance(d, dict) else None
    return rid if isinstance(rid, str) and rid else "?"
  except Exception:  # garbage bytes: any msgpack error
    return "?"


class _Located:
  """map_with_index fn: names the record's shard and index for error messages."""

  def __init__(self, preprocessor: Preprocessor, paths: Sequence[str], counts: Sequence[int]):
    self.preprocessor = preprocessor
    self.paths = list(paths)
    self.starts = np.cumsum([0, *counts]).tolist()

  def __call__(self, index: int, raw: bytes):
    index %= self.starts[-1]  # repeated epochs pass indices past the end
    shard = bisect.bisect_right(self.starts, index) - 1
    return self.preprocessor(raw, where=f"{self.paths[shard]}:{index - self.starts[shard]}")


def _source(dirs: Sequence[str], key: str, preprocessor: Preprocessor) -> grain.MapDataset:
  """Preprocessed records of `dirs` in order (lazy: nothing is read until indexed). An entry is a
  record directory, or a prepared TFDS zwz_records split (zwz_jax/data/tfds_datasets)."""
  from zwz_jax.data import tfds_datasets
  parts, paths, counts = [], [], []

  def flush():  # our shards so far, as one ArrayRecord source
    if paths:
      source = grain.sources.ArrayRecordDataSource(list(paths))
      if len(source) != sum(counts):
        raise ValueError(f"{key}: manifests in {list(dirs)} list {sum(counts)} records but the shards "
                         f"hold {len(source)}")
      parts.append(grain.MapDataset.source(source).map_with_index(_Located(preprocessor, paths, counts)))
      paths.clear()
      counts.clear()

  for d in dirs:
    if tfds_datasets.is_prepared(d):
      flush()
      source = tfds_datasets.RecordSource(d)
      parts.append(grain.MapDataset.source(source).map_with_index(_Located(preprocessor, [d], [len(source)])))
      continue
    manifest = records.read_manifest(d)
    paths += records.shard_paths(d)
    counts += [int(s["num_records"]) for s in manifest["shards"]]
  flush()
  ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts) if parts else None
  if ds is None or len(ds) == 0:
    raise ValueError(f"{key}: no records in {list(dirs)}")
  return ds


def _absl_flags_parsed():
  """Lets grain's mp_prefetch run outside absl.app: grain 0.2.18 reads an absl flag's value and
  raises UnparsedFlagAccessError when nothing parsed flags (google/grain#1355). Unparsed flags
  keep their defaults either way."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _to_iter(ds: grain.MapDataset, config) -> grain.IterDataset:
  d = config.data
  read = grain.ReadOptions(num_threads=int(d.num_threads), prefetch_buffer_size=int(d.prefetch))
  it = ds.to_iter_dataset(read)
  if int(d.num_workers) > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(d.num_workers),
                                                     per_worker_buffer_size=max(1, int(d.prefetch))))
  return it


# ----------------------------------------------------------------------------------------------
# Batching (training process)
# ----------------------------------------------------------------------------------------------


class _Batcher:
  """Examples -> build_batch output in the smallest bucket fitting all of them, plus "ids"."""

  def __init__(self, config, buckets, bucket_sync, pad_side: str = "right"):
    self.vision = batch_lib.VisionLayout.from_config(config.model)
    self.image_token_id = int(config.model.image_token_id)
    self.buckets = buckets
    self.bucket_sync = bucket_sync
    self.pad_side = pad_side

  def fit(self, example) -> int:
    """The smallest bucket this example fits."""
    tokens, patches = len(example["input_ids"]), self.vision.padded_patches(example["grid_thw"])
    return next(i for i, (t, p) in enumerate(self.buckets) if tokens <= t and patches <= p)

  def sync(self, index: int) -> int:
    """The bucket every process takes (each calls this once per batch, even with no examples)."""
    return index if self.bucket_sync is None else int(self.bucket_sync(index))

  def bucket(self, examples) -> int:
    return self.sync(max((self.fit(ex) for ex in examples), default=0))

  def __call__(self, examples, size: int | None = None, bucket: int | None = None):
    """Batch of `size` rows (default len(examples)); rows past the examples are empty padding."""
    index = self.bucket(examples) if bucket is None else bucket
    max_tokens, max_patches = self.buckets[index]
    out = batch_lib.build_batch(examples, vision_cfg=self.vision, image_token_id=self.image_token_id,
                                max_tokens=max_tokens, max_patches=max_patches, pad_side=self.pad_side)
    ids = [ex["id"] for ex in examples]
    pad = (size or len(examples)) - len(examples)
    if pad:
      out = batch_lib.pad_rows(out, pad)
      ids += [""] * pad
    out["ids"] = np.asarray(ids, dtype=str)
    if examples and "answer" in examples[0]:  # prompts for rollouts: the references, per row
      out["answers"] = [ex["answer"] for ex in examples] + [""] * pad
      out["options"] = [ex["options"] for ex in examples] + [()] * pad
    return out


class _SkipCounter:
  """Drops Skipped elements from a stream, counting and logging each."""

  def __init__(self, key: str, patience: int):
    self.key = key
    self.patience = patience  # consecutive skips that mean nothing usable is left
    self.skipped = collections.Counter()
    self._run = 0

  def next_example(self, it):
    while True:
      element = next(it)
      if not isinstance(element, Skipped):
        self._run = 0
        return element
      self.skipped[element.reason] += 1
      self._run += 1
      log.warning("%s: skipping record %s (%s): %s", self.key, element.id, element.reason, element.detail)
      if self._run >= self.patience:
        raise RuntimeError(f"{self.key}: the last {self._run} records were all skipped "
                           f"({dict(self.skipped)}); check data.buckets, data.grounding and the records")


def jax_bucket_sync() -> Callable[[int], int]:
  """bucket_sync for multi-host runs: the largest bucket index any process asks for.

  A collective: call the iterator's __next__ on every process, in the same order as the other
  collectives (i.e. from the training loop's thread, not a background prefetch thread).
  """
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def sync(index: int) -> int:
    if jax.process_count() == 1:
      return index
    return int(np.max(multihost_utils.process_allgather(np.int32(index))))
  return sync


# ----------------------------------------------------------------------------------------------
# Training iterator
# ----------------------------------------------------------------------------------------------


class _Counted:
  """An iterator that counts the elements drawn from it: the stream index of the next one."""

  def __init__(self, it):
    self.it = it
    self.count = 0

  def __next__(self):
    element = next(self.it)
    self.count += 1
    return element


class TrainIterator(grain.DatasetIterator):
  """Infinite iterator of process-local training batches; checkpointable.

  A grain DatasetIterator, so `grain.checkpoint.CheckpointSave(it)` works in an orbax
  CheckpointManager; `get_state()` is a JSON-serializable dict for any other store.
  """

  def __init__(self, grain_iter, *, batch_size: int, batcher: _Batcher, skips: _SkipCounter,
               fingerprint: dict, source: grain.MapDataset, lookahead: int = 1):
    super().__init__(grain_iter)
    self._it = grain_iter
    self._stream = _Counted(grain_iter)
    self._source = source  # what the stream iterates, by index: held examples are re-read from it
    self.batch_size = batch_size
    self._batcher = batcher
    self._skips = skips
    self._fingerprint = fingerprint
    self._capacity = max(1, int(lookahead)) * batch_size
    self._held: list[tuple[int, int, dict]] = []  # (stream index, bucket, example), in stream order
    self.step = 0  # batches produced since the start of training

  @property
  def skipped(self) -> collections.Counter:
    """Skipped records by reason (cumulative across restores)."""
    return self._skips.skipped

  @property
  def buckets(self) -> tuple[tuple[int, int], ...]:
    return self._batcher.buckets

  def _full_bucket(self) -> int | None:
    """The first bucket (in stream order) that is the smallest fit of a batch of held examples."""
    counts = collections.Counter()
    for _, b, _ in self._held:
      counts[b] += 1
      if counts[b] == self.batch_size:
        return b
    return None

  def _stale(self) -> bool:
    """The oldest held example has waited a look-ahead's worth of stream: a rare size must not
    wait for a batch of its kind."""
    return bool(self._held) and self._stream.count - self._held[0][0] > self._capacity

  def _ready(self) -> bool:
    """A batch can go: one bucket's examples fill it, the look-ahead is full, or one is stale."""
    if len(self._held) < self.batch_size:
      return False
    return self._full_bucket() is not None or len(self._held) >= self._capacity or self._stale()

  def __next__(self) -> dict[str, np.ndarray]:
    while not self._ready():
      example = self._skips.next_example(self._stream)
      self._held.append((self._stream.count - 1, self._batcher.fit(example), example))
    full = self._full_bucket()
    # Without a full bucket, or with a stale example, the oldest example goes, in the smallest
    # bucket fitting the oldest batch of examples.
    oldest = full is None or self._stale()
    local = max(b for _, b, _ in self._held[:self.batch_size]) if oldest else full
    bucket = self._batcher.sync(local)  # >= local: other processes may need a larger one
    # Then examples of that bucket, then the largest others that fit (they gain the most from its
    # padding), the oldest of each size first; rows in stream order.
    fits = [j for j, (_, b, _) in enumerate(self._held) if b <= bucket]
    chosen = set(sorted(fits, key=lambda j: (oldest and j > 0, -self._held[j][1], j))[:self.batch_size])
    examples = [h[2] for j, h in enumerate(self._held) if j in chosen]
    self._held = [h for j, h in enumerate(self._held) if j not in chosen]
    out = self._batcher(examples, bucket=bucket)
    self.step += 1
    return out

  def get_state(self) -> dict[str, Any]:
    return {"version": _STATE_VERSION, "step": self.step, "skipped": dict(self._skips.skipped),
            "pipeline": self._fingerprint, "grain": self._it.get_state(),
            "next_index": self._stream.count, "held": [i for i, _, _ in self._held]}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get("version") not in (1, _STATE_VERSION):
      raise ValueError(f"data iterator state version {state.get('version')!r} is not {_STATE_VERSION}")
    mismatch = {k: (state["pipeline"].get(k), v) for k, v in self._fingerprint.items()
                if state["pipeline"].get(k) != v}
    if mismatch:
      # Another order or sharding would silently replay or skip data.
      raise ValueError("data iterator state was saved for a different pipeline: "
                       + ", ".join(f"{k} saved {a!r}, now {b!r}" for k, (a, b) in mismatch.items()))
    self._it.set_state(state["grain"])
    self.step = int(state["step"])
    self._skips.skipped = collections.Counter(state["skipped"])
    # Version 1 batched in stream order: every element drawn went into a batch or was skipped.
    self._stream.count = int(state.get("next_index", self.step * self.batch_size + sum(state["skipped"].values())))
    self._held = []
    for i in state.get("held", []):
      example = self._source[i]  # preprocessing is deterministic: the example that was held
      if isinstance(example, Skipped):
        raise ValueError(f"data iterator state holds stream element {i}, which is now skipped "
                         f"({example.reason}: {example.detail}); were the records changed?")
      self._held.append((int(i), self._batcher.fit(example), example))


def make_train_iterator(config, tokenizer, *, process_index: int = 0, process_count: int = 1,
                        bucket_sync: Callable[[int], int] | None = None,
                        prompts_only: bool = False) -> TrainIterator:
  """The process-local training batches of `config.data.train` (see the module docstring).

  Each batch is `batch.build_batch` output (input_ids, positions, attention_mask, pixel_values,
  vision_positions, vision_segment_ids, image_token_index, labels_mask) plus "ids" (record ids),
  with global_batch_size // process_count rows.

  prompts_only (RL rollouts): no target in the tokens, left padding (the sampler continues every
  row at the end), and per-row "answers" and "options" for the reward.

  bucket_sync: index -> index, called with this process's smallest fitting bucket each step; must
  return the same value on every process (`jax_bucket_sync()` takes the max). Required when
  process_count > 1 and data.buckets has more than one bucket.
  """
  d = config.data
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  size = local_batch_size(config, process_count)
  buckets = check_buckets(d.buckets, batch_lib.VisionLayout.from_config(config.model))
  lookahead = d.get("bucket_lookahead", 1)
  if not isinstance(lookahead, int) or lookahead < 1:
    raise ValueError(f"data.bucket_lookahead={lookahead!r} must be a positive number of batches (1: stream order)")
  if process_count > 1 and len(buckets) > 1 and bucket_sync is None:
    raise ValueError(
        f"data.buckets has {len(buckets)} buckets but there are {process_count} processes, which must "
        "agree on each step's batch shape: pass bucket_sync=pipeline.jax_bucket_sync() or configure "
        f"one bucket, e.g. --config.data.buckets=\"({buckets[-1]},)\"")
  if not 0 <= int(d.shuffle_seed) < 2**32:
    raise ValueError(f"data.shuffle_seed={d.shuffle_seed} must be in [0, 2**32)")
  dirs = _dirs(d.train, "data.train")
  ds = _source(dirs, "data.train", Preprocessor(config, tokenizer, prompts_only=prompts_only))
  num_records = len(ds)
  # shuffle before repeat: ShuffleMapDataset reseeds per epoch from the index it is given
  # (index // len), and repeat passes indices through, so every epoch gets its own permutation.
  ds = ds.shuffle(seed=int(d.shuffle_seed)).repeat()
  ds = ds[process_index::process_count]
  # What a saved position depends on (paths may move between runs; the data may not). grain's state
  # layout differs with and without worker processes, hence num_workers.
  fingerprint = {"num_records": num_records, "shuffle_seed": int(d.shuffle_seed),
                 "process_index": process_index, "process_count": process_count,
                 "num_workers": int(d.num_workers)}
  if prompts_only:
    fingerprint["prompts_only"] = True
  # A full pass of this process's share skipped means no record can be used: fail loudly.
  skips = _SkipCounter("data.train", patience=max(1, math.ceil(num_records / process_count)) + 1)
  return TrainIterator(iter(_to_iter(ds, config)), batch_size=size,
                       batcher=_Batcher(config, buckets, bucket_sync, "left" if prompts_only else "right"),
                       skips=skips, fingerprint=fingerprint, source=ds,
                       lookahead=lookahead)


# ----------------------------------------------------------------------------------------------
# Evaluation batches
# ----------------------------------------------------------------------------------------------


class EvalBatches:
  """One deterministic, unshuffled pass over record dirs, re-iterable; `len()` batches per process.

  Every process yields the same number of batches (ceil(ceil(N / P) / batch size), capped by
  max_batches); rows with no record (the tail, skipped records) are empty: attention_mask and
  labels_mask all zero, id "". `skipped` counts the last pass's skipped records by reason.
  """

  def __init__(self, config, tokenizer, dirs, *, process_index: int = 0, process_count: int = 1,
               max_batches: int | None = None, bucket_sync: Callable[[int], int] | None = None):
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    self._config = config
    self.batch_size = local_batch_size(config, process_count)
    buckets = check_buckets(config.data.buckets, batch_lib.VisionLayout.from_config(config.model))
    self._fixed_bucket = None
    if process_count > 1 and len(buckets) > 1 and bucket_sync is None:
      self._fixed_bucket = len(buckets) - 1  # processes cannot compare: all take the largest
    self._batcher = _Batcher(config, buckets, bucket_sync)
    self._dirs = _dirs(dirs, "data.eval")
    ds = _source(self._dirs, "data.eval", Preprocessor(config, tokenizer))
    per_process = math.ceil(len(ds) / process_count)
    self._ds = ds[process_index::process_count]
    self.num_batches = math.ceil(per_process / self.batch_size)
    if max_batches is not None:
      self.num_batches = min(self.num_batches, int(max_batches))
    self.skipped = collections.Counter()

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    skips = _SkipCounter("data.eval", patience=float("inf"))
    self.skipped = skips.skipped
    it = iter(_to_iter(self._ds, self._config))
    try:
      for _ in range(self.num_batches):
        examples = []
        for _ in range(self.batch_size):
          try:
            examples.append(skips.next_example(it))
          except StopIteration:
            break
        # With no examples left (skips, uneven split) this process still yields an all-padding
        # batch: the other processes may have examples and step in lockstep with it.
        yield self._batcher(examples, size=self.batch_size, bucket=self._fixed_bucket)
    finally:
      it.close()


def make_eval_batches(config, tokenizer, dirs, *, process_index: int = 0, process_count: int = 1,
                      max_batches: int | None = None,
                      bucket_sync: Callable[[int], int] | None = None) -> EvalBatches:
  """Finite, deterministic process-local batches of `dirs` (no shuffle); see `EvalBatches`."""
  return EvalBatches(config, tokenizer, dirs, process_index=process_index, process_count=process_count,
                     max_batches=max_batches, bucket_sync=bucket_sync)


# ----------------------------------------------------------------------------------------------
# Benchmark helper
# ----------------------------------------------------------------------------------------------


def measure_throughput(iterator, num_batches: int) -> float:
  """Batches per second over `num_batches` batches, after one untimed batch (worker start-up)."""
  next(iterator)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches / (time.perf_counter() - start)
