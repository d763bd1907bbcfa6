"""Builds a TFDS dataset (array_record files) from our records or from the released ZoomBench.

  python launch/build_tfds.py --dataset=zwz_records --manual_dir=out/run --data_dir=~/tfds
  python launch/build_tfds.py --dataset=zoombench --manual_dir=/data/zoombench --data_dir=~/tfds

Then `tfds.data_source("zwz_records", data_dir=...)` reads it, and its version folder with a split,
e.g. `~/tfds/zwz_records/1.0.0[train]`, goes in data.train as a record directory does
(zwz_jax/data/tfds_datasets).
"""
from __future__ import annotations

import os

from absl import app, flags

flags.DEFINE_enum("dataset", None, ["zwz_records", "zoombench"], "which dataset", required=True)
flags.DEFINE_string("manual_dir", None, "our record directory, or the folder holding ZoomBench's parquet",
                    required=True)
flags.DEFINE_string("data_dir", None, "TFDS data directory to write under", required=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from zwz_jax.data import tfds_datasets
  path = tfds_datasets.build(FLAGS.dataset, os.path.expanduser(FLAGS.manual_dir), os.path.expanduser(FLAGS.data_dir))
  print(f"prepared {FLAGS.dataset} in {path}")


if __name__ == "__main__":
  app.run(main)
