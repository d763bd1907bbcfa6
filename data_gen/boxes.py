"""Region proposals: parse the teacher's boxes and keep the confident micro regions (cropped and
upscaled with zwz_jax.records.region_box and zoom).

Coordinate formats (`fmt`) of the teacher's output:
  qwen2_5: absolute pixels of the image the model saw (Qwen2.5-VL grounding).
  qwen3:   0-1000 normalised to the image width and height (Qwen3-VL grounding).
Parsed boxes are returned in pixels of the image whose size is passed as `image_size`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence


from data_gen.parsing import ParseError, as_text, json_items

FORMATS = ("qwen2_5", "qwen3")
DROP_REASONS = ("zero_area", "low_score", "too_large", "too_small", "duplicate")
# Method constants (paper / authors' code): proposal confidence >= 0.75, region < 10% of the image.
MIN_SCORE = 0.75
MAX_AREA_FRAC = 0.10

_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d", "bounding_box")
_LABEL_KEYS = ("label", "name", "object", "category", "class")
_SCORE_KEYS = ("score", "confidence", "conf", "probability")
_NUM = r"-?\d+(?:\.\d+)?"
_BOX_TOKENS = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?<\|box_start\|>\s*"
    rf"\(?\s*(?P<x0>{_NUM})\s*,\s*(?P<y0>{_NUM})\s*\)?\s*,\s*\(?\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)?"
    r"\s*<\|box_end\|>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Box:
  """x0, y0, x1, y1 in pixels; score None when the teacher gave none (filtered as low_score)."""
  x0: float
  y0: float
  x1: float
  y1: float
  label: str = ""
  score: float | None = None

  @property
  def width(self) -> float:
    return self.x1 - self.x0

  @property
  def height(self) -> float:
    return self.y1 - self.y0

  @property
  def area(self) -> float:
    return max(0.0, self.width) * max(0.0, self.height)

  def as_list(self) -> list[float]:
    return [self.x0, self.y0, self.x1, self.y1]


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------


def _coords(value: Any) -> list[float] | None:
  if isinstance(value, str):
    value = re.findall(_NUM, value)
  if isinstance(value, dict):  # {"x0":..,"y0":..,...} or {"x1":..,"y1":..,"x2":..,"y2":..}
    for keys in (("x0", "y0", "x1", "y1"), ("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax")):
      if all(k in value for k in keys):
        value = [value[k] for k in keys]
        break
    else:
      return None
  if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(p, (list, tuple)) for p in value):
    value = [*value[0], *value[1]]  # [[x0, y0], [x1, y1]]
  if not isinstance(value, (list, tuple)) or len(value) != 4:
    return None
  try:
    out = [float(v) for v in value]
  except (TypeError, ValueError):
    return None
  return out if all(math.isfinite(v) for v in out) else None


def _score(value: Any) -> float | None:
  if isinstance(value, str):
    m = re.search(_NUM, value)
    if not m:
      return None
    v = float(m.group()) / (100.0 if "%" in value else 1.0)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    v = float(value)
  else:
    return None
  if 1.0 < v <= 100.0:  # a percentage written without the sign
    v /= 100.0
  return v if math.isfinite(v) and 0.0 <= v <= 1.0 else None


def _first(d: dict, keys: Sequence[str]) -> Any:
  return next((d[k] for k in keys if k in d), None)


def parse_boxes(text: Any, image_size: tuple[int, int], fmt: str = "qwen2_5", *,
                model_size: tuple[int, int] | None = None, default_score: float | None = None) -> list[Box]:
  """Boxes from teacher output, in pixels of an image of `image_size` (w, h).

  model_size: for qwen2_5, the (w, h) of the image as the model saw it (its processor's resize), when
  that differs from `image_size`. default_score: the score of boxes the teacher gave none.
  An output that is an empty list gives []; one from which no box parses raises ParseError.
  """
  if fmt not in FORMATS:
    raise ValueError(f"box format {fmt!r} is not one of {FORMATS}")
  text = as_text(text)
  w, h = image_size
  if fmt == "qwen3":
    sx, sy = w / 1000.0, h / 1000.0
  else:
    mw, mh = model_size or image_size
    sx, sy = w / mw, h / mh

  raw = []  # (coords, label, score)
  items = json_items(text, dict, _BOX_KEYS)
  if items:
    for item in items:
      if isinstance(item, dict):
        c = _coords(_first(item, _BOX_KEYS))
        if c:
          label = _first(item, _LABEL_KEYS)
          raw.append((c, str(label).strip() if label is not None else "", _score(_first(item, _SCORE_KEYS))))
  if not raw:
    for m in _BOX_TOKENS.finditer(text):
      raw.append(([float(m.group(k)) for k in ("x0", "y0", "x1", "y1")], (m.group("label") or "").strip(), None))
  if not raw:
    if items == []:  # the teacher saw no small objects
      return []
    raise ParseError("no bounding boxes in teacher output", text)

  out = []
  for (x0, y0, x1, y1), label, score in raw:
    x0, x1 = sorted((x0 * sx, x1 * sx))
    y0, y1 = sorted((y0 * sy, y1 * sy))
    out.append(Box(x0, y0, x1, y1, label, default_score if score is None else score))
  return out


# ----------------------------------------------------------------------------------------------
# Geometry and filtering
# ----------------------------------------------------------------------------------------------


def clip_box(box: Box, width: int, height: int) -> Box:
  return dataclasses.replace(box, x0=min(max(box.x0, 0.0), width), y0=min(max(box.y0, 0.0), height),
                             x1=min(max(box.x1, 0.0), width), y1=min(max(box.y1, 0.0), height))


def iou(a: Box, b: Box) -> float:
  iw = min(a.x1, b.x1) - max(a.x0, b.x0)
  ih = min(a.y1, b.y1) - max(a.y0, b.y0)
  if iw <= 0 or ih <= 0:
    return 0.0
  inter = iw * ih
  union = a.area + b.area - inter
  return inter / union if union > 0 else 0.0


def _score_key(box: Box) -> float:
  return -1.0 if box.score is None else box.score


def _dedupe(boxes: Sequence[Box], iou_threshold: float) -> tuple[list[Box], list[Box]]:
  # Greedy NMS, class-agnostic: two labels on one region are still one region to ask about.
  order = sorted(range(len(boxes)), key=lambda i: -_score_key(boxes[i]))  # stable: ties keep input order
  kept_idx, dropped = [], []
  for i in order:
    if any(iou(boxes[i], boxes[j]) > iou_threshold for j in kept_idx):
      dropped.append(boxes[i])
    else:
      kept_idx.append(i)
  return [boxes[i] for i in sorted(kept_idx)], dropped


def dedupe(boxes: Sequence[Box], iou_threshold: float = 0.7) -> list[Box]:
  """Boxes with no higher-scored box overlapping them above `iou_threshold`, in input order."""
  return _dedupe(boxes, iou_threshold)[0]


def filter_boxes(boxes: Sequence[Box], width: int, height: int, *, min_score: float = MIN_SCORE,
                 max_area_frac: float = MAX_AREA_FRAC, min_side: float = 8,
                 iou_threshold: float = 0.7) -> tuple[list[Box], list[tuple[Box, str]]]:
  """(kept, dropped) micro regions; kept boxes are clipped to the image, dropped carry a reason.

  Checks in order: zero_area (after clipping), low_score (score < min_score or missing),
  too_large (area >= max_area_frac of the image), too_small (a side < min_side px), then
  duplicate among the survivors (IoU > iou_threshold with a higher-scored one).
  """
  survivors, dropped = [], []
  image_area = float(width) * float(height)
  for box in boxes:
    c = clip_box(box, width, height)
    if c.width <= 0 or c.height <= 0:
      reason = "zero_area"
    elif c.score is None or c.score < min_score:
      reason = "low_score"
    elif c.area >= max_area_frac * image_area:
      reason = "too_large"
    elif min(c.width, c.height) < min_side:
      reason = "too_small"
    else:
      survivors.append(c)
      continue
    dropped.append((box, reason))
  kept, dups = _dedupe(survivors, iou_threshold)
  dropped.extend((b, "duplicate") for b in dups)
  return kept, dropped
