"""Text-prompted detectors for region proposals (`propose.detector`), as the authors propose regions.

The teacher lists the distinct objects it sees (data_gen.prompts.objects_prompt); a detector then
finds each name on the full image and returns its best box and score, or None when it cannot find
it; the usual filters (score, < 10% of the area, size, IoU de-duplication) follow in the pipeline.

  teacher                the teacher's own boxes (no detector; boxes.parse_boxes)
  sam3 | owlv2 | grounding_dino
                         a local transformers checkpoint at `detector.path` (detectors/hf.py)
  scene                  the oracle for procedural scenes (teachers/scene.py), offline on CPU
  package.module:function
                         function(image, names) -> one Box, dict (x0, y0, x1, y1, score) or None per name

Model backends are imported on first use, so the scene oracle and custom functions never pull in torch.
"""
from __future__ import annotations

import abc
import importlib
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from data_gen.boxes import Box
from data_gen.teachers.base import TeacherError

MODELS = ("sam3", "owlv2", "grounding_dino")
KINDS = ("teacher", *MODELS, "scene")


class DetectorError(TeacherError):
  """A detector failed on an image (the message names the detector); that image is skipped."""


class Detector(abc.ABC):
  """Finds named objects on one image."""

  name: str = "detector"

  @abc.abstractmethod
  def detect(self, image: Image.Image, names: Sequence[str], context: Mapping[str, Any]) -> list[Box | None]:
    """Per name, its best box in pixels of `image` (label = the name), or None when not found.
    `context` carries image_key and image_size, as a teacher's request context does."""

  def close(self) -> None:
    """Releases accelerator memory."""


class FunctionDetector(Detector):
  """A user's `package.module:function(image, names)`."""

  def __init__(self, fn: Callable, spec: str):
    self.fn, self.name = fn, spec

  def detect(self, image, names, context):
    out = list(self.fn(image, list(names)))
    if len(out) != len(names):
      raise DetectorError(f"detector {self.name!r} returned {len(out)} results for {len(names)} names")
    try:
      return [None if b is None else b if isinstance(b, Box) else Box(**{"label": n, **b})
              for b, n in zip(out, names)]
    except TypeError as e:
      raise DetectorError(f"detector {self.name!r}: a result is not a Box, None or a dict of x0, y0, x1, "
                          f"y1, score ({e})") from None


def import_function(spec: str, key: str) -> Callable:
  """`package.module:function` -> the function; errors name the config key."""
  module, _, attr = spec.partition(":")
  try:
    return getattr(importlib.import_module(module), attr)
  except (ImportError, AttributeError, ValueError) as e:
    raise ValueError(f"config {key}={spec!r}: cannot import ({e}); expected one of {KINDS} or "
                     "'package.module:function'") from None


def build(cfg) -> Detector | None:
  """The detector a datagen config names (None for `teacher`). Model checkpoints come from
  `cfg.detector.path`, a local directory: nothing is downloaded."""
  kind = cfg.propose.detector or "teacher"
  if kind == "teacher":
    return None
  if kind in MODELS:
    from data_gen.detectors import hf  # pylint: disable=import-outside-toplevel
    return hf.from_config(kind, cfg.detector)
  if kind == "scene":
    from data_gen.teachers.scene import SceneDetector  # pylint: disable=import-outside-toplevel
    return SceneDetector(cfg.pool.path, seed=cfg.seed)
  if ":" not in kind:
    raise ValueError(f"config propose.detector={kind!r} is not one of {KINDS} or 'package.module:function'")
  return FunctionDetector(import_function(kind, "propose.detector"), kind)
