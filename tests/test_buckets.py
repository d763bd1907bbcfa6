"""Bucket fit (zwz_jax/data/buckets.py, launch/buckets.py): needs as the pipeline sees them, fills by
hand, and proposals that compute less."""
import ast
import collections
import os
import re
import subprocess
import sys

import grain
import numpy as np
import pytest

from tests import record_fixtures
from tests.shared import CONFIGS, LAUNCH, ROOT
from zwz_jax import records
from zwz_jax.config import load_config
from zwz_jax.data import batch as batch_lib
from zwz_jax.data import buckets, pipeline, processor


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("records"))
  # Two unusable records, and one too long for configs/tiny.py's buckets (measured, past the largest).
  record_fixtures.write_records(d, 24, seed=4, bad=record_fixtures.BAD_KINDS)
  return d


def _config(record_dir, *overrides):
  return load_config(f"{CONFIGS}/tiny.py", [f"data.train=({record_dir!r},)", *overrides])


def test_needs_and_buckets_are_the_pipelines(record_dir):
  """Each record's tokens and window-padded patches are those of the pipeline's own preprocessing,
  and its bucket the one the pipeline's batcher fits it to; a record past the largest bucket is
  measured too, not dropped."""
  config = _config(record_dir, "data.buckets=((192, 256), (256, 320))")
  tok = processor.load_tokenizer("", config)
  need = buckets.needs(config, tok)
  assert need.skipped == collections.Counter({"bad_record": 1, "bad_image": 1}) and len(need.ids) == 25
  wide = _config(record_dir, "data.buckets=((4096, 4096),)")
  pre, layout = pipeline.Preprocessor(wide, tok), batch_lib.VisionLayout.from_config(config.model)
  source = grain.sources.ArrayRecordDataSource(records.shard_paths(record_dir))
  examples = [ex for ex in (pre(source[i]) for i in range(len(source))) if not isinstance(ex, pipeline.Skipped)]
  assert list(need.ids) == [ex["id"] for ex in examples]
  assert list(need.tokens) == [len(ex["input_ids"]) for ex in examples]
  assert list(need.patches) == [layout.padded_patches(ex["grid_thw"]) for ex in examples]
  table = pipeline.check_buckets(config.data.buckets, layout)
  batcher = pipeline._Batcher(config, table, None)
  fits = [next((i for i, (t, p) in enumerate(table) if len(ex["input_ids"]) <= t
                and layout.padded_patches(ex["grid_thw"]) <= p), -1) for ex in examples]
  assert list(buckets.assign(need, table)) == fits
  sample = buckets.needs(config, tok, max_records=5)  # spread over the 27 stored: 0, 6, 13, 20, 26
  stored = [i for i in range(len(source)) if not isinstance(pre(source[i]), pipeline.Skipped)]
  assert list(sample.ids) == [need.ids[stored.index(i)] for i in (0, 6, 13, 20, 26) if i in stored]
  assert -1 in fits and 0 in fits  # the table leaves records out and takes others
  assert all(batcher.fit(ex) == f for ex, f in zip(examples, fits) if f >= 0)


def test_fit_by_hand():
  need = buckets.Needs(ids=("a", "b", "c", "d"), tokens=np.array([100, 120, 300, 900]),
                       patches=np.array([64, 128, 200, 64]), flops=np.array([10.0, 20.0, 30.0, 40.0]),
                       skipped=collections.Counter())
  cost = lambda b: float(b[0] + b[1])  # a stand-in for the FLOPs of a bucket's shape
  rows = buckets.fit(need, ((128, 128), (320, 256)), cost)
  small, large, past, total = rows
  assert small["records"] == 2 and large["records"] == 1 and past["records"] == 1
  computed = 2 * 256 + 576
  assert small["flops_share"] == pytest.approx(512 / computed) and large["flops_share"] == pytest.approx(576 / computed)
  assert small["token_fill"] == pytest.approx(220 / 256) and small["patch_fill"] == pytest.approx(192 / 256)
  assert large["token_fill"] == pytest.approx(300 / 320) and large["patch_fill"] == pytest.approx(200 / 256)
  assert small["flop_fill"] == pytest.approx(30 / 512)
  assert total["records"] == 3 and total["token_fill"] == pytest.approx(520 / 576)
  assert total["patch_fill"] == pytest.approx(392 / 512) and total["flop_fill"] == pytest.approx(60 / computed)
  assert buckets.computed_flops(need, ((128, 128), (320, 256)), cost) == computed


def test_proposal_finds_the_clusters_and_keeps_the_largest():
  tokens = np.array([100] * 10 + [300] * 10 + [500])
  patches = np.array([64] * 10 + [320] * 10 + [480])
  need = buckets.Needs(ids=tuple(map(str, range(21))), tokens=tokens, patches=patches, flops=tokens + patches,
                       skipped=collections.Counter())
  cost = lambda b: float(b[0] + b[1])
  assert buckets.propose(need, 3, (512, 512), cost, patch_unit=16) == ((128, 64), (320, 320), (512, 512))
  assert buckets.propose(need, 1, (512, 512), cost, patch_unit=16) == ((512, 512),)
  # Records past the largest bucket stay out of every proposal, as the config drops them.
  assert buckets.propose(need, 2, (320, 320), cost, patch_unit=16) == ((128, 64), (320, 320))


def test_proposal_computes_less_than_the_config_and_compiles_as_data_buckets(record_dir):
  """On the fixture records: the proposed table of the config's size is one data.buckets accepts
  (growing on both axes, patches in whole windows) and computes fewer FLOPs than the config's."""
  config = _config(record_dir)
  need = buckets.needs(config, processor.load_tokenizer("", config))
  layout = batch_lib.VisionLayout.from_config(config.model)
  current = pipeline.check_buckets(config.data.buckets, layout)
  cost = buckets.bucket_cost(config)
  proposal = buckets.propose(need, len(current), current[-1], cost, layout.window_patches)
  assert pipeline.check_buckets(proposal, layout) == proposal and proposal[-1] == current[-1]
  assert buckets.computed_flops(need, proposal, cost) < buckets.computed_flops(need, current, cost)
  assert list(buckets.assign(need, proposal) >= 0) == list(buckets.assign(need, current) >= 0)


def test_launcher_prints_the_fit_and_a_table_to_paste(record_dir):
  proc = subprocess.run([sys.executable, os.path.join(LAUNCH, "buckets.py"), f"--config={CONFIGS}/tiny.py",
                         f"--config.data.train=('{record_dir}',)", "--propose=3"],
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "25 records of" in proc.stdout and "unusable: bad_image 1, bad_record 1" in proc.stdout
  assert "| past the largest | 1 |" in proc.stdout and "| table | 24 |" in proc.stdout
  proposal = ast.literal_eval(re.search(r'--config.data.buckets="(.*?)"', proc.stdout).group(1))
  config = _config(record_dir, f"data.buckets={proposal}")
  assert pipeline.check_buckets(config.data.buckets, batch_lib.VisionLayout.from_config(config.model)) == proposal
