"""Benchmark loaders: ZoomBench parquet round trip, the authors' JSON format, our records, bad items."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import record_fixtures
from zwz_jax import records
from zwz_jax.eval import benchmarks as B
from zwz_jax import answers as J
from zwz_jax.dimensions import normalise_dimension


def _png(w, h, colour=(200, 30, 30)):
  return records.encode_image(Image.fromarray(np.full((h, w, 3), colour, np.uint8)))


def _jpeg(w, h):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def _items():
  return [
      B.EvalItem(id="q0", image=_png(64, 48), image_format="png", width=64, height=48, crop=_png(16, 12),
                 crop_format="png", question="What colour is the cup?", options=("red", "blue", "green", "black"),
                 answer="A", answer_type="mc", dimension="Color Attributes", bbox=(10.0, 8.0, 26.0, 20.0),
                 source="gen:0"),
      B.EvalItem(id="q1", image=_jpeg(80, 40), image_format="jpeg", width=80, height=40, crop=None,
                 crop_format=None, question="How many birds sit on the wire?", options=(), answer="3",
                 answer_type="number", dimension="Fine-Grained Counting", bbox=None, source="gen:1"),
      B.EvalItem(id="q2", image=_png(32, 32), image_format="png", width=32, height=32, crop=_jpeg(8, 8),
                 crop_format="jpeg", question="What word is on the sign?\nRead it exactly.", options=(),
                 answer="STOP", answer_type="text", dimension=None, bbox=(1.0, 2.0, 3.0, 4.0), source="gen:2"),
  ]


def test_parquet_round_trip(tmp_path):
  path = B.write_zoombench_parquet(_items(), str(tmp_path / "bench" / "zoombench.parquet"))
  got = B.load_zoombench_parquet(path, verify=True)
  assert len(got) == 3 and all(it.error is None for it in got)
  for want, have in zip(_items(), got):
    for field in ("id", "image", "image_format", "width", "height", "crop", "crop_format", "question",
                  "options", "answer", "answer_type", "bbox"):
      assert getattr(have, field) == getattr(want, field), field
    assert have.source.startswith("zoombench.parquet:")
  # Labels come back as written; the unlabelled item's dimension is read from its question, marked.
  assert [(it.dimension, it.dimension_inferred) for it in got] == [
      ("Color Attributes", False), ("Fine-Grained Counting", False), ("ocr", True)]
  assert got[0].answer_text == "red" and got[0].prompt.endswith(records.MC_INSTRUCTION)
  assert got[0].raw_prompt == "What colour is the cup?\nA. red\nB. blue\nC. green\nD. black"
  assert normalise_dimension(got[0].dimension) == "colour"
  assert normalise_dimension(got[1].dimension) == "counting"


def test_parquet_public_schema_and_bad_rows(tmp_path):
  """Raw bytes or {"bytes": ...} cells, options in the prompt, category/index columns, bad rows kept."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  rows = {
      "image": [_png(40, 30), _png(40, 30), b"not an image", None],
      "crop_image": [None, _png(10, 10), None, None],
      "prompt": ["How many lamps are there? Select from the following choices.\n(A) 0\n(B) 2\n(C) 1\n(D) 3",
                 "What is written on the label?", "What colour?\nA. red\nB. blue", "Q?"],
      "answer": ["(C)", "Exit 12", "B", "x"],
      "category": ["counting", "ocr", "colour", None],
      "index": [7, 8, 9, 10],
      "bbox": [[1.0, 2.0, 5.0, 6.0], None, None, None],
  }
  path = tmp_path / "public.parquet"
  pq.write_table(pa.table(rows), path)
  got = B.load_zoombench_parquet(str(path))
  assert [it.id for it in got] == ["7", "8", "9", "10"]
  a, b, c, d = got
  assert a.error is None and a.answer == "C" and a.options == ("0", "2", "1", "3")
  assert a.question == "How many lamps are there? Select from the following choices."
  assert a.answer_type == "mc" and a.bbox == (1.0, 2.0, 5.0, 6.0) and a.crop is None and a.dimension == "counting"
  assert b.error is None and b.answer_type == "text" and b.crop_format == "png" and b.options == ()
  assert "image does not decode" in c.error and c.answer == "B"
  assert "image" in d.error and d.width == 0
  assert J.judge("the label says exit 12", b.answer, answer_type=b.answer_type).correct


def test_released_zoombench_schema_question_types_and_inferred_dimensions(tmp_path):
  """As released: query / response / question_type (mcq | blank), no dimension column."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = {
      "id": ["z0", "z1", "z2", "z3", "z4"],
      "image": [{"bytes": _png(40, 30), "path": "z0.png"}] * 5,
      "crop_image": [{"bytes": _png(10, 10), "path": "z0_crop.png"}] * 5,
      "query": ["What colour is the umbrella held by the woman?\nA. red\nB. blue\nC. green\nD. white",
                "What is written on the small sign?\nA. EXIT\nB. STOP",  # a blank whose answer is a letter:
                "Which letter is painted on the tail of the plane?",     # it stays text, options are not read
                "How many birds sit on the wire?", "What shape is the sign?"],
      "response": ["B", "EXIT", "A", "3", "round"],
      "question_type": ["mcq", "blank", "blank", "mcq", "essay"],
      "bbox": [[1.0, 2.0, 5.0, 6.0]] * 5,
  }
  pq.write_table(pa.table(rows), tmp_path / "zoombench.parquet")
  a, b, c, d, e = B.load_zoombench_parquet(str(tmp_path / "zoombench.parquet"))
  assert a.error is None and a.answer_type == "mc" and a.answer == "B" and a.options == ("red", "blue", "green", "white")
  assert b.error is None and b.options == () and b.question.endswith("B. STOP") and b.answer_type == "text"
  assert c.error is None and c.answer == "A" and c.answer_type == "text" and c.options == ()
  assert "question_type 'mcq' but no options" in d.error
  assert "question_type 'essay' is not one of" in e.error
  assert [(it.dimension, it.dimension_inferred) for it in (a, b, c, d, e)] == [
      ("colour", True), ("ocr", True), ("ocr", True), ("counting", True), ("structure", True)]
  # The report says the dimensions are inferred, and the writer does not turn them into labels.
  from zwz_jax.eval import zoombench
  preds = {(it.id, v): {"id": it.id, "view": v, "correct": v == "regional", "error": None,
                        **zoombench._labels(it)} for it in (a, b, c) for v in zoombench.VIEWS}
  rep = zoombench.report(preds, [a, b, c])
  assert rep["inferred_dimensions"] == 3 and set(rep["by_dimension"]) == {"colour", "ocr"}
  assert "Dimensions of 3 items are inferred" in zoombench.benchmark_markdown({"ckpt": rep})
  again = B.load_zoombench_parquet(B.write_zoombench_parquet([a, b, c], str(tmp_path / "again.parquet")))
  assert [(it.dimension, it.dimension_inferred) for it in again] == [("colour", True), ("ocr", True), ("ocr", True)]


def test_unreadable_files_raise_naming_the_file(tmp_path):
  bad = tmp_path / "broken.parquet"
  bad.write_bytes(b"PAR1 garbage")
  with pytest.raises(ValueError, match="broken.parquet"):
    B.load_zoombench_parquet(str(bad))
  with pytest.raises(FileNotFoundError, match="nope.parquet"):
    B.load_zoombench_parquet(str(tmp_path / "nope.parquet"))
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"image": [b"x"], "text": ["t"]}), tmp_path / "other.parquet")
  with pytest.raises(ValueError, match=r"other.parquet.*no column for \['prompt', 'answer'\]"):
    B.load_zoombench_parquet(str(tmp_path / "other.parquet"))
  (tmp_path / "bad.json").write_text("[{oops")
  with pytest.raises(ValueError, match="bad.json"):
    B.load_json(str(tmp_path / "bad.json"))
  with pytest.raises(FileNotFoundError, match="missing.json"):
    B.load_json(str(tmp_path / "missing.json"))


def test_json_loader_relative_paths_and_missing_image(tmp_path):
  root = tmp_path / "data"
  (root / "images").mkdir(parents=True)
  (root / "images" / "a.png").write_bytes(_png(50, 40))
  (root / "images" / "a_crop.png").write_bytes(_png(10, 10))
  (root / "images" / "b.png").write_bytes(_png(20, 20))
  entries = [
      {"images": ["images/a.png"], "crop_images": ["images/a_crop.png"],
       "query": "<image>How many table lamps are in the image? Select from the following choices.\n"
                "(A) 0\n(B) 2\n(C) 1\n(D) 3", "response": "C", "dimension": "counting"},
      {"images": ["images/b.png", "images/a_crop.png"], "query": "What is written on the sign?", "response": "OPEN"},
      {"images": ["images/gone.png"], "query": "What colour?", "response": "red"},
      {"query": "No image at all?", "response": "2"},
  ]
  listing = tmp_path / "bench.json"
  listing.write_text(json.dumps(entries))
  got = B.load_json(str(listing), str(root))
  assert len(got) == 4
  a, b, c, d = got
  assert a.error is None and a.options == ("0", "2", "1", "3") and a.answer == "C" and a.crop_format == "png"
  assert a.question == "How many table lamps are in the image? Select from the following choices."
  assert (a.width, a.height, a.dimension) == (50, 40, "counting")
  assert b.error is None and b.crop is not None and b.answer_type == "text"  # second image is the crop
  assert c.error and "gone.png" in c.error and c.answer == "red"
  assert d.error and "images" in d.error and d.answer_type == "number"
  # JSON lines, paths relative to the file's own folder by default, one bad line kept as an item.
  lines = tmp_path / "data" / "bench.jsonl"
  lines.write_text(json.dumps(entries[1]) + "\n{broken\n" + json.dumps(entries[0]) + "\n")
  got = B.load_json(str(lines))
  assert [it.error is None for it in got] == [True, False, True]
  assert "not valid JSON" in got[1].error and got[1].source == "bench.jsonl:1"


@pytest.mark.parametrize("prompt, question, options", [
    ("What colour is it?\nA. red\nB. blue\nC. green\nD. black", "What colour is it?",
     ("red", "blue", "green", "black")),
    ("Count them.\n(A) 0\n(B) 2\n(C) 1", "Count them.", ("0", "2", "1")),
    ("Which?\nOptions:\nA) cat\nB) dog\n\nAnswer with the option's letter from the given choices directly.",
     "Which?", ("cat", "dog")),
    ("Which one?\n\nA: left\n\nB: right\n", "Which one?", ("left", "right")),
    ("What is shown? (A) a cat (B) a dog (C) a bird", "What is shown?", ("a cat", "a dog", "a bird")),
    ("A. Smith's shop: what colour is its sign?", "A. Smith's shop: what colour is its sign?", ()),
    ("How many?", "How many?", ()),
    ("Pick.\nA. one\nC. three", "Pick.\nA. one\nC. three", ()),  # not a lettered run
])
def test_split_options(prompt, question, options):
  assert B.split_options(prompt) == (question, options)


def test_answer_given_as_option_text_or_wrong_letter(tmp_path):
  items = [
      B._make_item(id=1, source="s", image=_png(8, 8), crop=None, prompt="Q?\nA. red\nB. blue", answer="blue"),
      B._make_item(id=2, source="s", image=_png(8, 8), crop=None, prompt="Q?\nA. red\nB. blue", answer="D"),
      B._make_item(id=3, source="s", image=_png(8, 8), crop=None, prompt="", answer=""),
  ]
  assert items[0].answer == "B" and items[0].error is None
  assert "not one of the option letters AB" in items[1].error
  assert "prompt" in items[2].error and "answer" in items[2].error


def test_from_records_cuts_the_box_and_keeps_bad_records(tmp_path):
  ids = record_fixtures.write_records(str(tmp_path), 4, bad=("missing_field", "bad_image"))
  got = B.from_records(str(tmp_path))
  assert [it.id for it in got] == ids
  by_id = {it.id: it for it in got}
  assert "missing field" in by_id[record_fixtures.bad_id("missing_field")].error
  assert "image does not decode" in by_id[record_fixtures.bad_id("bad_image")].error
  good = [it for it in got if it.error is None]
  assert len(good) == 4
  for it in good:
    x0, y0, x1, y1 = it.bbox
    crop = Image.open(io.BytesIO(it.crop))
    assert crop.size == (int(x1 - x0), int(y1 - y0)) and it.crop_format == "png"
    colour = np.asarray(crop.convert("RGB"))[crop.height // 2, crop.width // 2]
    assert tuple(colour) == record_fixtures.COLOURS[it.answer_text]  # the crop is the square
    assert it.answer_type == "mc" and it.dimension == "colour" and it.options
  assert B.from_records(str(tmp_path), split="test") == []
  # Export our records as a ZoomBench-schema benchmark and read them back.
  path = B.write_zoombench_parquet(good, str(tmp_path / "export.parquet"))
  back = B.load_zoombench_parquet(path)
  assert [(b.id, b.question, b.options, b.answer, b.crop) for b in back] == [
      (g.id, g.question, g.options, g.answer, g.crop) for g in good]
  assert os.path.exists(path) and not os.path.exists(path + ".tmp")
  # One entry point picks the loader by form.
  assert [it.id for it in B.load(str(tmp_path)).items] == ids
  export = B.load(path)
  assert [it.id for it in export.items] == [g.id for g in good]
  assert (export.name, export.kind, export.authors_mcq, export.dual_view) == ("export", "zoombench", False, True)
  with pytest.raises(ValueError, match="unknown benchmark format"):
    B.load(str(tmp_path / "x.csv"))


# ---- V*, HR-Bench and MME-RealWorld in their published formats ------------------------------------


def test_vstar_release_folders(tmp_path):
  record_fixtures.write_vstar(tmp_path)
  got = {it.id: it for it in B.load(str(tmp_path)).items}
  assert len(got) == 6
  for rid, right in (("direct_attributes/sa_4690", "white"), ("direct_attributes/sa_7001", "plastic"),
                     ("relative_position/sa_1003", "left")):
    it = got[rid]
    assert it.error is None and it.answer_type == "mc" and it.answer_text == right, rid  # options[0] is right
    assert it.dimension == rid.split("/")[0] and it.crop is None and (it.width, it.height) == (40, 30)
  assert sorted(got["direct_attributes/sa_4690"].options) == ["black", "blue", "red", "white"]
  assert got["direct_attributes/sa_4690"].bbox == (10.0, 12.0, 16.0, 16.0)  # [x, y, w, h] -> corners
  assert got["relative_position/sa_1003"].bbox == (2.0, 3.0, 25.0, 16.0)  # around both targets
  # The order is drawn from the name: the right letter varies across items and is the same every load.
  letters = [it.answer for it in B.load_vstar(str(tmp_path)) if it.error is None]
  assert letters == [it.answer for it in B.load_vstar(str(tmp_path)) if it.error is None]
  assert "no image sa_0404.*" in got["direct_attributes/sa_0404"].error
  assert "annotation cannot be read" in got["relative_position/sa_0500"].error
  assert "fewer than two options" in got["relative_position/sa_0501"].error


def test_vstar_questions_jsonl(tmp_path):
  (tmp_path / "direct_attributes").mkdir()
  (tmp_path / "direct_attributes" / "sa_1.jpg").write_bytes(_jpeg(40, 30))
  text = ("What is the color of the woman's umbrella?\n(A) yellow\n(B) red\n(C) white\n(D) blue\n"
          "Answer with the option's letter from the given choices directly.")
  rows = [{"image": "direct_attributes/sa_1.jpg", "text": text, "category": "direct_attributes", "question_id": 0,
           "label": "C"},
          {"image": "direct_attributes/missing.jpg", "text": text, "category": "direct_attributes", "question_id": 1,
           "label": "A"}]
  (tmp_path / B.VSTAR_QUESTIONS).write_text("\n".join(map(json.dumps, rows)) + "\n{oops\n")
  a, b, c = B.load(str(tmp_path)).items
  assert a.error is None and a.question == "What is the color of the woman's umbrella?"
  assert a.options == ("yellow", "red", "white", "blue") and a.answer == "C" and a.answer_text == "white"
  assert "cannot be read" in b.error and "not valid JSON" in c.error


@pytest.mark.parametrize("form", ["tsv", "parquet"])
def test_hrbench(tmp_path, form):
  path = record_fixtures.write_hrbench(tmp_path / f"hr_bench_4k.{form}")
  bench = B.load(str(path))
  assert (bench.name, bench.kind, bench.authors_mcq, bench.dual_view) == ("hr_bench_4k", "hrbench", True, False)
  a, b, c, d = bench.items
  assert a.error is None and a.options == ("12", "21", "15", "51") and a.answer == "B" and a.answer_text == "21"
  assert a.dimension == "single" and (a.width, a.height) == (48, 32) and a.id == "0"
  assert "not valid base64" in b.error
  assert c.error is None and c.options == ("yes", "no") and c.dimension == "cross"  # two options: C, D empty
  assert "hold 0 option(s)" in d.error
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"question": ["q"], "A": ["x"], "B": ["y"]}), tmp_path / "short.parquet")
  with pytest.raises(ValueError, match=r"short.parquet.*no column \['answer', 'image'\]"):
    B.load(str(tmp_path / "short.parquet"))


def test_mme_realworld(tmp_path):
  (tmp_path / "images").mkdir()
  (tmp_path / "images" / "a.jpg").write_bytes(_jpeg(40, 30))
  rows = [
      {"Question_id": "perception/remote_sensing/color/0001", "Image": "images/a.jpg",
       "Text": "What color is the roof of the building in the top left?",
       "Question Type": "Multiple Choice",
       "Answer choices": ["(A) Red", "(B) Blue", "(C) Green", "(D) White", "(E) The image does not feature the roof."],
       "Ground truth": "B", "Task": "Perception", "Subtask": "Remote Sensing", "Category": "color"},
      {"Question_id": "perception/ocr/0002", "Image": "images/gone.jpg", "Text": "What is written?",
       "Answer choices": ["(A) x", "(B) y"], "Ground truth": "A", "Category": "ocr"},
      {"Question_id": "perception/ocr/0003", "Image": "images/a.jpg", "Text": "What is written?",
       "Answer choices": ["(A) x", "(B) y"], "Ground truth": "F", "Category": "ocr"},
      {"Question_id": "perception/ocr/0004", "Image": "images/a.jpg", "Text": "What is written?"},
  ]
  (tmp_path / "MME_RealWorld.json").write_text(json.dumps(rows))
  bench = B.load(str(tmp_path / "MME_RealWorld.json"))
  assert (bench.name, bench.kind, bench.authors_mcq) == ("MME_RealWorld", "mme_realworld", True)
  a, b, c, d = bench.items
  assert a.error is None and a.options == ("Red", "Blue", "Green", "White", "The image does not feature the roof.")
  assert a.answer == "B" and a.answer_text == "Blue" and a.dimension == "Remote Sensing"
  assert a.id == "perception/remote_sensing/color/0001" and a.crop is None
  assert "cannot be read" in b.error and b.dimension == "ocr"
  assert "'F' is not one of the option letters" in c.error
  assert "'Answer choices' is missing" in d.error
