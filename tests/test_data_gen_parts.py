"""The pure parts of data generation: pools, boxes, prompts/parsers, consensus and multiple choice."""
import io
import json
import pickle
import random
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from data_gen import boxes as boxes_lib
from data_gen import consensus as cons
from data_gen import pool as pool_lib
from data_gen import prompts
from data_gen.boxes import Box
from data_gen.parsing import ParseError
from zwz_jax import answers, records

# ----------------------------------------------------------------------------------------------
# Consensus
# ----------------------------------------------------------------------------------------------


SURFACE_VARIANTS = [("Blue.", "blue"), ("3", "three"), ("The dog", "dog"), ("  Red   car ", "red car!"),
                    ("twenty-one", "21"), ("1,000", "1000"), ("Grey", "gray"), ("an apple", "Apple"),
                    ("one hundred and five", "105"), ("the colour", "color")]


@pytest.mark.parametrize("a, b", SURFACE_VARIANTS)
def test_normalise_answer_folds_surface_variants(a, b):
  assert answers.normalise_answer(a) == answers.normalise_answer(b)


@pytest.mark.parametrize("a, b", SURFACE_VARIANTS)
def test_the_judge_accepts_what_the_vote_groups(a, b):
  """The 6-of-8 vote and the judge share one notion of the same answer (zwz_jax.answers)."""
  assert answers.judge(a, b).correct and answers.judge(b, a).correct


@pytest.mark.parametrize("a, b", [("3", "4"), ("3.5", "35"), ("red", "dark red"), ("A", "B")])
def test_normalise_answer_keeps_real_differences(a, b):
  assert answers.normalise_answer(a) != answers.normalise_answer(b)


def test_consensus_six_of_eight_is_kept_with_surface_variants_grouped():
  answers = ["Blue.", "blue", "BLUE", "the blue", "Blue", "blue", "red", "Green"]
  c = cons.consensus(answers, min_agreement=6)
  assert c.keep and c.reason == "ok"
  assert c.answer == "blue"  # the most frequent original wording of the group
  assert c.votes == {"blue": 6, "red": 1, "green": 1}
  assert list(c.votes) == ["blue", "red", "green"]
  assert c.agreement == pytest.approx(0.75)
  assert c.minority == ["red", "Green"]


def test_consensus_five_of_eight_is_dropped():
  c = cons.consensus(["3", "three", "3", "3", "Three", "4", "4", "5"], min_agreement=6)
  assert not c.keep and c.reason == "below_threshold"
  assert c.votes == {"3": 5, "4": 2, "5": 1}
  assert c.agreement == pytest.approx(5 / 8)
  assert c.minority == ["4", "5"]


def test_consensus_failed_samples_count_against_agreement():
  # Six parse, all agree, but two samples failed: 6/8 still passes; with three failures it does not.
  assert cons.consensus(["cat"] * 6 + [None, ""], 6).keep
  c = cons.consensus(["cat"] * 5 + [None, "", "  "], 6)
  assert not c.keep and c.agreement == pytest.approx(5 / 8)
  empty = cons.consensus([None, "", "..."], 1)
  assert not empty.keep and empty.reason == "no_answers" and empty.answer == ""


def test_consensus_tie_is_never_kept():
  c = cons.consensus(["a cat", "cat", "Cat", "cat", "dog", "dog", "Dog", "the dog"], min_agreement=4)
  assert not c.keep and c.reason == "tie"
  assert c.answer == "cat"  # the first group to appear
  assert c.votes == {"cat": 4, "dog": 4}


def test_consensus_grouper_merges_meanings():
  answers = ["sofa", "couch", "sofa", "settee", "couch", "sofa", "chair", "Sofa"]
  plain = cons.consensus(answers, 6)
  assert not plain.keep and plain.votes["sofa"] == 4

  valid = cons.valid_answers(answers)
  assert valid == answers
  groups = [1 if t.lower() in ("sofa", "couch", "settee") else 2 for t in valid]
  c = cons.consensus(answers, 6, groups=groups)
  assert c.keep and c.answer == "sofa" and c.votes == {"sofa": 7, "chair": 1}
  # Normalised duplicates stay together even when the groups split them.
  c2 = cons.consensus(["Red", "red", "red."], 3, groups=[0, 1, 2])
  assert c2.keep and c2.votes == {"red": 3}
  assert cons.valid_answers([" a ", None, "", "b"]) == ["a", "b"]
  with pytest.raises(ValueError, match="1 group ids for 2 answers"):
    cons.consensus(["a", "b"], 1, groups=[0])


def test_multiple_choice_dedupes_and_keeps_order_of_sources():
  rng = random.Random(0)
  options, letter = cons.make_multiple_choice(
      "blue", ["Blue.", "red", "Red", "", "green", "the green", "yellow", "purple"], rng)
  assert len(options) == 4 and len(set(map(answers.normalise_answer, options))) == 4
  assert options[records.OPTION_LETTERS.index(letter)] == "blue"
  assert set(options) == {"blue", "red", "green", "yellow"}  # first three distinct, in given order


def test_multiple_choice_is_deterministic_and_spreads_the_answer():
  def build(seed):
    return cons.make_multiple_choice("7", ["6", "8", "9"], random.Random(seed))

  assert build(3) == build(3)
  letters = {build(seed)[1] for seed in range(40)}
  assert letters == {"A", "B", "C", "D"}
  for seed in range(10):
    options, letter = build(seed)
    assert options[records.OPTION_LETTERS.index(letter)] == "7"


def test_multiple_choice_harmonises_style_and_fails_when_short():
  options, _ = cons.make_multiple_choice("wooden", ["Metal.", "Plastic", "glass"], random.Random(1))
  assert sorted(options) == ["glass", "metal", "plastic", "wooden"]
  with pytest.raises(cons.NotEnoughOptions) as e:
    cons.make_multiple_choice("3", ["three", "3.", "4", "four"], random.Random(0))
  assert (e.value.have, e.value.need) == (2, 4)
  opts, letter = cons.make_multiple_choice("3", ["4"], random.Random(0), num_options=2)
  assert sorted(opts) == ["3", "4"] and letter in "AB"


# ----------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------


def test_parse_boxes_qwen2_5_pixels_in_fence_with_prose():
  text = ('Sure! Here are the objects:\n```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "cup", '
          '"confidence": 0.9},\n {"bbox_2d": [50, 60, 55, 70], "label": "key", "score": 0.5}]\n```\n'
          "Let me know if you need more.")
  got = boxes_lib.parse_boxes(text, (200, 100), "qwen2_5")
  assert got == [Box(10, 20, 30, 40, "cup", 0.9), Box(50, 60, 55, 70, "key", 0.5)]
  # The model saw a resized copy: coordinates are rescaled to the image we hold.
  scaled = boxes_lib.parse_boxes(text, (400, 200), "qwen2_5", model_size=(200, 100))
  assert scaled[0].as_list() == [20, 40, 60, 80]


def test_parse_boxes_qwen3_normalised_single_dict_and_odd_values():
  text = '{"bbox_2d": [500, 250, 100, 750], "label": "sign", "score": "85%"}'
  (b,) = boxes_lib.parse_boxes(text, (2000, 1000), "qwen3")
  assert b.as_list() == [200.0, 250.0, 1000.0, 750.0]  # swapped x corners are put in order
  assert b.score == pytest.approx(0.85)
  wrapped = '{"objects": [{"bbox_2d": [0, 0, 1000, 1000], "label": "all", "confidence": 90}]}'
  (w,) = boxes_lib.parse_boxes(wrapped, (640, 480), "qwen3")
  assert w.as_list() == [0, 0, 640, 480] and w.score == pytest.approx(0.9)


def test_parse_boxes_salvages_truncated_lists_and_box_tokens():
  cut = ('[{"bbox_2d": [1, 2, 3, 4], "label": "a", "score": 0.8}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}, '
         '{"bbox_2d": [9, 1')
  got = boxes_lib.parse_boxes(cut, (100, 100), "qwen2_5", default_score=0.5)
  assert [b.label for b in got] == ["a", "b"] and got[1].score == 0.5
  tokens = ("<|object_ref_start|>dog<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> and "
            "<|box_start|>(0,0),(10,10)<|box_end|>")
  got = boxes_lib.parse_boxes(tokens, (1000, 500), "qwen3")
  assert got[0] == Box(100, 100, 300, 200, "dog", None) and got[1].label == ""
  assert boxes_lib.parse_boxes("```json\n[]\n```", (10, 10)) == []
  py_style = "[{'bbox_2d': [1, 2, 3, 4], 'label': 'x', 'score': 0.9,},]"
  assert boxes_lib.parse_boxes(py_style, (10, 10))[0].as_list() == [1, 2, 3, 4]


@pytest.mark.parametrize("text", ["I cannot see any objects.", '[{"label": "cup"}]', "[1, 2, 3]",
                                  '[{"bbox_2d": [1, 2, "x", 4]}]', '[{"bbox_2d": [1, 2, NaN, 4]}]', "",
                                  b"\xff\xfe garbage \x80", "ok \udcff", 12, None])
def test_parse_boxes_malformed_raises_parse_error(text):
  with pytest.raises(ParseError) as e:
    boxes_lib.parse_boxes(text, (100, 100), "qwen2_5")
  assert isinstance(e.value.snippet, str)


def test_parse_boxes_rejects_unknown_format():
  with pytest.raises(ValueError, match="qwen2_5"):
    boxes_lib.parse_boxes("[]", (10, 10), "yolo")


def test_iou_and_clip():
  a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)
  assert boxes_lib.iou(a, b) == pytest.approx(50 / 150)
  assert boxes_lib.iou(a, Box(20, 20, 30, 30)) == 0.0
  assert boxes_lib.iou(a, a) == 1.0
  assert boxes_lib.clip_box(Box(-5, 3, 120, 90, "x", 0.9), 100, 80) == Box(0, 3, 100, 80, "x", 0.9)


def test_dedupe_keeps_higher_score_in_input_order():
  low, high, other = Box(0, 0, 10, 10, "a", 0.8), Box(1, 0, 11, 10, "b", 0.95), Box(50, 50, 60, 60, "c", 0.9)
  assert boxes_lib.dedupe([low, high, other]) == [high, other]
  assert boxes_lib.dedupe([low, high, other], iou_threshold=0.9) == [low, high, other]


def test_filter_boxes_reasons():
  w, h = 1000, 1000  # 10% of the area is 100_000 px^2
  good = Box(100, 100, 200, 200, "good", 0.9)
  boxes = [
      good,
      Box(0, 0, 0, 50, "flat", 0.9),  # zero_area
      Box(-50, -50, -10, -10, "outside", 0.9),  # zero_area after clipping
      Box(300, 300, 400, 400, "unsure", 0.7),  # low_score
      Box(300, 300, 400, 400, "unscored", None),  # low_score: no score at all
      Box(0, 0, 400, 250, "big", 0.99),  # too_large: exactly 10%
      Box(500, 500, 505, 600, "thin", 0.9),  # too_small
      Box(105, 100, 205, 200, "dup", 0.8),  # duplicate of good
      Box(950, 950, 1100, 1100, "edge", 0.75),  # kept, clipped; 0.75 is enough
  ]
  kept, dropped = boxes_lib.filter_boxes(boxes, w, h)
  assert kept == [good, Box(950, 950, 1000, 1000, "edge", 0.75)]
  assert [(b.label, r) for b, r in dropped] == [
      ("flat", "zero_area"), ("outside", "zero_area"), ("unsure", "low_score"), ("unscored", "low_score"),
      ("big", "too_large"), ("thin", "too_small"), ("dup", "duplicate")]
  assert {r for _, r in dropped} == set(boxes_lib.DROP_REASONS)
  kept, _ = boxes_lib.filter_boxes([Box(0, 0, 399, 250, "small enough", 0.99)], w, h)
  assert len(kept) == 1


def test_crop_region_geometry():
  arr = np.zeros((100, 200, 3), np.uint8)
  arr[20:40, 50:70] = 255
  image = Image.fromarray(arr)

  def crop_region(box, upscale=2.0, context_frac=0.0):  # data generation's crop: region_box, then zoom
    crop_box = records.region_box(box.as_list() if isinstance(box, Box) else box, image.size, context_frac)
    return records.zoom(image, crop_box, upscale), crop_box

  crop, crop_box = crop_region(Box(50, 20, 70, 40))
  assert crop_box == (50, 20, 70, 40) and crop.size == (40, 40)
  assert np.asarray(crop).min() == 255  # the white square fills the crop, upscaled 2x
  crop, crop_box = crop_region([50.4, 20.6, 69.2, 39.1], upscale=1.0)
  assert crop_box == (50, 20, 70, 40) and crop.size == (20, 20)  # snapped outward to whole pixels
  crop, crop_box = crop_region(Box(0, 0, 20, 10), upscale=3.0, context_frac=0.5)
  assert crop_box == (0, 0, 30, 15) and crop.size == (90, 45)  # context clipped at the border
  crop, crop_box = crop_region(Box(199.5, 99.5, 199.5, 99.5))
  assert crop_box == (199, 99, 200, 100) and crop.size == (2, 2)  # never empty


# ----------------------------------------------------------------------------------------------
# Prompts and parsers
# ----------------------------------------------------------------------------------------------


def test_prompt_builders_cover_every_task():
  from data_gen.teachers.base import TASKS
  built = {
      "propose": prompts.propose_prompt("qwen2_5", (640, 480)),
      "objects": prompts.objects_prompt(12),
      "questions": prompts.questions_prompt(3, label="bicycle bell"),
      "check": prompts.check_prompt("What colour is the bell?", "colour"),
      "answer": prompts.answer_prompt("How many spokes?", "counting"),
      "distractors": prompts.distractors_prompt("What colour is the bell?", "silver", 3),
      "group": prompts.group_prompt("How many spokes?", ["12", "twelve", "a dozen", "10"]),
      "student": prompts.student_prompt("What colour is the bell?", ["red", "silver"]),
  }
  assert set(built) == set(TASKS)
  assert "640x480" in built["propose"] and "bbox_2d" in built["propose"]
  qwen3 = prompts.propose_prompt(box_format="qwen3")
  assert "0-1000" in qwen3 and "pixel" not in qwen3
  for d in records.DIMENSIONS:
    assert d in built["questions"]
  assert "bicycle bell" in built["questions"] and "3 questions" in built["questions"]
  assert "yes or no" in built["check"]
  assert "at most 12" in built["objects"] and "exactly once" in built["objects"]
  assert "Image 1" in prompts.check_prompt("q?", full_image=True)
  assert "digits" in built["answer"]
  assert "silver" in built["distractors"] and "JSON list of 3" in built["distractors"]
  assert "1. 12\n2. twelve\n3. a dozen\n4. 10" in built["group"] and "[[1, 3], [2]]" in built["group"]
  rec = records.Record(id="x", image=records.encode_image(Image.new("RGB", (8, 8))), image_format="png",
                       width=8, height=8, bbox=(1, 1, 4, 4), question="What colour is the bell?",
                       options=("red", "silver"), answer="B", dimension="colour", source={}, teacher={})
  assert built["student"] == records.ground(rec, "overlay")[1]


def test_parse_questions_normalises_dimensions():
  text = ('Here you go:\n```json\n[{"question": "What color is the  cup?", "dimension": "Color"},\n'
          '{"question": "How many keys are there?", "dimension": "count"},\n'
          '{"question": "What does the label say?", "dimension": "text/OCR"},\n'
          '{"question": "What shape is the knob?", "dimension": "Shape"},\n'
          '{"question": "What is the bench made of?", "dimension": "material"},\n'
          '{"question": "What is he holding?", "dimension": "Object Identification"}]\n```')
  got = prompts.parse_questions(text, 6)
  assert [d for _, d in got] == ["colour", "counting", "ocr", "structure", "material", "identification"]
  assert got[0][0] == "What color is the cup?"
  assert len(prompts.parse_questions(text, 3)) == 3
  assert prompts.parse_questions("[]", 3) == []
  assert prompts.parse_questions('{"questions": [{"question": "Q?", "dimension": "ocr"}]}', 3) == [("Q?", "ocr")]


def test_parse_questions_unknown_dimension():
  text = json.dumps([{"question": "Where is it?", "dimension": "spatial"},
                     {"question": "What colour?", "dimension": "colour"}])
  with pytest.raises(ParseError, match="spatial"):
    prompts.parse_questions(text, 3)
  assert prompts.parse_questions(text, 3, strict=False) == [("What colour?", "colour")]
  with pytest.raises(ParseError):
    prompts.parse_questions(json.dumps([{"question": "Where?", "dimension": "spatial"}]), 3, strict=False)


@pytest.mark.parametrize("text, want", [
    ("Yes", True), ("no.", False), ("**Yes**, it is answerable.", True), ("No, two signs are visible.", False),
    ("Let me think.\nThe crop shows one sign.\nVALID: Yes\nREASON: clear", True),
    ("Step 1: fine.\nFinal answer: no", False), ("The answer is \\boxed{yes}", True),
    ("<think>maybe no</think>yes", True), ("no no no</think>\nYes", True), (b"yes", True),
    ("The response matches. Yes", True), ("Incorrect.", False)])
def test_parse_yes_no(text, want):
  """The question check reads verdicts as the LLM judge does (one parser, zwz_jax.answers)."""
  assert prompts.parse_yes_no(text) is want
  if isinstance(text, str):
    assert answers.parse_yes_no(text) is want


@pytest.mark.parametrize("text", ["maybe", "", "The question is fine.", b"\xc3\x28", "y\x00es"])
def test_parse_yes_no_rejects(text):
  with pytest.raises(ParseError):
    prompts.parse_yes_no(text)


def test_parse_list_and_answer():
  assert prompts.parse_list('```json\n["red", "green", 3]\n```') == ["red", "green", "3"]
  assert prompts.parse_list('Options: ["red", "green",]') == ["red", "green"]
  assert prompts.parse_list('{"distractors": ["a", "b"]}') == ["a", "b"]
  assert prompts.parse_list("1. red\n2) green\n- blue") == ["red", "green", "blue"]
  assert prompts.parse_answer("  Blue.\nIt is blue because...") == "Blue"
  assert prompts.parse_answer("Answer: **STOP**") == "STOP"
  assert prompts.parse_answer("Reasoning... so \\boxed{42}.") == "42"
  assert prompts.parse_answer("<think>hmm</think>\n\n 3 ") == "3"
  for bad in ["", "  \n ", "no list here"]:
    with pytest.raises(ParseError):
      prompts.parse_list(bad)
  with pytest.raises(ParseError):
    prompts.parse_answer("**.**")


@pytest.mark.parametrize("text,want", [
    ('```json\n["red cup", "Red  cup.", "white sign"]\n```', ["red cup", "white sign"]),  # case, spacing
    ('{"objects": [{"name": "key", "bbox": [1, 2, 3, 4]}, {"label": "flag"}, {"x": 1}]}', ["key", "flag"]),
    ("Objects:\n1. blue key\n2. stop sign", ["blue key", "stop sign"]),
    ('["a", "b", "c", "d", "e"]', ["a", "b", "c"]),  # at most k
    ("```json\n[]\n```", []),  # nothing small: no names, not an error
])
def test_parse_names(text, want):
  assert prompts.parse_names(text, 3) == want


def test_parse_names_rejects_prose():
  with pytest.raises(ParseError):
    prompts.parse_names("There is a cup and a key.", 3)


@pytest.mark.parametrize("text,want", [
    ("[[1, 2, 4], [3]]", [0, 0, 1, 0]),
    ("Grouped:\n```json\n[[3], [1, 2], [4]]\n```", [1, 1, 0, 2]),
    ('{"groups": [[1], [2], [3], [4]]}', [0, 1, 2, 3]),
    ("[[1.0, 2], [3, 4],]", [0, 0, 1, 1]),  # near-JSON
])
def test_parse_groups(text, want):
  assert prompts.parse_groups(text, 4) == want


@pytest.mark.parametrize("text,why", [
    ("no groups here", "no JSON list of groups"), ("[[1, 2], [3]]", r"answer\(s\) \[4\] are in no group"),
    ("[[1, 2], [2, 3, 4]]", "answer 2 is in two groups"), ("[[1, 5], [2, 3, 4]]", "5 in group 1 is not an answer"),
    ("[[1, 2], [], [3, 4]]", "group 2 is not a non-empty list"), ("[[1, true], [2, 3, 4]]", "True in group 1"),
])
def test_parse_groups_rejects(text, why):
  with pytest.raises(ParseError, match=why):
    prompts.parse_groups(text, 4)


def test_parsers_stay_fast_and_safe_on_bracket_garbage():
  for text in ["[" * 60_000, "[" * 3000 + "]" * 3000, "x[" * 20_000, '[{"bbox_2d":' * 5000, "{'a': (" * 5000]:
    for parser in (prompts.parse_list, lambda t: boxes_lib.parse_boxes(t, (10, 10)), lambda t: prompts.parse_groups(t, 3)):
      with pytest.raises(ParseError):
        parser(text)


@pytest.mark.parametrize("garbage", [b"\xff\xfe\xfd", b"ok \x80\x81", "bad \udc80 surrogate", b"", 3.5, None,
                                     bytes(range(256))])
@pytest.mark.parametrize("parser", [lambda t: prompts.parse_questions(t, 3), prompts.parse_yes_no,
                                    prompts.parse_list, prompts.parse_answer, lambda t: prompts.parse_groups(t, 2),
                                    lambda t: boxes_lib.parse_boxes(t, (10, 10))])
def test_non_utf8_output_is_a_parse_error(parser, garbage):
  with pytest.raises(ParseError):
    parser(garbage)


# ----------------------------------------------------------------------------------------------
# Pools
# ----------------------------------------------------------------------------------------------


def _png(size=(64, 48), color=(10, 20, 30), mode="RGB"):
  buf = io.BytesIO()
  Image.new(mode, size, color).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(size=(64, 48)):
  arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="JPEG")
  return buf.getvalue()


def _item(data, key="k"):
  return pool_lib.ImageItem(key, "p", key, lambda: data)


def test_folder_pool_lists_images_recursively(tmp_path):
  (tmp_path / "b" / "c").mkdir(parents=True)
  (tmp_path / "a.png").write_bytes(_png())
  (tmp_path / "b" / "z.JPG").write_bytes(_jpeg())
  (tmp_path / "b" / "c" / "y.webp").write_bytes(b"not really")
  (tmp_path / "b" / "meta.json").write_text("{}")
  (tmp_path / "b" / "._a.png").write_bytes(b"resource fork")
  (tmp_path / "notes.txt").write_text("x")
  items = pool_lib.list_pool({"kind": "folder", "path": str(tmp_path), "name": "mine"})
  assert [i.key for i in items] == ["a.png", "b/c/y.webp", "b/z.JPG"]
  assert {i.pool for i in items} == {"mine"}
  assert items[0].load() == _png()
  assert pickle.loads(pickle.dumps(items[0])).load() == _png()  # items can go to worker processes
  unnamed = pool_lib.list_pool({"kind": "folder", "path": str(tmp_path)})
  assert unnamed[0].pool == tmp_path.name
  with pytest.raises(FileNotFoundError, match="pool path"):
    pool_lib.list_pool({"kind": "folder", "path": str(tmp_path / "missing"), "name": "x"})
  with pytest.raises(ValueError, match="pool kind"):
    pool_lib.list_pool({"kind": "s3", "path": str(tmp_path)})


def test_list_pool_reads_relative_paths_and_comments(tmp_path):
  (tmp_path / "imgs").mkdir()
  (tmp_path / "imgs" / "one.png").write_bytes(_png())
  (tmp_path / "lists").mkdir()
  (tmp_path / "lists" / "pool.txt").write_text(
      "# my pool\n../imgs/one.png\n\n  ../imgs/two.png  \n../imgs/one.png\n")
  items = pool_lib.list_pool({"kind": "list", "path": str(tmp_path / "lists" / "pool.txt"), "name": "l"})
  assert [i.key for i in items] == ["../imgs/one.png", "../imgs/two.png"]
  assert items[0].load() == _png()
  with pytest.raises(pool_lib.ImageSkip) as e:  # listed but missing: unreadable at load time
    pool_lib.load_image(items[1])
  assert e.value.reason == "unreadable" and e.value.key == "../imgs/two.png"


def test_parquet_pool(tmp_path):
  pa = pytest.importorskip("pyarrow")
  pq = pytest.importorskip("pyarrow.parquet")
  images = [_png(color=(i, 0, 0)) for i in range(5)]
  table = pa.table({"id": ["r3", "r1", "r4", "r0", "r2"],
                    "image": [{"bytes": b, "path": None} for b in images[:4]] + [None]})
  pq.write_table(table, tmp_path / "data.parquet", row_group_size=2)
  cfg = {"kind": "parquet", "path": str(tmp_path / "data.parquet"), "name": "pq",
         "image_column": "image", "key_column": "id"}
  items = pool_lib.list_pool(cfg)
  assert [i.key for i in items] == ["r0", "r1", "r2", "r3", "r4"]
  assert items[0].load() == images[3] and items[3].load() == images[0]
  assert pickle.loads(pickle.dumps(items[1])).load() == images[1]
  with pytest.raises(pool_lib.ImageSkip) as e:
    pool_lib.load_image(items[2])  # r2 has no image
  assert e.value.reason == "unreadable"
  # Raw bytes column, no key column: keys are file and row.
  pq.write_table(pa.table({"img": images[:3]}), tmp_path / "raw.parquet")
  raw = pool_lib.list_pool({"kind": "parquet", "path": str(tmp_path / "raw.parquet"), "image_column": "img"})
  assert [i.key for i in raw] == ["raw.parquet:0", "raw.parquet:1", "raw.parquet:2"]
  assert pool_lib.load_image(raw[1])[1] == images[1]
  # A folder (or glob) of files, HF-style: keys carry the file's relative path.
  (tmp_path / "set" / "sub").mkdir(parents=True)
  (tmp_path / "img.png").write_bytes(images[4])
  pq.write_table(pa.table({"image": [{"bytes": None, "path": "../img.png"}]}), tmp_path / "set" / "a.parquet")
  pq.write_table(pa.table({"image": images[:1]}), tmp_path / "set" / "sub" / "b.parquet")
  for spec in (str(tmp_path / "set"), str(tmp_path / "set" / "**" / "*.parquet")):
    many = pool_lib.list_pool({"kind": "parquet", "path": spec})
    assert [i.key for i in many] == ["a.parquet:0", "sub/b.parquet:0"]
  assert many[0].load() == images[4] and many[1].load() == images[0]  # a path is relative to its file
  with pytest.raises(KeyError, match="image_column"):
    pool_lib.list_pool({**cfg, "image_column": "pixels"})
  pq.write_table(pa.table({"id": ["a", "a"], "image": images[:2]}), tmp_path / "dup.parquet")
  with pytest.raises(ValueError, match="twice"):
    pool_lib.list_pool({**cfg, "path": str(tmp_path / "dup.parquet")})


def test_parquet_needs_pyarrow_with_a_clear_error(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "pyarrow", None)
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
  with pytest.raises(ImportError, match="pip install pyarrow"):
    pool_lib.list_pool({"kind": "parquet", "path": str(tmp_path / "x.parquet"), "name": "p"})


def test_split_pool_is_a_deterministic_partition():
  items = [_item(b"", key=f"k{i:02d}") for i in range(10)]
  shuffled = items[::-1]
  shards = [pool_lib.split_pool(shuffled, i, 3) for i in range(3)]
  assert [i.key for i in shards[0]] == ["k00", "k03", "k06", "k09"]
  assert sorted(i.key for s in shards for i in s) == [i.key for i in items]
  assert pool_lib.split_pool(items, 1, 3) == shards[1]
  with pytest.raises(ValueError):
    pool_lib.split_pool(items, 3, 3)


def test_load_image_returns_rgb_and_original_bytes():
  data = _jpeg((80, 60))
  image, out, fmt = pool_lib.load_image(_item(data), min_side=32, min_pixels=1000)
  assert image.mode == "RGB" and image.size == (80, 60)
  assert out == data and fmt == "jpeg"


@pytest.mark.parametrize("make, cut", [(_jpeg, 2), (_jpeg, 0.5), (_png, 2), (_png, 0.5), (_png, 20)])
def test_truncated_images_are_corrupt(make, cut):
  data = make()
  data = data[:int(len(data) * cut)] if cut < 1 else data[:-cut]
  with pytest.raises(pool_lib.ImageSkip) as e:
    pool_lib.load_image(_item(data, "broken"))
  assert e.value.reason == "corrupt" and e.value.key == "broken"
  assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bad_and_small_images_are_skipped_with_reasons():
  png = bytearray(_png())
  png[40] ^= 0xFF  # flip a byte inside a chunk: CRC mismatch
  for data in (b"", b"not an image at all", bytes(png), b"\x89PNG\r\n\x1a\n" + b"\x00" * 20):
    with pytest.raises(pool_lib.ImageSkip) as e:
      pool_lib.load_image(_item(data))
    assert e.value.reason == "corrupt"
  with pytest.raises(pool_lib.ImageSkip) as e:
    pool_lib.load_image(_item(_png((64, 20))), min_side=32)
  assert e.value.reason == "too_small"
  with pytest.raises(pool_lib.ImageSkip) as e:
    pool_lib.load_image(_item(_png((64, 48))), min_pixels=64 * 48 + 1)
  assert e.value.reason == "too_small"
  with pytest.raises(pool_lib.ImageSkip) as e:
    pool_lib.load_image(_item(_png((64, 48))), max_pixels=1000)
  assert e.value.reason == "too_large"

  def fail():
    raise PermissionError("denied")

  with pytest.raises(pool_lib.ImageSkip) as e:
    pool_lib.load_image(pool_lib.ImageItem("k", "p", "k", fail))
  assert e.value.reason == "unreadable" and "denied" in str(e.value)


def test_load_image_reencodes_only_what_would_look_different():
  # Transparency: composited on white, stored without alpha so the student sees the same pixels.
  image, data, fmt = pool_lib.load_image(_item(_png(mode="RGBA", color=(0, 0, 0, 0))))
  assert fmt == "png" and image.getpixel((0, 0)) == (255, 255, 255)
  assert Image.open(io.BytesIO(data)).mode == "RGB"
  # EXIF orientation 6 (rotate 90 clockwise): pixels are turned and the tag is gone.
  exif = Image.Exif()
  exif[0x0112] = 6
  buf = io.BytesIO()
  Image.new("RGB", (64, 32), (200, 10, 10)).save(buf, format="JPEG", exif=exif.tobytes())
  image, data, fmt = pool_lib.load_image(_item(buf.getvalue()))
  assert image.size == (32, 64) and fmt == "jpeg"
  stored = Image.open(io.BytesIO(data))
  assert stored.size == (32, 64) and stored.getexif().get(0x0112, 1) == 1
  # 16-bit greyscale: scaled to 8 bits instead of clipped to white.
  buf = io.BytesIO()
  Image.fromarray(np.full((40, 40), 32768, np.uint16)).save(buf, format="PNG")
  image, data, _ = pool_lib.load_image(_item(buf.getvalue()))
  assert image.getpixel((0, 0)) == (128, 128, 128)
  assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) == (128, 128, 128)


def test_errors_survive_pickling():
  for err in (pool_lib.ImageSkip("corrupt", "a.png", "bad crc"), cons.NotEnoughOptions(2, 4),
              ParseError("no list", b"\xff garbage")):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
  assert pickle.loads(pickle.dumps(ParseError("x", "text"))).snippet == "text"
