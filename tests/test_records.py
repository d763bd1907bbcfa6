"""The record contract: round trip, stable ids, errors that name the record and field, grounding."""
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from PIL import Image

from zwz_jax import records


def _record(**kw):
  img = Image.fromarray(np.full((60, 80, 3), 100, np.uint8))
  base = dict(id="r1", image=records.encode_image(img), image_format="png", width=80, height=60,
              bbox=(20.0, 10.0, 40.0, 30.0), question="What colour is the cup?", options=("red", "blue", "green", "black"),
              answer="B", dimension="colour", source={"pool": "p", "path": "a.png"},
              teacher={"names": ["t"], "votes": {"blue": 7, "red": 1}, "agreement": 0.875})
  base.update(kw)
  return records.Record(**base)


def test_round_trip():
  r = _record()
  assert records.decode(records.encode(r)) == r
  assert r.answer_text == "blue"


def test_id_is_stable_and_discriminating():
  src = {"pool": "p", "path": "a.png"}
  a = records.make_id(src, [1, 2, 3, 4], "Q?")
  assert a == records.make_id(dict(src), (1.0, 2.0, 3.0, 4.0), "Q? ")
  assert a != records.make_id(src, [1, 2, 3, 5], "Q?")
  assert a != records.make_id({"pool": "p", "path": "b.png"}, [1, 2, 3, 4], "Q?")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("bbox"), r"record 'r1' \(f:3\): missing field\(s\) \['bbox'\]"),
    (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
    (lambda d: d.update(bbox=[50, 10, 40, 30]), r"field 'bbox' \[50, 10, 40, 30\] is empty or outside"),
    (lambda d: d.update(answer="E"), r"field 'answer' 'E' is not one of the option letters ABCD"),
    (lambda d: d.update(dimension="smell"), r"field 'dimension' 'smell' is not one of"),
    (lambda d: d.update(schema_version=99), r"field 'schema_version' 99 is not supported"),
    (lambda d: d.update(width="80"), r"field 'width' must be a positive int"),
])
def test_decode_errors_name_record_and_field(edit, message):
  d = msgpack.unpackb(records.encode(_record()), raw=False)
  edit(d)
  with pytest.raises(records.RecordError, match=message):
    records.decode(msgpack.packb(d, use_bin_type=True), where="f:3")


def test_garbage_bytes():
  with pytest.raises(records.RecordError, match=r"undecodable record \(shard.ar:7\)"):
    records.decode(b"\xc1\xff\x00garbage", where="shard.ar:7")
  with pytest.raises(records.RecordError, match="is a list, not a map"):
    records.decode(msgpack.packb([1, 2]))


def test_corrupt_image_names_record():
  r = _record(image=b"\x89PNG\r\n\x1a\nbroken", id="bad-img")
  with pytest.raises(records.RecordError, match="record 'bad-img': image does not decode"):
    records.open_image(r)


def test_overlay_draws_expanded_red_box_and_leaves_the_rest():
  r = _record(bbox=(20.0, 10.0, 60.0, 50.0))
  img, text = records.ground(r, "overlay")
  a = np.asarray(img)
  # Box grown by 5% of its 40 px size per side: x0 = 18, outline 5 px wide inward.
  assert tuple(a[30, 18]) == (255, 0, 0) and tuple(a[30, 22]) == (255, 0, 0)
  assert tuple(a[8, 40]) == (255, 0, 0)
  assert tuple(a[30, 40]) == (100, 100, 100)  # inside untouched
  assert tuple(a[30, 10]) == (100, 100, 100)  # outside untouched
  assert text.endswith(records.FOCUS_OVERLAY) and "A. red\nB. blue" in text
  assert np.asarray(records.open_image(r))[30, 18].tolist() == [100, 100, 100]  # stored image has no box


def test_coords_and_none_modes():
  r = _record()
  img, text = records.ground(r, "coords", coord_size=(160, 120))
  assert "[40, 20, 80, 60]" in text and np.asarray(img).max() == 100
  img, text = records.ground(r, "none")
  assert "bounding box" not in text
  with pytest.raises(ValueError, match="grounding mode 'red'"):
    records.ground(r, "red")


def test_manifest(tmp_path):
  records.write_manifest(str(tmp_path), {"shards": [{"path": "a.array_record", "num_records": 3}]})
  assert records.shard_paths(str(tmp_path)) == [str(tmp_path / "a.array_record")]
  with pytest.raises(FileNotFoundError, match="no manifest.json"):
    records.read_manifest(str(tmp_path / "nope"))


def test_imports_neither_jax_nor_torch():
  code = "import sys, zwz_jax.records; assert not {'jax', 'torch'} & set(sys.modules), sorted(sys.modules)"
  subprocess.run([sys.executable, "-c", code], check=True)
