"""The batch contract: what the model consumes, built on the host from processed examples.

A batch is a dict of numpy (or device) arrays, one row per example: `MODEL_INPUTS` (the keys
`VisionLanguageModel.__call__` takes), plus `labels_mask` for SFT and the rollout keys for RL. Every
key holds its rows on axis 0 except the M-RoPE `positions` (3, B, L), which hold them on axis 1;
`row_axis` says which, and the row helpers below (take, concatenate, repeat, pad, split) are the only
code that needs to know.

Each example's patches are laid out in window order with every attention window padded to the
family's `window_patches` (see `zwz_jax.models.qwen2_5_vl`), so window attention is a reshape on
device. `image_token_index` maps every `<|image_pad|>` token of the prompt to its merged vision token
in that layout, which undoes the window permutation without any device-side gather of indices from
HF's `reverse_indices`; it is -1 everywhere else, so an `<|image_pad|>` the model generates stays text.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from zwz_jax.data import processor

MODEL_INPUTS = ("input_ids", "positions", "attention_mask", "pixel_values", "vision_positions",
                "vision_segment_ids", "image_token_index")
def fill_value(key: str) -> int:
  """What padding rows and tokens hold: -1 in image_token_index (not an image slot), else 0."""
  return -1 if key == "image_token_index" else 0


def row_axis(key: str) -> int:
  """The axis holding a batch key's rows."""
  return 1 if key == "positions" else 0


def num_rows(batch: dict) -> int:
  key = next(iter(batch))
  return np.shape(batch[key])[row_axis(key)]


def take_rows(batch: dict, rows) -> dict:
  """Rows `rows` (a slice or indices) of every key."""
  return {k: v[:, rows] if row_axis(k) else v[rows] for k, v in batch.items()}


def concat_rows(batches: Sequence[dict]) -> dict:
  return {k: np.concatenate([b[k] for b in batches], axis=row_axis(k)) for k in batches[0]}


def repeat_rows(batch: dict, n: int) -> dict:
  """Each row n times in a row (rows i * n .. i * n + n - 1 are copies of row i)."""
  return {k: np.repeat(np.asarray(v), n, axis=row_axis(k)) for k, v in batch.items()}


def pad_rows(batch: dict, n: int) -> dict:
  """n empty rows appended (zeros; -1 for image_token_index)."""
  out = {}
  for k, v in batch.items():
    widths = [(0, 0)] * np.ndim(v)
    widths[row_axis(k)] = (0, n)
    out[k] = np.pad(v, widths, constant_values=fill_value(k))
  return out


def split_rows(batch: dict, k: int) -> dict:
  """(k, rows / k, ...) micro-batches of every key, stacked on a new leading axis (works on jax arrays)."""
  out = {}
  for key, x in batch.items():
    a = row_axis(key)
    x = x.reshape(x.shape[:a] + (k, -1) + x.shape[a + 1:])
    out[key] = x if a == 0 else x.swapaxes(0, a)
  return out


def batch_spec(key: str, ndim: int):
  """A batch key's PartitionSpec: rows split over the batch axes (data, fsdp), nothing else."""
  from zwz_jax.sharding import logical_to_spec  # jax, imported late: the input workers stay jax-free
  axes = [None] * ndim
  axes[row_axis(key)] = "act_batch"
  return logical_to_spec(tuple(axes))


def eval_rows(mesh, prompts: int, processes: int = 1) -> int:
  """Rows of the evaluation batch that asks `prompts` prompts: rounded up to a multiple of the batch
  axes (data x fsdp, and of the processes) so that each chip decodes its own rows. Replicated
  instead, every chip would decode every prompt: at eval_zoombench's 16 prompts on 64 chips, 16x
  the work and the batch per chip. The rows past `prompts` repeat a prompt and are dropped."""
  n = math.lcm(mesh.shape["data"] * mesh.shape["fsdp"], processes)
  return -(-prompts // n) * n


def placement(mesh, key: str, shape: Sequence[int], processes: int = 1):
  """Where an evaluation batch key goes: its rows split over the batch axes as `batch_spec` says.
  The global rows (this process's times `processes`) must divide over data x fsdp (`eval_rows`).
  The compiled eval program (zwz_jax.aot) takes its inputs this way too."""
  from jax.sharding import NamedSharding
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  rows = shape[row_axis(key)] * processes
  if rows % n:
    raise ValueError(f"{rows} rows of {key!r} do not divide over the batch axes data x fsdp = {n} of mesh "
                     f"{dict(mesh.shape)}; pad the batch to eval_rows()")
  return NamedSharding(mesh, batch_spec(key, len(shape)))


def place(mesh, local_batch: dict, keys: Sequence[str]) -> dict:
  """This process's rows of an evaluation batch -> global arrays placed by `placement`."""
  import jax
  out = {}
  for key in keys:
    x = np.asarray(local_batch[key])
    out[key] = jax.make_array_from_process_local_data(placement(mesh, key, x.shape, jax.process_count()), x)
  return out


def local_rows(x) -> np.ndarray:
  """This process's rows of a global array placed by `to_global` or `place` (its block, in process
  order), as numpy."""
  import jax
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  full = np.asarray(multihost_utils.process_allgather(x, tiled=True))
  per = full.shape[0] // jax.process_count()
  return full[jax.process_index() * per:(jax.process_index() + 1) * per]


def to_global(mesh, local_batch: dict, keys: Sequence[str]) -> dict:
  """This process's numpy rows of `keys` -> global arrays sharded over the mesh's batch axes."""
  import jax
  from jax.sharding import NamedSharding
  out = {}
  for key in keys:
    x = np.asarray(local_batch[key])
    out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, batch_spec(key, x.ndim)), x)
  return out


@dataclasses.dataclass(frozen=True)
class VisionLayout:
  """The family's vision facts the layout needs, as a jax-free picklable value (grain workers hold
  it). Taken from the family's `VisionConfig`, so window sizes are defined once, there."""
  patch_size: int
  merge_size: int
  window_size: int
  patch_dim: int  # values per flattened patch
  window_merged: int  # side of a window in merged tokens
  window_patches: int  # patches per padded window
  max_images: int  # images (video frames) an example may hold (model.vision.max_images)

  @classmethod
  def of(cls, vision_cfg) -> VisionLayout:
    """From a family's VisionConfig (or a VisionLayout)."""
    if isinstance(vision_cfg, VisionLayout):
      return vision_cfg
    v = vision_cfg
    return cls(int(v.patch_size), int(v.spatial_merge_size), int(v.window_size), int(v.patch_dim),
               int(v.window_merged), int(v.window_patches), int(v.max_images))

  @classmethod
  def from_config(cls, model_cfg) -> VisionLayout:
    """From `config.model` (a ConfigDict), through the family's config class."""
    from zwz_jax.models import registry  # the model side, only where a ConfigDict must be read
    return cls.of(registry.model_config(model_cfg).vision)

  @property
  def merge_unit(self) -> int:
    return self.merge_size**2

  def padded_patches(self, grid_thw) -> int:
    """Window-padded patch count of `layout_vision` for these grids, without laying them out."""
    total = 0
    for t, h, w in np.asarray(grid_thw).reshape(-1, 3):
      lh, lw = int(h) // self.merge_size, int(w) // self.merge_size
      total += int(t) * math.ceil(lh / self.window_merged) * math.ceil(lw / self.window_merged) * self.window_patches
    return total


def layout_vision(pixel_values: np.ndarray, grid_thw: np.ndarray, vision) -> dict[str, np.ndarray]:
  """Window-ordered, window-padded patches of one example (all its images, concatenated).

  vision: a `VisionLayout` or the family's VisionConfig.
  Returns patches (P, D), positions (P, 2), segment_ids (P,) (one id per image frame, 0 = padding),
  and token_index (num_merged_tokens,): for each merged token in the processor's (HF) order, its
  index among the merged outputs of this layout.
  """
  lay = VisionLayout.of(vision)
  unit, merge_size, window_patches = lay.merge_unit, lay.merge_size, lay.window_patches
  dim = pixel_values.shape[1]
  if window_patches == unit:  # windows of one merged token (Qwen3-VL): the processor's order, unpadded
    return _layout_unwindowed(pixel_values, grid_thw, merge_size)
  patches, positions, segments, token_index = [], [], [], []
  start = 0
  slot = 0  # merged-token slots used so far
  frame_base = 0
  for grid in np.asarray(grid_thw):
    t, h, w = (int(g) for g in grid)
    n = t * h * w
    img = pixel_values[start:start + n]
    pos = processor.vision_rope_positions(grid, merge_size)
    order, window_ids = processor.window_index(grid, merge_size=merge_size, window_size=lay.window_size,
                                               patch_size=lay.patch_size)
    frame_of = order // ((h // merge_size) * (w // merge_size))
    slots = np.empty(n // unit, np.int64)
    for win in np.unique(window_ids):  # window ids increase along `order`
      merged = order[window_ids == win]
      ids = (merged[:, None] * unit + np.arange(unit)).reshape(-1)
      pad = window_patches - len(ids)
      patches.append(np.concatenate([img[ids], np.zeros((pad, dim), img.dtype)]))
      positions.append(np.concatenate([pos[ids], np.zeros((pad, 2), pos.dtype)]))
      seg = np.repeat(frame_base + frame_of[window_ids == win] + 1, unit)
      segments.append(np.concatenate([seg, np.zeros(pad, seg.dtype)]))
      slots[merged] = slot + np.arange(len(merged))
      slot += window_patches // unit
    token_index.append(slots)
    frame_base += t
    start += n
  if start != len(pixel_values):
    raise ValueError(f"grid_thw covers {start} patches but pixel_values has {len(pixel_values)}")
  if not patches:
    return {"patches": np.zeros((0, dim), np.float32), "positions": np.zeros((0, 2), np.int32),
            "segment_ids": np.zeros((0,), np.int32), "token_index": np.zeros((0,), np.int32)}
  return {
      "patches": np.concatenate(patches).astype(np.float32),
      "positions": np.concatenate(positions).astype(np.int32),
      "segment_ids": np.concatenate(segments).astype(np.int32),
      "token_index": np.concatenate(token_index).astype(np.int32),
  }


def _layout_unwindowed(pixel_values, grid_thw, merge_size):
  """`layout_vision` when every window is one merged token: patches stay as the processor gives them."""
  grids = np.asarray(grid_thw).reshape(-1, 3)
  n = int(np.prod(grids, axis=1).sum()) if len(grids) else 0
  if n != len(pixel_values):
    raise ValueError(f"grid_thw covers {n} patches but pixel_values has {len(pixel_values)}")
  frames = np.concatenate([[0], np.cumsum(grids[:, 0])])
  segments = [np.repeat(frames[i] + 1 + np.arange(int(t)), int(h) * int(w)) for i, (t, h, w) in enumerate(grids)]
  return {
      "patches": np.asarray(pixel_values, np.float32).reshape(n, np.shape(pixel_values)[1]),
      "positions": (processor.vision_rope_positions(grids, merge_size) if n else np.zeros((0, 2))).astype(np.int32),
      "segment_ids": (np.concatenate(segments) if n else np.zeros(0)).astype(np.int32),
      "token_index": np.arange(n // merge_size**2, dtype=np.int32),
  }


def build_batch(examples: Sequence[dict], *, vision_cfg, image_token_id: int, max_tokens: int,
                max_patches: int, pad_id: int = 0, pad_side: str = "right") -> dict[str, np.ndarray]:
  """Pads processed examples (from `processor.Processor`) to (max_tokens, max_patches).

  vision_cfg: a `VisionLayout` or the family's VisionConfig. Output keys: `MODEL_INPUTS`, plus
  `labels_mask` when the examples carry one.
  pad_side "left" right-aligns the tokens (batched generation: every row continues at the end).
  """
  if pad_side not in ("right", "left"):
    raise ValueError(f"pad_side must be 'right' or 'left', got {pad_side!r}")
  v = VisionLayout.of(vision_cfg)
  if max_patches % v.window_patches:
    raise ValueError(f"max_patches={max_patches} must be a multiple of the window ({v.window_patches} patches)")
  b = len(examples)
  dim = v.patch_dim
  out = {
      "input_ids": np.full((b, max_tokens), pad_id, np.int32),
      "positions": np.zeros((3, b, max_tokens), np.int32),
      "attention_mask": np.zeros((b, max_tokens), np.int32),
      "pixel_values": np.zeros((b, max_patches, dim), np.float32),
      "vision_positions": np.zeros((b, max_patches, 2), np.int32),
      "vision_segment_ids": np.zeros((b, max_patches), np.int32),
      "image_token_index": np.full((b, max_tokens), -1, np.int32),
  }
  with_labels = all("labels_mask" in ex for ex in examples)
  if with_labels:
    out["labels_mask"] = np.zeros((b, max_tokens), bool)
  for i, ex in enumerate(examples):
    ids = np.asarray(ex["input_ids"])
    if len(ids) > max_tokens:
      raise ValueError(f"example {i}: {len(ids)} tokens exceed the token budget max_tokens={max_tokens}")
    grids = np.asarray(ex["grid_thw"]).reshape(-1, 3)
    if grids[:, 0].sum() > v.max_images:
      raise ValueError(f"example {i}: {grids[:, 0].sum()} images (video frames count one each) exceed "
                       f"model.vision.max_images={v.max_images}")
    lay = layout_vision(np.asarray(ex["pixel_values"]), grids, v)
    p = len(lay["patches"])
    if p > max_patches:
      raise ValueError(f"example {i}: {p} window-padded patches exceed the patch budget max_patches={max_patches}")
    is_image = ids == image_token_id
    if is_image.sum() != len(lay["token_index"]):
      raise ValueError(f"example {i}: {is_image.sum()} image tokens in the text but the images give "
                       f"{len(lay['token_index'])} merged tokens")
    n = len(ids)
    t = slice(0, n) if pad_side == "right" else slice(max_tokens - n, max_tokens)
    out["input_ids"][i, t] = ids
    out["positions"][:, i, t] = ex["positions"]
    out["attention_mask"][i, t] = 1
    out["pixel_values"][i, :p] = lay["patches"]
    out["vision_positions"][i, :p] = lay["positions"]
    out["vision_segment_ids"][i, :p] = lay["segment_ids"]
    out["image_token_index"][i, t][is_image] = lay["token_index"]
    if with_labels:
      out["labels_mask"][i, t] = ex["labels_mask"]
  return out
