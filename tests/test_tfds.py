"""TFDS builders: our records and ZoomBench built from fixtures, read with tfds.data_source, and
read by the pipeline and the evaluator as they read the originals."""
import dataclasses
import subprocess
import sys

import jax
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from tests import record_fixtures  # noqa: E402
from tests.shared import CONFIGS, LAUNCH  # noqa: E402
from zwz_jax import records  # noqa: E402
from zwz_jax.config import load_config  # noqa: E402
from zwz_jax.data import pipeline as data_pipeline  # noqa: E402
from zwz_jax.data import processor, tfds_datasets  # noqa: E402
from zwz_jax.eval import benchmarks  # noqa: E402
from zwz_jax.sharding import make_mesh  # noqa: E402
from zwz_jax.train.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Records (two shards, one whose image does not decode) and their TFDS dataset, built by the
  launcher."""
  root = tmp_path_factory.mktemp("tfds")
  ids = record_fixtures.write_records(str(root / "records"), 24, seed=7, sizes=(150, 300), bad=("bad_image",))
  proc = subprocess.run([sys.executable, f"{LAUNCH}/build_tfds.py", "--dataset=zwz_records",
                         f"--manual_dir={root / 'records'}", f"--data_dir={root / 'tfds'}"],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, ids


def test_records_round_trip_through_tfds_data_source(built):
  root, ids = built
  source = tfds.data_source("zwz_records", split="train", data_dir=str(root / "tfds"),
                            decoders={"image": tfds.decode.SkipDecoding()})
  originals = [records.decode(raw) for path in records.shard_paths(str(root / "records"))
               for raw in records.read_shard(path)]
  # The record whose image does not decode is kept, for the pipeline to count and skip as it does
  # reading the shards.
  assert len(source) == len(originals) == len(ids)
  assert [source[i]["id"].decode() for i in range(len(source))] == [r.id for r in originals]  # shard order
  assert bytes(source[3]["image"]) == originals[3].image  # the encoded bytes as they were
  # The pipeline's view of a TFDS example is the record itself.
  entry = f"{root / 'tfds' / 'zwz_records' / '1.0.0'}[train]"
  again = tfds_datasets.RecordSource(entry)
  assert [records.decode(again[i]) for i in range(len(again))] == originals
  decoded = tfds.data_source("zwz_records", split="train", data_dir=str(root / "tfds"))[0]["image"]
  assert decoded.shape == (originals[0].height, originals[0].width, 3)  # TFDS decodes it as an image


def test_training_from_tfds_takes_the_shards_batches(built):
  root, _ = built
  entry = f"{root / 'tfds' / 'zwz_records' / '1.0.0'}"  # one split: no need to name it
  batches = {}
  for name, source in (("shards", str(root / "records")), ("tfds", entry)):
    config = load_config(f"{CONFIGS}/tiny.py", [f"data.train=('{source}',)", "train.warmup_steps=1"])
    it = data_pipeline.make_train_iterator(config, processor.load_tokenizer("", config))
    batches[name] = [next(it) for _ in range(2)]
  for a, b in zip(batches["shards"], batches["tfds"]):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  trainer = Trainer(config, make_mesh({"data": 1, "fsdp": 2, "tensor": 1}, devices=jax.devices()[:2]))
  losses = {}
  for name, steps in batches.items():
    state = trainer.init_state()
    losses[name] = []
    for b in steps:
      state, m = trainer.update(state, b)
      losses[name].append(float(m["loss"]))
  assert losses["tfds"] == losses["shards"] and all(np.isfinite(losses["tfds"]))


def test_zoombench_from_tfds_equals_the_parquet(tmp_path):
  items = benchmarks.from_records(record_fixtures.write_records(str(tmp_path / "r"), 4, seed=1) and str(tmp_path / "r"))
  items[1] = dataclasses.replace(items[1], crop=None)  # no crop
  items[2] = dataclasses.replace(items[2], image=b"not an image", bbox=None)  # a bad row stays a bad item
  (tmp_path / "release").mkdir()
  parquet = benchmarks.write_zoombench_parquet(items, str(tmp_path / "release" / "zoombench.parquet"))
  version = tfds_datasets.build("zoombench", str(tmp_path / "release"), str(tmp_path / "tfds"))
  source = tfds.data_source("zoombench", split="test", data_dir=str(tmp_path / "tfds"),
                            decoders={"image": tfds.decode.SkipDecoding(), "crop_image": tfds.decode.SkipDecoding()})
  assert len(source) == 4 and source[0]["query"].decode().startswith(items[0].question)
  ours, theirs = benchmarks.load(parquet), benchmarks.load(f"{version}[test]")
  assert (theirs.name, theirs.kind, ours.kind) == ("zoombench", "zoombench", "zoombench")
  strip = lambda it: dataclasses.replace(it, source="")
  assert [strip(it) for it in theirs.items] == [strip(it) for it in ours.items]
  assert theirs.items[1].crop is None and "does not decode" in theirs.items[2].error


def test_a_record_breaking_the_contract_is_left_out_and_named(tmp_path, caplog):
  ids = record_fixtures.write_records(str(tmp_path / "r"), 3, seed=2, bad=("missing_field",))
  version = tfds_datasets.build("zwz_records", str(tmp_path / "r"), str(tmp_path / "tfds"))
  got = tfds_datasets.RecordSource(version)
  assert [records.decode(got[i]).id for i in range(len(got))] == [i for i in ids if i != record_fixtures.bad_id(
      "missing_field")]
  assert "left out: record 'bad_missing_field'" in caplog.text and "missing field(s) ['bbox']" in caplog.text


def test_tfds_entry_errors_name_the_entry(built):
  root, _ = built
  version = root / "tfds" / "zwz_records" / "1.0.0"
  with pytest.raises(ValueError, match=r"1.0.0\[val\]: no split 'val'"):
    tfds_datasets.RecordSource(f"{version}[val]")
  with pytest.raises(ValueError, match="unknown TFDS dataset 'coco'"):
    tfds_datasets.build("coco", str(root), str(root / "tfds"))
