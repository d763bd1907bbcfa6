"""Attention coverage: how much of the answer token's attention over an image falls in the GT box.

For one query position (the one that predicts the answer) and one deep decoder layer, take the
attention probabilities over the keys of one image's `<|image_pad|>` tokens, average the heads, and
report sum(attn * inside) / sum(attn). Each LLM image token stands for one merge_size x merge_size
block of patches, i.e. a (patch * merge)^2 pixel cell of the RESIZED image, in row-major order of the
merged grid; `token_boxes` maps those cells back to original-image pixels.

Modes of `coverage`:
  "fractional" (default): a token counts by the exact share of its cell's area inside the box.
  "center": a token counts fully if its cell's centre is inside the box, else not at all.
  "reference": the authors' utils/eval_coverage.py rule (box edges truncated to token cells, the
    last row/column included), for comparing with the paper's numbers.

Numpy and PIL only (no jax): this runs on hosts that just post-process saved attention rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

MODES = ("fractional", "center", "reference")
BOX_COLOR = (0, 255, 0)

# Viridis sampled at 9 evenly spaced points; linear interpolation between them is within a few
# levels of the full table, and avoids a matplotlib dependency.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], np.float64)


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def merged_grid(grid_thw, merge_size: int = 2) -> tuple[int, int]:
  """(rows, cols) of LLM image tokens for one still image's grid_thw (t, h, w) in patches."""
  g = np.asarray(grid_thw).reshape(-1)
  if g.shape != (3,):
    raise ValueError(f"grid_thw must be one image's (t, h, w), got shape {np.shape(grid_thw)}")
  t, h, w = (int(v) for v in g)
  if t != 1:
    raise ValueError(f"coverage is defined for still images (t=1), got grid_thw {[t, h, w]}")
  if h <= 0 or w <= 0 or h % merge_size or w % merge_size:
    raise ValueError(f"grid_thw {[t, h, w]} is not a positive multiple of merge_size={merge_size}")
  return h // merge_size, w // merge_size


def token_boxes(grid_thw, image_size: Sequence[int], *, patch_size: int = 14,
                merge_size: int = 2) -> np.ndarray:
  """Box (x0, y0, x1, y1) in ORIGINAL image pixels of each LLM image token, float64 (N, 4).

  The resized image is (grid_h * patch, grid_w * patch) and covers the whole original image (the
  resize only rescales), so token cell k along an axis spans k/n .. (k+1)/n of the original side.
  Edges are computed as k * side / n so neighbours share edges exactly and the last edge is `side`.
  Rows are in row-major order of the merged grid, the order of the image's `<|image_pad|>` tokens.
  `patch_size` only sets the resized size, which the mapping does not need beyond the grid.
  """
  del patch_size  # the cell fractions depend on the grid alone
  rows, cols = merged_grid(grid_thw, merge_size)
  width, height = (float(v) for v in image_size)
  if width <= 0 or height <= 0:
    raise ValueError(f"image_size must be positive (width, height), got {tuple(image_size)}")
  xs = np.arange(cols + 1) * width / cols
  ys = np.arange(rows + 1) * height / rows
  x0, y0 = np.meshgrid(xs[:-1], ys[:-1])
  x1, y1 = np.meshgrid(xs[1:], ys[1:])
  return np.stack([x0, y0, x1, y1], axis=-1).reshape(-1, 4)


def _check_bbox(bbox) -> np.ndarray:
  b = np.asarray(bbox, np.float64).reshape(-1)
  if b.shape != (4,) or not np.isfinite(b).all() or b[2] < b[0] or b[3] < b[1]:
    raise ValueError(f"bbox must be finite [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1, got {bbox}")
  return b


def box_fraction(boxes: np.ndarray, bbox) -> np.ndarray:
  """Share of each token box's area inside `bbox` (exact rectangle intersection), (N,) in [0, 1]."""
  boxes = np.asarray(boxes, np.float64)
  b = _check_bbox(bbox)
  iw = np.clip(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]), 0, None)
  ih = np.clip(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]), 0, None)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return iw * ih / area


def _center_inside(boxes: np.ndarray, bbox) -> np.ndarray:
  b = _check_bbox(bbox)
  cx = (boxes[:, 0] + boxes[:, 2]) / 2
  cy = (boxes[:, 1] + boxes[:, 3]) / 2
  return ((cx >= b[0]) & (cx < b[2]) & (cy >= b[1]) & (cy < b[3])).astype(np.float64)


def _reference_inside(boxes: np.ndarray, bbox) -> np.ndarray:
  """The authors' rule: truncate the box to token cells, clamp, and include the end cells."""
  cols = len(np.unique(boxes[:, 0]))
  rows = len(boxes) // cols
  width, height = boxes[:, 2].max(), boxes[:, 3].max()
  b = _check_bbox(bbox)
  x0, x1 = (min(max(int(v / width * cols), 0), cols - 1) for v in (b[0], b[2]))
  y0, y1 = (min(max(int(v / height * rows), 0), rows - 1) for v in (b[1], b[3]))
  # A box inside one cell is widened to two, as there; the slice end may then pass the grid.
  x1 = x0 + 1 if x1 <= x0 else x1
  y1 = y0 + 1 if y1 <= y0 else y1
  inside = np.zeros((rows, cols))
  inside[y0:y1 + 1, x0:x1 + 1] = 1
  return inside.reshape(-1)


# ----------------------------------------------------------------------------------------------
# Coverage
# ----------------------------------------------------------------------------------------------


def _head_mean(attn) -> np.ndarray:
  a = np.asarray(attn, np.float64)
  if a.ndim == 2:
    a = a.mean(axis=0)
  if a.ndim != 1:
    raise ValueError(f"attention must be (N,) or (heads, N), got shape {np.shape(attn)}")
  return a


def coverage(attn, boxes: np.ndarray, bbox, *, mode: str = "fractional") -> float:
  """sum(attn * inside) / sum(attn) for attention over one image's tokens, heads averaged first.

  attn: (N,) or (heads, N) probabilities over the image's tokens (any scale; it is renormalised,
  so the share is of the attention the image receives, not of the whole row).
  """
  a = _head_mean(attn)
  boxes = np.asarray(boxes, np.float64)
  if a.shape[0] != boxes.shape[0]:
    raise ValueError(f"attention covers {a.shape[0]} image tokens but there are {boxes.shape[0]} "
                     "token boxes; slice the row with answer_attention_to_images")
  if mode == "fractional":
    inside = box_fraction(boxes, bbox)
  elif mode == "center":
    inside = _center_inside(boxes, bbox)
  elif mode == "reference":
    inside = _reference_inside(boxes, bbox)
  else:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  total = a.sum()
  if not total > 0:
    raise ValueError(f"attention over the image tokens sums to {total}; nothing to normalise")
  return float((a * inside).sum() / total)


def summarize(values) -> dict:
  """Mean, median and count of the finite values (NaN/inf are left out, not counted)."""
  v = np.asarray(list(values), np.float64).reshape(-1)
  v = v[np.isfinite(v)]
  if not len(v):
    return {"mean": float("nan"), "median": float("nan"), "n": 0}
  return {"mean": float(v.mean()), "median": float(np.median(v)), "n": int(len(v))}


# ----------------------------------------------------------------------------------------------
# Picking the image tokens out of an attention row
# ----------------------------------------------------------------------------------------------


def image_token_spans(input_ids, image_token_id: int, grid_thw=None,
                      merge_size: int = 2) -> list[tuple[int, int]]:
  """(start, end) key positions of each image's `<|image_pad|>` tokens in one sequence.

  Without `grid_thw`, each contiguous run is one image (the chat template puts vision start/end
  tokens between images). With it ((num_images, 3)), runs are split by each image's token count,
  so images placed back to back are still told apart, and the counts are checked.
  """
  ids = np.asarray(input_ids)
  if ids.ndim != 1:
    raise ValueError(f"input_ids must be one sequence (L,), got shape {np.shape(input_ids)}")
  mask = np.concatenate([[0], (ids == image_token_id).astype(np.int8), [0]])
  edges = np.diff(mask)
  runs = [(int(s), int(e)) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))]
  if grid_thw is None:
    return runs
  counts = []
  for g in np.asarray(grid_thw).reshape(-1, 3):
    rows, cols = merged_grid(g, merge_size)
    counts.append(rows * cols)
  spans, i = [], 0
  for start, end in runs:
    while start < end:
      if i >= len(counts) or start + counts[i] > end:
        raise ValueError(f"image-token run [{start}, {end}) does not match the images' token "
                         f"counts {counts} (image {i})")
      spans.append((start, start + counts[i]))
      start += counts[i]
      i += 1
  if i != len(counts):
    raise ValueError(f"{len(counts)} images given but the image tokens cover only {i}")
  return spans


def answer_attention_to_images(attn_row, input_ids, image_token_id: int, image_index: int = 0, *,
                               grid_thw=None, merge_size: int = 2) -> np.ndarray:
  """One query position's attention over image `image_index`'s tokens, (heads, N).

  attn_row: (heads, L) or (L,) probabilities of the query over key positions laid out like
  `input_ids` (L may be longer, e.g. a decode cache). The authors use the last prompt position,
  the one whose logits give the first answer token.
  """
  a = np.asarray(attn_row)
  if a.ndim == 1:
    a = a[None]
  if a.ndim != 2:
    raise ValueError(f"attn_row must be (heads, L) or (L,), got shape {np.shape(attn_row)}")
  spans = image_token_spans(input_ids, image_token_id, grid_thw, merge_size)
  if not -len(spans) <= image_index < len(spans):
    raise ValueError(f"image_index {image_index} out of range: the sequence has {len(spans)} images")
  start, end = spans[image_index]
  if a.shape[1] < end:
    raise ValueError(f"attention row has {a.shape[1]} keys but image {image_index}'s tokens end "
                     f"at position {end}")
  return a[:, start:end]


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


def attention_map(attn, grid_thw, merge_size: int = 2) -> np.ndarray:
  """Token attention (N,) (or (heads, N), averaged) as the merged grid (rows, cols)."""
  rows, cols = merged_grid(grid_thw, merge_size)
  a = _head_mean(attn)
  if a.shape[0] != rows * cols:
    raise ValueError(f"attention has {a.shape[0]} tokens but grid_thw {list(np.ravel(grid_thw))} "
                     f"gives {rows}x{cols}")
  return a.reshape(rows, cols)


def colormap(x: np.ndarray) -> np.ndarray:
  """Values in [0, 1] -> uint8 RGB (..., 3), viridis-like."""
  x = np.clip(np.nan_to_num(np.asarray(x, np.float64)), 0, 1) * (len(_VIRIDIS) - 1)
  lo = np.minimum(np.floor(x).astype(np.int64), len(_VIRIDIS) - 2)
  t = (x - lo)[..., None]
  rgb = _VIRIDIS[lo] * (1 - t) + _VIRIDIS[lo + 1] * t
  return np.round(rgb).astype(np.uint8)


def heatmap_png(image: Image.Image, attn, grid_thw, bbox=None, path=None, alpha: float = 0.5, *,
                merge_size: int = 2, resample: str = "nearest") -> Image.Image:
  """The image with the attention map (min-max scaled, viridis) blended on top, GT box in green.

  `bbox` is in the given image's pixels. resample "nearest" shows token cells as blocks;
  "bilinear" smooths them. Saved to `path` (format from its extension) when given.
  """
  if resample not in ("nearest", "bilinear"):
    raise ValueError(f"resample must be 'nearest' or 'bilinear', got {resample!r}")
  grid = attention_map(attn, grid_thw, merge_size).astype(np.float32)
  span = float(grid.max() - grid.min())
  grid = (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)
  base = image.convert("RGB")
  method = Image.NEAREST if resample == "nearest" else Image.BILINEAR
  up = np.asarray(Image.fromarray(grid).resize(base.size, resample=method))
  blend = (1 - alpha) * np.asarray(base, np.float64) + alpha * colormap(up).astype(np.float64)
  out = Image.fromarray(np.round(blend).clip(0, 255).astype(np.uint8), "RGB")
  if bbox is not None:
    b = _check_bbox(bbox)
    width = max(2, round(min(base.size) / 200))
    ImageDraw.Draw(out).rectangle([float(v) for v in b], outline=BOX_COLOR, width=width)
  if path is not None:
    out.save(path)
  return out
