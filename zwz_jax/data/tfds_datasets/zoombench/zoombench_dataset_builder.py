"""TFDS builder for ZoomBench from its released parquet (845 items; split "test").

  python launch/build_tfds.py --dataset=zoombench --manual_dir=FOLDER --data_dir=~/tfds

manual_dir holds the released parquet file(s), read in name order. The features are its columns
as released: `image` and `crop_image` (the encoded bytes as they are; an absent crop is empty),
`query`, `response`, `question_type` (mcq | blank), `bbox` ([l, t, r, b] original pixels; NaN when
absent), `id`, and `dimension` (empty: the release labels none; the evaluator infers it). Rows keep
the parquet's order. zwz_jax.eval.benchmarks.load reads the prepared dataset as it reads the parquet.
"""
import io
import math
import os

import numpy as np
import tensorflow_datasets as tfds


class Builder(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The released ZoomBench parquet's columns."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: the folder holding the released ZoomBench parquet."

  def _info(self):
    text = tfds.features.Text()
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": text, "image": tfds.features.Image(), "crop_image": tfds.features.Image(), "query": text,
            "response": text, "question_type": text, "dimension": text,
            "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float64)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    folder = str(dl_manager.manual_dir)
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".parquet"))
    if not paths:
      raise FileNotFoundError(f"{folder}: no .parquet file (the released ZoomBench)")
    return {"test": self._generate_examples(paths)}

  def _generate_examples(self, paths):
    import pyarrow.parquet as pq
    for path in paths:
      index = 0
      for batch in pq.ParquetFile(path).iter_batches(batch_size=32):
        for row in batch.to_pylist():
          rid = _first(row, "id", "index", "question_id")
          key = f"{os.path.basename(path)}:{index}"
          yield key, {"id": str(index if rid is None else rid), "image": io.BytesIO(_bytes(row.get("image"))),
                      "crop_image": io.BytesIO(_bytes(row.get("crop_image"))),
                      "query": str(_first(row, "query", "prompt", "question") or ""),
                      "response": str(_first(row, "response", "answer") or ""),
                      "question_type": str(row.get("question_type") or ""),
                      "dimension": str(_first(row, "dimension", "category") or ""), "bbox": _bbox(row.get("bbox"))}
          index += 1


def _first(row, *names):
  return next((row[n] for n in names if row.get(n) is not None), None)


def _bytes(cell) -> bytes:
  """An image cell as released: bytes, or {"bytes": ..., "path": ...} as HF datasets write it."""
  if isinstance(cell, dict):
    cell = cell.get("bytes")
  return bytes(cell or b"")


def _bbox(value) -> np.ndarray:
  try:
    box = [float(c) for c in value]
  except (TypeError, ValueError):
    box = []
  return np.asarray(box if len(box) == 4 and all(math.isfinite(c) for c in box) else [math.nan] * 4, np.float64)
