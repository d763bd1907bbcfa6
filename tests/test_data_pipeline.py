"""grain pipeline: deterministic global order, per-process slices, resume, skips, buckets, targets."""
import collections
import dataclasses
import json
import logging
import re

import numpy as np
import pytest
from array_record.python import array_record_module

from tests import record_fixtures
from zwz_jax import config as config_lib
from zwz_jax import records
from zwz_jax.data import batch as batch_lib
from zwz_jax.data import pipeline
from zwz_jax.data import processor as processor_lib
from tests.shared import CONFIGS

N = 16  # valid records per fixture directory: two tiny batches of 8 per epoch
BATCH_KEYS = {"input_ids", "positions", "attention_mask", "pixel_values", "vision_positions",
              "vision_segment_ids", "image_token_index", "labels_mask", "ids"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("records")
  return str(d), record_fixtures.write_records(str(d), N, seed=1)


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("bad_records")
  return str(d), record_fixtures.write_records(str(d), N, seed=2, bad=record_fixtures.BAD_KINDS)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
  # Near-square 200-230 px images: 7x7 or 7x8 merged tokens, 16 windows = 256 padded patches.
  d = tmp_path_factory.mktemp("small_records")
  return str(d), record_fixtures.write_records(str(d), N, seed=3, sizes=(200, 230))


@pytest.fixture(scope="module")
def tokenizer(tiny_config):
  return processor_lib.load_tokenizer("", tiny_config)


def cfg(directory, *overrides):
  return config_lib.load_config(f"{CONFIGS}/tiny.py", [f"data.train=({directory!r},)", *overrides])


def take(it, n):
  return [next(it) for _ in range(n)]


def ids_of(batches):
  return [list(b["ids"]) for b in batches]


def read_records(directory):
  out = {}
  for path in records.shard_paths(directory):
    reader = array_record_module.ArrayRecordReader(path)
    for raw in reader.read_all():
      try:
        r = records.decode(raw)
        out[r.id] = (r, raw)
      except records.RecordError:
        pass
    reader.close()
  return out


def test_batches_have_the_model_keys_and_bucket_shapes(data_dir, tokenizer):
  it = pipeline.make_train_iterator(cfg(data_dir[0]), tokenizer)
  b = next(it)
  assert set(b) == BATCH_KEYS
  t, p = b["input_ids"].shape[1], b["pixel_values"].shape[1]
  assert (t, p) in it.buckets
  assert b["positions"].shape == (3, 8, t) and b["pixel_values"].shape == (8, p, 1176)
  assert b["ids"].shape == (8,) and set(b["ids"]) <= set(data_dir[1])


def test_order_is_deterministic_and_epochs_reshuffle(data_dir, tokenizer):
  a = ids_of(take(pipeline.make_train_iterator(cfg(data_dir[0]), tokenizer), 6))
  b = ids_of(take(pipeline.make_train_iterator(cfg(data_dir[0]), tokenizer), 6))
  assert a == b
  epochs = [sum(a[i:i + 2], []) for i in (0, 2, 4)]  # N = 16 = two batches of 8
  assert all(sorted(e) == sorted(data_dir[1]) for e in epochs)  # every epoch is a full pass
  assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # with its own permutation
  other = ids_of(take(pipeline.make_train_iterator(cfg(data_dir[0], "data.shuffle_seed=5"), tokenizer), 2))
  assert sum(other, []) != epochs[0]


def test_processes_take_disjoint_slices_of_the_global_order(data_dir, tokenizer):
  one = cfg(data_dir[0], "data.buckets=((320, 512),)")
  whole = sum(ids_of(take(pipeline.make_train_iterator(one, tokenizer), 4)), [])  # two epochs
  parts = [sum(ids_of(take(pipeline.make_train_iterator(one, tokenizer, process_index=i, process_count=2),
                           4)), []) for i in range(2)]
  assert all(len(p) == 16 for p in parts)  # 4 local batches of 8 // 2
  for epoch in range(2):
    a, b = (p[epoch * 8:(epoch + 1) * 8] for p in parts)
    assert not set(a) & set(b) and sorted(a + b) == sorted(data_dir[1])
  # Process i gets global stream elements i, i + 2, ...: the same global order as one process.
  assert [x for pair in zip(*parts) for x in pair] == whole


def test_multi_process_needs_one_bucket_or_a_bucket_sync(data_dir, tokenizer):
  config = cfg(data_dir[0])
  with pytest.raises(ValueError, match=rf"data.buckets has {len(config.data.buckets)} buckets but there are 2 "
                                       r"processes.*bucket_sync"):
    pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=2)
  calls = []

  def sync(index):  # what jax_bucket_sync does across hosts: everyone takes the largest
    calls.append(index)
    return len(config.data.buckets) - 1

  b = next(pipeline.make_train_iterator(config, tokenizer, process_index=1, process_count=2, bucket_sync=sync))
  assert len(calls) == 1 and b["input_ids"].shape == (4, 320) and b["pixel_values"].shape[1] == 512


def test_local_batch_size_must_divide(data_dir, tokenizer):
  with pytest.raises(ValueError, match=r"data.global_batch_size=8 must be a positive multiple of the "
                                       r"number of processes \(3\)"):
    pipeline.make_train_iterator(cfg(data_dir[0], "data.buckets=((320, 512),)"), tokenizer,
                                 process_index=0, process_count=3)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_state_equals_continuing(bad_dir, tokenizer, workers):
  # Bad records too: Skipped elements cross the worker boundary and the skip counts resume.
  config = cfg(bad_dir[0], f"data.num_workers={workers}")
  it = pipeline.make_train_iterator(config, tokenizer)
  try:
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
    expected = ids_of(take(it, 3))  # crosses the epoch boundary
    skipped = dict(it.skipped)
  finally:
    it.close()
  resumed = pipeline.make_train_iterator(config, tokenizer)
  try:
    resumed.set_state(state)
    assert resumed.step == 3
    assert ids_of(take(resumed, 3)) == expected
    assert dict(resumed.skipped) == skipped
  finally:
    resumed.close()
  if workers:  # worker processes change throughput, not the order
    assert ids_of(take(pipeline.make_train_iterator(cfg(bad_dir[0]), tokenizer), 6))[3:] == expected


def test_orbax_checkpoint_manager_saves_the_iterator(data_dir, tokenizer, tmp_path):
  grain = pytest.importorskip("grain")
  ocp = pytest.importorskip("orbax.checkpoint")
  config = cfg(data_dir[0])
  it = pipeline.make_train_iterator(config, tokenizer)
  next(it)
  with ocp.CheckpointManager(str(tmp_path)) as mgr:
    mgr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    expected = ids_of(take(it, 2))
    restored = pipeline.make_train_iterator(config, tokenizer)
    mgr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert ids_of(take(restored, 2)) == expected and restored.step == 3


def test_state_from_another_pipeline_is_refused(data_dir, tokenizer):
  state = pipeline.make_train_iterator(cfg(data_dir[0]), tokenizer).get_state()
  other = pipeline.make_train_iterator(cfg(data_dir[0], "data.shuffle_seed=1"), tokenizer)
  with pytest.raises(ValueError, match="shuffle_seed saved 0, now 1"):
    other.set_state(state)


def test_bad_records_are_counted_logged_and_skipped(bad_dir, tokenizer, caplog):
  directory, ids = bad_dir
  bad = {record_fixtures.bad_id(k) for k in record_fixtures.BAD_KINDS}
  it = pipeline.make_train_iterator(cfg(directory), tokenizer)
  with caplog.at_level(logging.WARNING, logger="zwz_jax.data.pipeline"):
    got = sum(ids_of(take(it, 3)), [])  # epoch 1 (16 valid + 3 bad) and part of epoch 2
  assert not set(got) & bad and set(got[:16]) == set(ids) - bad
  assert set(it.skipped) == {"bad_record", "bad_image", "too_long"}
  assert sum(it.skipped.values()) == len(caplog.records)
  logged = "\n".join(r.getMessage() for r in caplog.records)
  for rid, reason in [("bad_missing_field", "bad_record"), ("bad_bad_image", "bad_image"),
                      ("bad_too_long", "too_long")]:
    assert f"skipping record {rid} ({reason})" in logged
  assert "missing field(s) ['bbox']" in logged and "shard-0000" in logged  # what and where
  assert re.search(r"\d+ tokens / \d+ window-padded patches > largest bucket \(320, 512\)", logged)
  assert it.get_state()["skipped"] == dict(it.skipped)


def test_everything_skipped_is_an_error(bad_dir, tokenizer):
  it = pipeline.make_train_iterator(cfg(bad_dir[0], "data.buckets=((64, 256),)"), tokenizer)
  with pytest.raises(RuntimeError, match="were all skipped.*data.buckets"):
    next(it)


def _expected_bucket(batch, buckets, window=16):
  tokens = int(batch["attention_mask"].sum(1).max())
  seg = batch["vision_segment_ids"]
  patches = int((seg.reshape(seg.shape[0], -1, window) > 0).any(-1).sum(-1).max()) * window
  return next(b for b in buckets if tokens <= b[0] and patches <= b[1])


def test_batches_take_the_smallest_bucket_that_fits(small_dir, data_dir, tokenizer):
  buckets = "data.buckets=((192, 256), (320, 512))"
  small = take(pipeline.make_train_iterator(cfg(small_dir[0], buckets), tokenizer), 2)
  assert all(b["input_ids"].shape[1] == 192 and b["pixel_values"].shape[1] == 256 for b in small)
  # The box coordinates in the text push the same records past 192 tokens.
  coords = next(pipeline.make_train_iterator(cfg(small_dir[0], buckets, "data.grounding=coords"), tokenizer))
  assert coords["input_ids"].shape[1] == 320
  config = cfg(data_dir[0], buckets)
  for b in take(pipeline.make_train_iterator(config, tokenizer), 4):
    assert (b["input_ids"].shape[1], b["pixel_values"].shape[1]) == _expected_bucket(b, config.data.buckets)


# About half the records of these fixtures (177-191 tokens) fit the first bucket.
TWO_BUCKETS = "data.buckets=((180, 256), (320, 512))"


def mixed(*dirs_and_overrides, buckets=TWO_BUCKETS):
  """tiny over several record dirs with two buckets."""
  dirs = [x for x in dirs_and_overrides if "=" not in x]
  overrides = [x for x in dirs_and_overrides if "=" in x]
  return config_lib.load_config(f"{CONFIGS}/tiny.py", [f"data.train={tuple(dirs)!r}", buckets, *overrides])


def _row_buckets(batch, buckets, window=16):
  """Each real row's smallest fitting bucket index, from the batch itself."""
  out = []
  for row in range(len(batch["ids"])):
    if not batch["ids"][row]:
      continue
    one = {k: batch[k][row:row + 1] for k in ("attention_mask", "vision_segment_ids")}
    out.append(list(buckets).index(_expected_bucket(one, buckets, window)))
  return out


def test_lookahead_groups_batches_by_bucket_and_loses_nothing(small_dir, data_dir, tokenizer):
  in_order = pipeline.make_train_iterator(mixed(small_dir[0], data_dir[0], "data.bucket_lookahead=1"), tokenizer)
  stream_batches = take(in_order, 12)  # three epochs of the 32 records
  buckets = [tuple(b) for b in in_order.buckets]
  stream = sum(ids_of(stream_batches), [])
  assert any(len(set(_row_buckets(b, buckets))) > 1 for b in stream_batches)  # stream order mixes sizes
  it = pipeline.make_train_iterator(mixed(small_dir[0], data_dir[0], "data.bucket_lookahead=3"), tokenizer)
  batches = take(it, 8)
  for b in batches:  # here no example waits long enough to be sent out in a mixed batch
    rows = _row_buckets(b, buckets)
    assert len(set(rows)) == 1 and (b["input_ids"].shape[1], b["pixel_values"].shape[1]) == buckets[rows[0]]
  assert {_row_buckets(b, buckets)[0] for b in batches} == {0, 1}
  state = it.get_state()
  assert state["held"] and state["next_index"] == 64 + len(state["held"])  # each batch read ahead
  emitted = sum(ids_of(batches), []) + [stream[i] for i in state["held"]]
  # Nothing lost or repeated: emitted and held together are exactly the stream's first elements.
  assert collections.Counter(emitted) == collections.Counter(stream[:state["next_index"]])


def test_lookahead_holds_a_rare_size_no_longer_than_the_lookahead(small_dir, data_dir, tokenizer):
  # With these buckets 1 record in 32 needs the large one: it never fills a batch of its own.
  config = mixed(small_dir[0], data_dir[0], "data.bucket_lookahead=2", buckets="data.buckets=((192, 256), (320, 512))")
  it = pipeline.make_train_iterator(config, tokenizer)
  buckets = [tuple(b) for b in it.buckets]
  for _ in range(10):
    b = next(it)
    state = it.get_state()
    assert all(state["next_index"] - i <= 16 for i in state["held"])
    if 1 in _row_buckets(b, buckets):  # out with the oldest others, in the bucket that fits it
      assert b["pixel_values"].shape[1] == 512 and len(set(_row_buckets(b, buckets))) == 2
      return
  raise AssertionError("the large record was held for 10 batches")


def test_lookahead_follows_the_bucket_other_processes_need(small_dir, data_dir, tokenizer):
  config = mixed(small_dir[0], data_dir[0], "data.bucket_lookahead=3")
  calls = []

  def sync(index):  # another host needs the large bucket every step
    calls.append(index)
    return 1

  it = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=2, bucket_sync=sync)
  batches = take(it, 4)
  assert len(calls) == 4 and 0 in calls  # this process alone would have sent out small batches
  assert all(b["input_ids"].shape == (4, 320) and b["pixel_values"].shape[1] == 512 for b in batches)
  assert all(b["ids"].all() for b in batches)  # small examples fill the large bucket's rows


class _LabelBatcher:
  """_Batcher over synthetic examples that carry their own bucket: the iterator's policy alone."""
  buckets = ((0, 0),) * 4  # unused: batches report their bucket index

  def fit(self, example):
    return example["bucket"]

  def sync(self, index):
    return index

  def __call__(self, examples, bucket):
    return {"bucket": bucket, "examples": examples}


def test_lookahead_policy_on_a_skewed_stream():
  """student_7b's buckets, 64 rows, 5% of examples need the largest: in stream order nearly every
  step runs there; grouped, most run in their own bucket, no example waits more than the look-ahead,
  and nothing is lost or repeated."""
  import grain
  patches = np.array([3072, 6144, 24576, 92800])  # configs/student_7b.py's buckets
  rng = np.random.default_rng(0)
  labels = rng.choice(4, size=8_000, p=[0.5, 0.3, 0.15, 0.05])
  source = grain.MapDataset.source([{"i": i, "bucket": int(b)} for i, b in enumerate(labels)])
  waste = {}
  for lookahead in (1, 2, 4):
    stream = iter(source.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
    it = pipeline.TrainIterator(stream, batch_size=64, batcher=_LabelBatcher(),
                                skips=pipeline._SkipCounter("data.train", 1), fingerprint={}, source=source,
                                lookahead=lookahead)
    seen, slots = [], []
    for _ in range(100):
      b = next(it)
      idx = [e["i"] for e in b["examples"]]
      assert len(idx) == 64 and all(labels[i] <= b["bucket"] for i in idx)
      slots.append(patches[b["bucket"]])
      seen += idx
      state = it.get_state()
      assert all(state["next_index"] - i <= 64 * lookahead + 1 for i in state["held"])
    assert sorted(seen + state["held"]) == list(range(state["next_index"]))
    waste[lookahead] = np.mean(slots) / np.mean(patches[labels[seen]])  # padded / needed patches
  assert waste[1] > 7 and waste[1] > waste[2] > waste[4] and waste[4] < 2.5, waste


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_held_examples_equals_continuing(small_dir, bad_dir, tokenizer, workers):
  # Bad records too: skipped elements still count in the stream index that held examples keep.
  config = mixed(small_dir[0], bad_dir[0], "data.bucket_lookahead=3", f"data.num_workers={workers}")
  it = pipeline.make_train_iterator(config, tokenizer)
  try:
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 4)
  finally:
    it.close()
  assert state["held"]
  resumed = pipeline.make_train_iterator(config, tokenizer)
  try:
    resumed.set_state(state)
    got = take(resumed, 4)
  finally:
    resumed.close()
  assert all(len(b["ids"]) == 8 and b["ids"].all() for b in expected)  # skips never shorten a batch
  for a, b in zip(got, expected):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_state_saved_before_the_lookahead_resumes(bad_dir, tokenizer):
  config = cfg(bad_dir[0])
  it = pipeline.make_train_iterator(config, tokenizer)
  take(it, 3)
  state = it.get_state()
  expected = ids_of(take(it, 2))
  old = {k: v for k, v in state.items() if k not in ("next_index", "held")} | {"version": 1}
  resumed = pipeline.make_train_iterator(config, tokenizer)
  resumed.set_state(old)
  assert resumed.get_state()["next_index"] == state["next_index"]
  assert ids_of(take(resumed, 2)) == expected


@pytest.mark.parametrize("target", ["letter", "letter_text"])
def test_labels_mark_exactly_the_target(data_dir, tokenizer, target):
  by_id = read_records(data_dir[0])
  b = next(pipeline.make_train_iterator(cfg(data_dir[0], f"data.target={target}"), tokenizer))
  for row, rid in enumerate(b["ids"]):
    r = by_id[rid][0]
    want = r.answer if target == "letter" else f"{r.answer}. {r.answer_text}"
    labels = b["input_ids"][row][b["labels_mask"][row]]
    assert tokenizer.decode(labels.tolist(), skip_special_tokens=False) == f"{want}<|im_end|>"
    assert not b["labels_mask"][row][b["attention_mask"][row] == 0].any()


def test_grounding_modes(data_dir, tokenizer):
  record, raw = next(iter(read_records(data_dir[0]).values()))
  out = {m: pipeline.Preprocessor(cfg(data_dir[0], f"data.grounding={m}"), tokenizer)(raw)
         for m in records.GROUNDING_MODES}
  text = {m: tokenizer.decode(ex["input_ids"].tolist(), skip_special_tokens=False) for m, ex in out.items()}
  # overlay draws the red box into the pixels; coords and none leave them alone.
  assert not np.array_equal(out["overlay"]["pixel_values"], out["none"]["pixel_values"])
  np.testing.assert_array_equal(out["coords"]["pixel_values"], out["none"]["pixel_values"])
  assert records.FOCUS_OVERLAY in text["overlay"] and "bounding box [" not in text["none"]
  # coords: the box in the resized image's pixels, which is what the student sees.
  h, w = processor_lib.smart_resize(record.height, record.width, 28, 56 * 56, 28 * 28 * 64)
  sx, sy = w / record.width, h / record.height
  x0, y0, x1, y1 = record.bbox
  box = [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)]
  assert f"bounding box {box}" in text["coords"]
  assert out["coords"]["id"] == record.id


def test_padded_patch_count_matches_layout(tiny_config):
  v = batch_lib.VisionLayout.from_config(tiny_config.model)
  for grid in ([1, 14, 16], [1, 10, 24], [1, 2, 64], [1, 6, 6], [2, 8, 12]):
    x = np.zeros((int(np.prod(grid)), 1176), np.float32)
    lay = batch_lib.layout_vision(x, np.array([grid]), v)
    assert v.padded_patches(np.array([grid])) == len(lay["patches"])


def test_row_helpers_equal_building_the_rows(tiny_config, tokenizer):
  """Taking, concatenating, repeating, padding and splitting rows of a built batch equals building
  those rows: the row helpers find every key's rows (M-RoPE positions hold them on axis 1)."""
  import jax.numpy as jnp
  from PIL import Image
  proc = processor_lib.Processor.from_config(tiny_config, tokenizer)
  rng = np.random.default_rng(0)
  exs = [proc([Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))], f"question {i}?", "B")
         for i, (w, h) in enumerate([(64, 48), (40, 90), (120, 60)])]
  v = batch_lib.VisionLayout.from_config(tiny_config.model)
  tokens = max(len(e["input_ids"]) for e in exs)
  patches = -(-max(v.padded_patches(e["grid_thw"]) for e in exs) // v.window_patches) * v.window_patches
  build = lambda rows: batch_lib.build_batch(rows, vision_cfg=v, image_token_id=int(tiny_config.model.image_token_id),
                                             max_tokens=tokens, max_patches=patches)

  def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)

  full = build(exs)
  assert batch_lib.num_rows(full) == 3 and full["positions"].shape[:2] == (3, 3)
  same(batch_lib.take_rows(full, [2, 0]), build([exs[2], exs[0]]))
  same(batch_lib.concat_rows([build(exs[:1]), build(exs[1:])]), full)
  four = build([exs[0], exs[0], exs[1], exs[1]])
  same(batch_lib.repeat_rows(build(exs[:2]), 2), four)
  padded = batch_lib.pad_rows(build(exs[:2]), 2)
  same(batch_lib.take_rows(padded, slice(0, 2)), build(exs[:2]))
  empty = batch_lib.take_rows(padded, slice(2, 4))
  assert not empty["attention_mask"].any() and not empty["vision_segment_ids"].any()
  assert (empty["image_token_index"] == -1).all()  # a padding row has no image slots
  micro = batch_lib.split_rows({k: jnp.asarray(x) for k, x in four.items()}, 2)
  for i in range(2):
    same({k: x[i] for k, x in micro.items()}, batch_lib.take_rows(four, slice(2 * i, 2 * i + 2)))


def test_an_example_with_more_images_than_the_model_takes_is_refused(tokenizer):
  """model.vision.max_images bounds the images of an example (cuDNN's packed full attention is sized
  by it): more is an error naming the key, not NaN features."""
  from PIL import Image
  config = config_lib.load_config(f"{CONFIGS}/tiny.py", ["model.vision.max_images=2"])
  ex = processor_lib.Processor.from_config(config, tokenizer)([Image.new("RGB", (56, 56))] * 3, "which?", "B")
  v = batch_lib.VisionLayout.from_config(config.model)
  build = lambda v: batch_lib.build_batch([ex], vision_cfg=v, image_token_id=int(config.model.image_token_id),
                                          max_tokens=len(ex["input_ids"]), max_patches=v.padded_patches(ex["grid_thw"]))
  with pytest.raises(ValueError, match=r"example 0: 3 images .* exceed model.vision.max_images=2"):
    build(v)
  assert build(dataclasses.replace(v, max_images=3))["vision_segment_ids"].max() == 3


def test_bucket_config_errors(data_dir, tokenizer):
  with pytest.raises(ValueError, match=r"max_patches=250 .* not a multiple of the attention window \(16"):
    pipeline.make_train_iterator(cfg(data_dir[0], "data.buckets=((192, 250),)"), tokenizer)
  with pytest.raises(ValueError, match="must grow in both"):
    pipeline.make_train_iterator(cfg(data_dir[0], "data.buckets=((320, 256), (192, 512))"), tokenizer)
  with pytest.raises(ValueError, match=r"data.bucket_lookahead=0 must be a positive number of batches"):
    pipeline.make_train_iterator(cfg(data_dir[0], "data.bucket_lookahead=0"), tokenizer)
  with pytest.raises(ValueError, match=r"data.train is empty"):
    pipeline.make_train_iterator(config_lib.load_config(f"{CONFIGS}/tiny.py", ["data.train=()"]),
                                 tokenizer)


def test_eval_batches_are_one_padded_pass(bad_dir, tokenizer):
  directory, ids = bad_dir
  config = cfg(directory)
  valid = [i for i in ids if not i.startswith("bad_")]
  ev = pipeline.make_eval_batches(config, tokenizer, [directory])
  batches = list(ev)
  assert len(batches) == len(ev) == 3  # ceil(19 / 8): the skips leave the last one empty
  got = [i for b in batches for i in b["ids"]]
  assert [i for i in got if i] == valid  # storage order
  assert ev.skipped == collections.Counter(bad_record=1, bad_image=1, too_long=1)
  last = batches[-1]
  assert (last["ids"] == "").all() and not last["attention_mask"].any() and not last["labels_mask"].any()
  assert ids_of(list(ev)) == ids_of(batches)  # re-iterable and deterministic
  # Two processes: same number of batches, disjoint rows covering every valid record.
  parts = [list(pipeline.make_eval_batches(config, tokenizer, [directory], process_index=i, process_count=2))
           for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == 3  # ceil(ceil(19 / 2) / 4)
  rows = [[i for b in p for i in b["ids"] if i] for p in parts]
  assert not set(rows[0]) & set(rows[1]) and sorted(rows[0] + rows[1]) == sorted(valid)
  assert len(pipeline.make_eval_batches(config, tokenizer, [directory], max_batches=1)) == 1


def test_measure_throughput(data_dir, tokenizer):
  assert pipeline.measure_throughput(pipeline.make_train_iterator(cfg(data_dir[0]), tokenizer), 2) > 0
