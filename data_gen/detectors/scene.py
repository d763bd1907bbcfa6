"""`scene` detector: the oracle for procedural scenes (data_gen/scenes.py), as the `scene` teacher is.

A name that labels exactly one object of the scene gets that object's box (in pixels of the image it
is given) with a score in [0.6, 1), so some fall under the 0.75 cut as a real detector's do; any
other name (not in the scene, or on several objects) is not found. Scores are a hash of (seed, image key, name): reproducible in any order.
"""
from __future__ import annotations

from data_gen import scenes
from data_gen.boxes import Box
from data_gen.detectors import Detector, DetectorError
from data_gen.teachers.scene import _norm, _rng


class SceneDetector(Detector):
  """Boxes from the metadata beside each scene image (`root`: the pool folder)."""

  name = "scene"

  def __init__(self, root: str | None = None, seed: int = 0):
    self.root, self.seed = root, int(seed)

  def detect(self, image, names, context):
    key = str(context["image_key"])
    try:
      meta = scenes.load_metadata(key, self.root)
    except (OSError, ValueError) as e:
      raise DetectorError(f"scene detector: unknown image key {key!r}: {e}") from None
    sx, sy = image.width / meta["width"], image.height / meta["height"]
    out = []
    for name in names:
      hits = [o for o in meta["objects"] if _norm(o["label"]) == _norm(name)]
      if len(hits) != 1:
        out.append(None)
        continue
      x0, y0, x1, y1 = hits[0]["bbox"]
      score = round(_rng(self.seed, "detect", key, _norm(name)).uniform(0.6, 1.0), 4)
      out.append(Box(x0 * sx, y0 * sy, x1 * sx, y1 * sy, name, score))
    return out
