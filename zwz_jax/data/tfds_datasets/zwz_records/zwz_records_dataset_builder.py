"""TFDS builder for our distilled records (zwz_jax/records.py), one TFDS split per record split.

  python launch/build_tfds.py --dataset=zwz_records --manual_dir=out/run --data_dir=~/tfds

manual_dir is a record directory (manifest.json and its ArrayRecord shards). Examples keep the
record's fields (the image as its encoded bytes), in shard order: the TFDS dataset read with
`tfds.data_source` gives the training pipeline the same stream, so the same batches, as the shards.
A record that breaks the contract is left out and named in the log.
"""
import io
import json
import logging

import numpy as np
import tensorflow_datasets as tfds

from zwz_jax import records

log = logging.getLogger(__name__)


class Builder(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": f"Record schema version {records.SCHEMA_VERSION}."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: a directory of records written by launch/gen_data.py."

  def _info(self):
    text = tfds.features.Text()
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "id": text, "image": tfds.features.Image(), "image_format": text,
            "width": tfds.features.Scalar(np.int32), "height": tfds.features.Scalar(np.int32),
            "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float64), "question": text,
            "options": tfds.features.Sequence(text), "answer": text, "dimension": text, "split": text,
            "source": text, "teacher": text,  # JSON objects
            "schema_version": tfds.features.Scalar(np.int32)}),
        disable_shuffling=True)  # shard order, as the pipeline reads our shards

  def _split_generators(self, dl_manager):
    directory = str(dl_manager.manual_dir)
    present = list(dict.fromkeys(r.split for r in _records(directory)))
    if not present:
      raise ValueError(f"{directory}: no valid records")
    return {split: self._generate_examples(directory, split) for split in present}

  def _generate_examples(self, directory, split):
    for r in _records(directory):
      if r.split == split:
        yield r.id, {"id": r.id, "image": io.BytesIO(r.image), "image_format": r.image_format, "width": r.width,
                     "height": r.height, "bbox": np.asarray(r.bbox, np.float64), "question": r.question,
                     "options": list(r.options), "answer": r.answer, "dimension": r.dimension, "split": r.split,
                     "source": json.dumps(r.source, sort_keys=True), "teacher": json.dumps(r.teacher, sort_keys=True),
                     "schema_version": r.schema_version}


def _records(directory):
  for path in records.shard_paths(directory):
    for i, raw in enumerate(records.read_shard(path)):
      try:
        yield records.decode(raw, where=f"{path}:{i}")
      except records.RecordError as e:
        log.warning("left out: %s", e)
