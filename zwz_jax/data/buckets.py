"""How well a bucket table (data.buckets) fits a record set, and a table that fits it better.

Each record needs (text tokens, window-padded patches) as the training pipeline processes it. Batches
are grouped by bucket (data.bucket_lookahead), and a bucket computes its whole shape for every
record it takes: its cost is the forward FLOPs of that shape. A table's fit is the records' own
FLOPs over the FLOPs their buckets compute, beside the token and patch fills that a step reports as
text_fill / vision_fill. `propose` adds buckets greedily to the table's largest bucket (the one
launch/compile.py fits to the slice), each time the one that saves the most padded FLOPs.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import math
from typing import Callable, Sequence

import numpy as np

TOKEN_UNIT = 64  # proposed max_tokens are multiples of this; max_patches of the attention window


@dataclasses.dataclass(frozen=True)
class Needs:
  """Per record: id, text tokens, window-padded patches and the FLOPs of its forward unpadded."""
  ids: tuple[str, ...]
  tokens: np.ndarray
  patches: np.ndarray
  flops: np.ndarray
  skipped: collections.Counter  # reason -> records the pipeline cannot use at all (bad record, image)


def needs(config, tokenizer, max_records: int = 0) -> Needs:
  """Every record of config.data.train (or `max_records` of them, spread evenly over its storage
  order), processed as training processes it (grounding, view, target, processor), whatever the
  buckets: a record past the largest one is measured too."""
  from zwz_jax.data import batch as batch_lib
  from zwz_jax.data import pipeline
  from zwz_jax.models import registry
  from zwz_jax.train.metrics import forward_flops
  wide = copy.deepcopy(config)
  layout = batch_lib.VisionLayout.from_config(config.model)
  wide.data.buckets = ((1 << 30, (1 << 30) // layout.window_patches * layout.window_patches),)
  pre = pipeline.Preprocessor(wide, tokenizer)
  cfg = registry.model_config(config.model)
  # The pipeline's own source: record directories or prepared TFDS splits, in storage order.
  source = pipeline._source(pipeline._dirs(config.data.train, "data.train"), "data.train", pre)
  n = len(source)
  indices = range(n) if not 0 < max_records < n else np.linspace(0, n - 1, max_records).round().astype(int)
  ids, tokens, patches, flops, skipped = [], [], [], [], collections.Counter()
  for i in indices:
    ex = source[int(i)]
    if isinstance(ex, pipeline.Skipped):
      skipped[ex.reason] += 1
      continue
    ids.append(ex["id"])
    tokens.append(len(ex["input_ids"]))
    patches.append(layout.padded_patches(ex["grid_thw"]))
    flops.append(forward_flops(cfg, [tuple(int(x) for x in g) for g in ex["grid_thw"]], tokens[-1],
                               window_patches=layout.window_patches))
  return Needs(tuple(ids), np.asarray(tokens, np.int64), np.asarray(patches, np.int64), np.asarray(flops), skipped)


def bucket_cost(config) -> Callable[[tuple[int, int]], float]:
  """(max_tokens, max_patches) -> forward FLOPs of one row of that shape, as the step computes it."""
  from zwz_jax.data import batch as batch_lib
  from zwz_jax.models import registry
  from zwz_jax.train.metrics import row_forward_flops
  cfg = registry.model_config(config.model)
  window = batch_lib.VisionLayout.from_config(config.model).window_patches

  @functools.lru_cache(maxsize=None)
  def cost(bucket: tuple[int, int]) -> float:
    return row_forward_flops(cfg, bucket[0], bucket[1], window_patches=window)
  return cost


def assign(n: Needs, table: Sequence[tuple[int, int]]) -> np.ndarray:
  """Each record's bucket: the first of the (growing) table that holds it, as the pipeline picks
  for a batch of such records; -1 past the largest."""
  out = np.full(len(n.tokens), -1)
  for i, (t, p) in reversed(list(enumerate(table))):
    out[(n.tokens <= t) & (n.patches <= p)] = i
  return out


def fit(n: Needs, table: Sequence[tuple[int, int]], cost) -> list[dict]:
  """One row per bucket, then one for the records past the largest and one for the table: records,
  their share of the computed FLOPs, token and patch fill, and own / computed FLOPs."""
  where = assign(n, table)
  computed = {i: cost(tuple(b)) for i, b in enumerate(table)}
  total = sum(computed[i] * int(np.sum(where == i)) for i in computed) or 1.0
  rows = []
  for i, (t, p) in enumerate(table):
    m = where == i
    k = int(np.sum(m))
    rows.append({"bucket": (t, p), "records": k, "flops_share": computed[i] * k / total,
                 "token_fill": float(np.sum(n.tokens[m])) / max(k * t, 1),
                 "patch_fill": float(np.sum(n.patches[m])) / max(k * p, 1),
                 "flop_fill": float(np.sum(n.flops[m])) / max(computed[i] * k, 1.0)})
  kept = where >= 0
  rows.append({"bucket": "past the largest", "records": int(np.sum(~kept))})
  slots = np.asarray(table).reshape(-1, 2)[where[kept]]  # each kept record's bucket shape
  rows.append({"bucket": "table", "records": int(np.sum(kept)), "flops_share": 1.0,
               "token_fill": float(np.sum(n.tokens[kept])) / max(int(slots[:, 0].sum()), 1),
               "patch_fill": float(np.sum(n.patches[kept])) / max(int(slots[:, 1].sum()), 1),
               "flop_fill": float(np.sum(n.flops[kept])) / total})
  return rows


def computed_flops(n: Needs, table: Sequence[tuple[int, int]], cost) -> float:
  """The FLOPs the table's buckets compute for the records it holds."""
  where = assign(n, table)
  return sum(cost(tuple(b)) * int(np.sum(where == i)) for i, b in enumerate(table))


def _is_chain(table) -> bool:
  return all(a[0] <= b[0] and a[1] <= b[1] and a != b for a, b in zip(table, table[1:]))


def _candidates(values: np.ndarray, unit: int, limit: int, count: int) -> list[int]:
  """At most `count` sizes, multiples of `unit` up to `limit`: the records' needs at evenly spaced
  quantiles, rounded up."""
  values = values[values <= limit]
  if not len(values):
    return []
  qs = np.quantile(values, np.linspace(0, 1, count))
  return sorted({min(limit, int(math.ceil(q / unit) * unit)) for q in qs})


def propose(n: Needs, size: int, largest: tuple[int, int], cost, patch_unit: int,
            candidates: int = 24) -> tuple[tuple[int, int], ...]:
  """A growing table of at most `size` buckets ending in `largest`: from `largest` alone, add the
  bucket that cuts the computed FLOPs the most until `size` buckets or no bucket helps. Records past
  `largest` stay out, as the config drops them."""
  largest = (int(largest[0]), int(largest[1]))
  ts = _candidates(n.tokens, TOKEN_UNIT, largest[0], candidates)
  ps = _candidates(n.patches, patch_unit, largest[1], candidates)
  table = (largest,)
  best = computed_flops(n, table, cost)
  while len(table) < size:
    step = None
    for t in ts:
      for p in ps:
        new = tuple(sorted(set(table) | {(t, p)}))
        if len(new) == len(table) or not _is_chain(new):
          continue
        c = computed_flops(n, new, cost)
        if c < best and (step is None or c < step[0]):
          step = (c, new)
    if step is None:
      break
    best, table = step
  return table
