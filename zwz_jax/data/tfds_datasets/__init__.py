"""TFDS builders for our records (`zwz_records/`) and ZoomBench (`zoombench/`), and their readers.

tensorflow-datasets installs without TensorFlow (the `tfds` extra), but its `tfds build` command
needs TensorFlow; build with `build` (launch/build_tfds.py):

  python launch/build_tfds.py --dataset=zwz_records --manual_dir=RECORD_DIR --data_dir=DIR
  python launch/build_tfds.py --dataset=zoombench --manual_dir=FOLDER_WITH_PARQUET --data_dir=DIR

Both write array_record files, which `tfds.data_source` and grain read. A prepared dataset is its
version folder, DIR/<name>/<version>, and one of its splits is named as `DIR/<name>/<version>[split]`
(TFDS split syntax, e.g. `[train[:80%]]`); without a split, the dataset must have exactly one. Such
an entry goes wherever a record directory does (data.train, data.eval) and, for ZoomBench, in
eval.benchmarks. tensorflow-datasets is imported only when a TFDS dataset is built or read.
"""
from __future__ import annotations

import json
import os
import re

import msgpack

INFO = "dataset_info.json"
DATASETS = ("zwz_records", "zoombench")


def build(name: str, manual_dir: str, data_dir: str) -> str:
  """Prepares TFDS dataset `name` from `manual_dir` under `data_dir` (array_record files); returns
  its version folder. Preparing again an already prepared version does nothing."""
  if name not in DATASETS:
    raise ValueError(f"unknown TFDS dataset {name!r} (ours: {', '.join(DATASETS)})")
  tfds = _tfds(name)
  import importlib
  module = importlib.import_module(f"zwz_jax.data.tfds_datasets.{name}.{name}_dataset_builder")
  builder = module.Builder(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return str(builder.data_path)


def _tfds(what: str):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ImportError(f"{what}: TFDS datasets need tensorflow-datasets: pip install -e '.[tfds]'") from None
  return tfds


def split_entry(entry: str) -> tuple[str, str | None]:
  """"DIR/name/version[split]" -> (DIR/name/version, split); no brackets -> (entry, None)."""
  m = re.fullmatch(r"(.*?)\[(.+)\]", entry)
  return (m.group(1), m.group(2)) if m else (entry, None)


def is_prepared(entry: str) -> bool:
  """Whether `entry` names a prepared TFDS dataset (its version folder, maybe with a split)."""
  return os.path.isfile(os.path.join(split_entry(entry)[0], INFO))


def open_split(entry: str, skip_decoding: tuple[str, ...] = ()):
  """(builder name, random-access data source) of the split `entry` names; features in
  `skip_decoding` come back as stored (an image's encoded bytes)."""
  tfds = _tfds(entry)
  path, split = split_entry(entry)
  builder = tfds.builder_from_directory(path)
  splits = sorted(builder.info.splits)
  if split is None:
    if len(splits) != 1:
      raise ValueError(f"{entry}: the dataset has splits {splits}; name one, as {path}[{splits[0]}]")
    split = splits[0]
  try:
    source = builder.as_data_source(split, decoders={k: tfds.decode.SkipDecoding() for k in skip_decoding})
  except Exception as e:  # an unknown split or slice
    raise ValueError(f"{entry}: no split {split!r} (splits: {splits}; {type(e).__name__}: {e})") from None
  return builder.name, source


def text(value) -> str:
  """A TFDS Text feature (bytes from a data source) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RecordSource:
  """A grain random-access source over a prepared zwz_records split, yielding serialized records
  (zwz_jax/records.py), so the pipeline reads it as it reads our shards. Picklable for grain's
  worker processes: each opens the dataset on first use."""

  def __init__(self, entry: str):
    self.entry = entry
    name, source = open_split(entry, ("image",))
    if name != "zwz_records":
      raise ValueError(f"{entry}: a TFDS {name!r} dataset, not zwz_records")
    self._len, self._source = len(source), source

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> bytes:
    if self._source is None:
      self._source = open_split(self.entry, ("image",))[1]
    ex = self._source[index]
    d = {k: text(ex[k]) for k in ("id", "image_format", "question", "answer", "dimension", "split")}
    d.update(image=bytes(ex["image"]), width=int(ex["width"]), height=int(ex["height"]),
             bbox=[float(c) for c in ex["bbox"]], options=[text(o) for o in ex["options"]],
             source=json.loads(text(ex["source"])), teacher=json.loads(text(ex["teacher"])),
             schema_version=int(ex["schema_version"]))
    return msgpack.packb(d, use_bin_type=True)

  def __getstate__(self):
    return {"entry": self.entry, "_len": self._len, "_source": None}
