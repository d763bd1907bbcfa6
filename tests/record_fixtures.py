"""Synthetic record directories for data-pipeline tests: small, valid records plus chosen bad ones."""
from __future__ import annotations

import base64
import io
import json
import os
import pathlib
from typing import Sequence

import msgpack
import numpy as np
from array_record.python import array_record_module
from PIL import Image

from zwz_jax import records

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (240, 220, 30),
           "purple": (140, 50, 170), "orange": (250, 140, 20), "black": (10, 10, 10), "cyan": (20, 210, 220)}
BAD_KINDS = ("missing_field", "bad_image", "too_long")
QUESTION = "What colour is the square?"


def bad_id(kind: str) -> str:
  return f"bad_{kind}"


def make_record(rng: np.random.Generator, index: int, sizes: tuple[int, int] = (200, 500),
                question: str = QUESTION, rid: str | None = None, letter: str | None = None) -> records.Record:
  """A plain-background image with one coloured square; the question asks for its colour.

  letter: put the right option at this letter (default: a random position)."""
  w, h = (int(x) for x in rng.integers(sizes[0], sizes[1] + 1, size=2))
  background = tuple(int(x) for x in rng.integers(170, 256, size=3))
  names = list(COLOURS)
  colour = names[int(rng.integers(len(names)))]
  side = int(rng.integers(12, max(13, int(0.25 * min(w, h)))))  # well under 10% of the area
  x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
  pixels = np.empty((h, w, 3), np.uint8)
  pixels[:] = background
  pixels[y0:y0 + side, x0:x0 + side] = COLOURS[colour]
  others = [n for n in names if n != colour]
  options = [colour] + [others[i] for i in rng.choice(len(others), size=3, replace=False)]
  options = [options[i] for i in rng.permutation(4)]
  if letter is not None:
    options.remove(colour)
    options.insert(records.OPTION_LETTERS.index(letter), colour)
  answer = records.OPTION_LETTERS[options.index(colour)]
  source = {"pool": "synthetic", "path": f"img{index}.png"}
  bbox = (float(x0), float(y0), float(x0 + side), float(y0 + side))
  return records.Record(
      id=rid or records.make_id(source, bbox, f"{question} {index}"),
      image=records.encode_image(Image.fromarray(pixels)), image_format="png", width=w, height=h,
      bbox=bbox, question=question, options=tuple(options), answer=answer, dimension="colour",
      source=source, teacher={"names": ["fixture"], "votes": {colour: 8}, "agreement": 1.0})


def _bad(kind: str, rng: np.random.Generator, index: int, sizes) -> bytes:
  rid = bad_id(kind)
  if kind == "missing_field":
    d = msgpack.unpackb(records.encode(make_record(rng, index, sizes, rid=rid)), raw=False)
    del d["bbox"]
    return msgpack.packb(d, use_bin_type=True)
  if kind == "bad_image":
    d = msgpack.unpackb(records.encode(make_record(rng, index, sizes, rid=rid)), raw=False)
    d["image"] = b"\x89PNG but not really an image"
    return msgpack.packb(d, use_bin_type=True)
  if kind == "too_long":
    words = " ".join(f"and the {c} one" for c in list(COLOURS) * 25)
    return records.encode(make_record(rng, index, sizes, question=f"{QUESTION} Compare it {words}.", rid=rid))
  raise ValueError(f"unknown bad record kind {kind!r}; one of {BAD_KINDS}")


def write_records(directory: str, n: int, *, seed: int = 0, sizes: tuple[int, int] = (200, 500),
                  bad: Sequence[str] = (), num_shards: int | None = None,
                  letters: Sequence[str | None] = ()) -> list[str]:
  """Writes n valid records plus one bad record per entry of `bad` (kinds in BAD_KINDS).

  Records go to 1 shard (n < 2) or 2 (default) ArrayRecord shards with group_size:1, plus the
  manifest. Bad records get ids `bad_id(kind)` and sit spread among the valid ones. letters[i]
  (cycled) places record i's right option at that letter. Returns the ids of all records in
  storage order.
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  letter = lambda i: letters[i % len(letters)] if letters else None
  blobs = [(r.id, records.encode(r)) for r in (make_record(rng, i, sizes, letter=letter(i)) for i in range(n))]
  for j, kind in enumerate(bad):
    at = (j + 1) * len(blobs) // (len(bad) + 1)
    blobs.insert(at, (bad_id(kind), _bad(kind, rng, n + j, sizes)))
  num_shards = num_shards or (2 if len(blobs) >= 2 else 1)
  bounds = np.linspace(0, len(blobs), num_shards + 1).astype(int)
  shards = []
  for s in range(num_shards):
    name = f"shard-{s:05d}.array_record"
    writer = array_record_module.ArrayRecordWriter(os.path.join(directory, name), "group_size:1")
    for _, blob in blobs[bounds[s]:bounds[s + 1]]:
      writer.write(blob)
    writer.close()
    shards.append({"path": name, "num_records": int(bounds[s + 1] - bounds[s])})
  records.write_manifest(directory, {"shards": shards, "num_records": len(blobs),
                                     "config": {"fixture": "tests/record_fixtures.py", "seed": seed}})
  return [rid for rid, _ in blobs]


def _image(w: int, h: int, colour=(90, 90, 90), fmt: str = "JPEG") -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (w, h), colour).save(buf, format=fmt)
  return buf.getvalue()


def write_vstar(root, size: tuple[int, int] = (40, 30)) -> pathlib.Path:
  """A V* Bench release folder (<category>/<name>.json beside <name>.jpg): three good items, then one
  without its image, one unreadable annotation and one with a single option."""
  root = pathlib.Path(root)
  for category, stem, options, boxes in (
      ("direct_attributes", "sa_4690", ["white", "black", "red", "blue"], [[10, 12, 6, 4]]),
      ("direct_attributes", "sa_7001", ["plastic", "wooden", "metal", "glass"], [[3, 3, 5, 5]]),
      ("relative_position", "sa_1003", ["left", "right"], [[2, 3, 4, 4], [20, 10, 5, 6]])):
    os.makedirs(root / category, exist_ok=True)
    (root / category / f"{stem}.jpg").write_bytes(_image(*size))
    (root / category / f"{stem}.json").write_text(json.dumps(
        {"target_object": ["thing"] * len(boxes), "bbox": boxes, "question": f"What about the {stem}?",
         "options": options}))
  (root / "direct_attributes" / "sa_0404.json").write_text(json.dumps(  # no image beside it
      {"target_object": ["cup"], "bbox": [[1, 1, 2, 2]], "question": "What colour is the cup?", "options": ["a", "b"]}))
  (root / "relative_position" / "sa_0500.json").write_text("{broken")
  (root / "relative_position" / "sa_0501.json").write_text(json.dumps({"question": "Where?", "options": ["x"]}))
  return root


def write_hrbench(path, size: tuple[int, int] = (48, 32)) -> pathlib.Path:
  """An HR-Bench table (.tsv as released, or .parquet by the name): rows 0 and 2 good (2 with two
  options), row 1's image not base64, row 3 without options."""
  path = pathlib.Path(path)
  good = base64.b64encode(_image(*size, colour=(200, 30, 30), fmt="PNG")).decode()
  table = {"index": [0, 1, 2, 3], "question": ["What is the number on the bus?", "What colour is the kite?",
                                                "Is the dog left of the tree?", "What is on the sign?"],
           "answer": ["B", "A", "B", "A"], "A": ["12", "red", "yes", ""], "B": ["21", "blue", "no", ""],
           "C": ["15", "green", "", ""], "D": ["51", "black", "", ""],
           "category": ["single", "single", "cross", "single"], "cycle_category": ["c0", "c1", "c2", "c3"],
           "image": [good, "!!not base64!!", good, good]}
  if path.suffix == ".parquet":
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table(table), path)
  else:
    lines = ["\t".join(table)] + ["\t".join(str(table[c][i]) for c in table) for i in range(4)]
    path.write_text("\n".join(lines) + "\n")
  return path
