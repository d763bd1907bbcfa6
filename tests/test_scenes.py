"""Procedural scenes (data_gen/scenes.py) and the `scene` oracle teacher (data_gen/teachers/scene.py)."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_gen import scenes
from data_gen.teachers.base import Request, TeacherError
from data_gen.teachers.scene import TEMPLATES, UNANSWERABLE, SceneTeacher, iou
from zwz_jax.records import DIMENSIONS

SMALL = (448, 336)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def norm(text):
  t = re.sub(r"[^\w\s]", " ", str(text).lower()).split()
  return " ".join(str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in t)


def fenced_json(text):
  m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
  return json.loads(m.group(1) if m else text)


def req(task, n=1, **context):
  return Request(images=(), prompt=f"{task} prompt", task=task, n=n, context=context)


def questions_of(obj):
  """(question, dimension, true answer) for every question the oracle writes about `obj`."""
  attr = {"colour": "colour", "structure": "shape", "material": "material", "ocr": "text", "counting": "count",
          "identification": "name"}
  return [(q, d, str(obj[attr[d]])) for d in obj["dimensions"] for q in TEMPLATES[obj["kind"]][d]]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
  root = tmp_path_factory.mktemp("scenes")
  paths = scenes.write_scene_pool(str(root), 3, seed=7, width=SMALL[0], height=SMALL[1])
  return str(root), paths, [scenes.load_metadata(p) for p in paths]


def key_of(path):
  return path.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------


def test_scene_is_deterministic():
  a_img, a_meta = scenes.generate_scene(3, *SMALL)
  b_img, b_meta = scenes.generate_scene(3, *SMALL)
  np.testing.assert_array_equal(np.asarray(a_img), np.asarray(b_img))
  assert a_meta == b_meta
  assert json.loads(json.dumps(a_meta)) == a_meta  # plain JSON types only
  c_img, _ = scenes.generate_scene(4, *SMALL)
  assert not np.array_equal(np.asarray(a_img), np.asarray(c_img))


@pytest.mark.parametrize("size,seeds", [(SMALL, range(8)), ((1344, 1008), range(2))])
def test_objects_in_bounds_disjoint_and_micro(size, seeds):
  w, h = size
  for seed in seeds:
    img, meta = scenes.generate_scene(seed, w, h)
    assert img.size == (w, h) and (meta["width"], meta["height"]) == (w, h) and meta["seed"] == seed
    objs = meta["objects"]
    assert len(objs) >= len(scenes.KINDS)
    assert {o["kind"] for o in objs} == set(scenes.KINDS)  # every dimension has an object
    for o in objs:
      x0, y0, x1, y1 = o["bbox"]
      assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, o
      assert (x1 - x0) * (y1 - y0) < 0.1 * w * h, o
      assert set(o["dimensions"]) <= set(DIMENSIONS)
    for i, a in enumerate(objs):
      for b in objs[i + 1:]:
        assert iou(a["bbox"], b["bbox"]) == 0.0, (a, b)
    if size == (1344, 1008):  # full-size scenes: mostly 0.1-2% of the image
      fracs = [(o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1]) / (w * h) for o in objs]
      assert np.median(fracs) < 0.02 and max(fracs) < 0.06


def test_pixels_match_metadata():
  for seed in range(6):
    img, meta = scenes.generate_scene(seed, *SMALL)
    px = np.asarray(img).astype(int)
    for o in meta["objects"]:
      x0, y0, x1, y1 = o["bbox"]
      region = px[y0:y1, x0:x1]
      if o["kind"] == "shape":
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        assert tuple(px[cy, cx]) == scenes.PALETTE[o["colour"]], o
      if o["kind"] == "group":
        assert len(o["items"]) == o["count"]
        for a, b, c, d in o["items"]:
          assert x0 <= a < c <= x1 and y0 <= b < d <= y1
          assert tuple(px[(b + d) // 2, (a + c) // 2]) == scenes.PALETTE[o["colour"]], o
      if o["kind"] == "icon":
        exact = np.all(region == scenes.PALETTE[o["colour"]], axis=-1).mean()
        assert exact > 0.15, (o, exact)
      if o["kind"] == "text":
        # Rendered: text-coloured strokes spread across the plate, the plate colour around them.
        near = np.abs(region - np.array(scenes.PALETTE[o["colour"]])).sum(-1) < 60
        assert near.sum() >= 5 * len(o["text"]), o
        cols = np.nonzero(near.any(axis=0))[0]
        assert cols.max() - cols.min() > 0.5 * (x1 - x0), o
        assert np.all(region[0, 0] == scenes.PALETTE[o["plate_colour"]])
      if o["kind"] == "texture":
        assert len({tuple(p) for p in region[region.shape[0] // 4: 3 * region.shape[0] // 4].reshape(-1, 3)}) > 1


def test_pool_on_disk_and_metadata_lookup(pool):
  root, paths, metas = pool
  assert [key_of(p) for p in paths] == ["scene_00000.png", "scene_00001.png", "scene_00002.png"]
  _, again = scenes.generate_scene(metas[1]["seed"], *SMALL)
  assert again == metas[1]
  assert scenes.load_metadata("scene_00001.png", root) == metas[1]
  assert scenes.load_metadata("pool/scene_00001.png", root) == metas[1]
  with pytest.raises(FileNotFoundError, match="scene_00099.png"):
    scenes.load_metadata("scene_00099.png", root)


def test_data_gen_never_imports_jax():
  code = "import sys, data_gen.scenes, data_gen.teachers.scene; assert 'jax' not in sys.modules, 'jax imported'"
  subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------------------
# Scene teacher
# ----------------------------------------------------------------------------------------------


def test_proposals_hold_objects_and_decoys(pool):
  root, paths, metas = pool
  teacher = SceneTeacher(root)
  w, h = SMALL
  for path, meta in zip(paths, metas):
    out = teacher.generate([req("propose", image_key=key_of(path), image_size=(w, h))])[0][0]
    assert out.startswith("```json")
    props = fenced_json(out)
    assert all(set(p) == {"bbox_2d", "label", "score"} for p in props)
    assert len(props) == len(meta["objects"]) + 3
    true = [o["bbox"] for o in meta["objects"]]
    for o in meta["objects"]:
      match = [p for p in props if p["bbox_2d"] == o["bbox"]]
      assert match and match[0]["score"] >= 0.8 and match[0]["label"] == o["label"]
    assert any(p["score"] < 0.75 for p in props)
    assert any((p["bbox_2d"][2] - p["bbox_2d"][0]) * (p["bbox_2d"][3] - p["bbox_2d"][1]) > 0.1 * w * h for p in props)
    assert any(p["bbox_2d"] not in true and max(iou(p["bbox_2d"], t) for t in true) > 0.8 for p in props)
    # Boxes are in pixels of the image the teacher is shown (a downsized view), not of the full image.
    view = Image.new("RGB", (w // 2, h // 2))
    half = teacher.generate([Request(images=(view,), prompt="", task="propose",
                                     context={"image_key": key_of(path), "image_size": (w, h)})])[0][0]
    half = fenced_json(half)
    b = meta["objects"][0]["bbox"]
    assert [round(c / 2) for c in b] in [p["bbox_2d"] for p in half]


def test_questions_check_and_exact_answers(pool):
  root, paths, metas = pool
  teacher = SceneTeacher(root, answer_noise=0.0)
  unanswerable, answerable = 0, 0
  for path, meta in zip(paths, metas):
    key = key_of(path)
    for o in meta["objects"]:
      qs = fenced_json(teacher.generate([req("questions", image_key=key, crop_box=o["bbox"], label=o["label"],
                                             num_questions=3)])[0][0])
      assert len(qs) == 3 and all(set(q) == {"question", "dimension"} for q in qs)
      for q in qs:
        assert q["dimension"] in DIMENSIONS
        verdict = teacher.generate([req("check", image_key=key, crop_box=o["bbox"], **q)])[0]
        if q["question"] in [u for u, _ in UNANSWERABLE]:
          unanswerable += 1
          assert verdict == ["no"]
        else:
          answerable += 1
          assert verdict == ["yes"] and q["dimension"] in o["dimensions"]
      # Every question the oracle writes is answered from the metadata, whatever its surface form.
      crop = [o["bbox"][0] - 3, o["bbox"][1] - 3, o["bbox"][2] + 3, o["bbox"][3] + 3]  # a padded crop
      reqs = [req("answer", n=8, image_key=key, crop_box=crop, question=q, dimension=d) for q, d, _ in questions_of(o)]
      for (q, d, truth), answers in zip(questions_of(o), teacher.generate(reqs)):
        assert [norm(a) for a in answers] == [norm(truth)] * 8, (q, truth, answers)
  assert unanswerable > 0 and answerable > unanswerable


def test_answer_noise_rate_and_determinism(pool):
  root, paths, metas = pool
  teacher = SceneTeacher(root, answer_noise=0.3, seed=1)
  reqs, truths = [], []
  for path, meta in zip(paths, metas):
    for o in meta["objects"]:
      for q, d, truth in questions_of(o):
        reqs.append(req("answer", n=8, image_key=key_of(path), crop_box=o["bbox"], question=q, dimension=d))
        truths.append(truth)
  outs = teacher.generate(reqs)
  wrong = [norm(a) != norm(t) for answers, t in zip(outs, truths) for a in answers]
  assert len(wrong) > 500
  assert abs(np.mean(wrong) - 0.3) < 0.06, np.mean(wrong)
  assert any(len({norm(a) for a in answers}) > 1 for answers in outs)  # samples differ
  assert any(a != norm(a) for answers in outs for a in answers)  # surface forms vary
  # Reproducible, and independent of batching and order.
  assert SceneTeacher(root, answer_noise=0.3, seed=1).generate(reqs[::-1]) == outs[::-1]
  assert teacher.generate(reqs[:1]) == outs[:1]
  assert SceneTeacher(root, answer_noise=0.3, seed=2).generate(reqs) != outs


def test_unanswerable_question_gets_no(pool):
  root, paths, metas = pool
  teacher = SceneTeacher(root)
  for o in metas[0]["objects"]:
    for q, d in UNANSWERABLE:
      assert teacher.generate([req("check", image_key=key_of(paths[0]), crop_box=o["bbox"], question=q,
                                   dimension=d)]) == [["no"]]


def test_distractors_never_contain_the_answer(pool):
  root, paths, metas = pool
  teacher = SceneTeacher(root)
  for path, meta in zip(paths, metas):
    for o in meta["objects"]:
      for q, d, truth in questions_of(o):
        for given in (truth, truth.capitalize() + ".", "7"):
          out = teacher.generate([req("distractors", n=2, image_key=key_of(path), crop_box=o["bbox"], question=q,
                                      dimension=d, answer=given, num=3)])[0]
          for text in out:
            ds = json.loads(text)
            assert len(ds) == 3 and all(isinstance(x, str) and x for x in ds)
            normed = [norm(x) for x in ds]
            assert len(set(normed)) == 3
            assert norm(given) not in normed and norm(truth) not in normed, (q, given, ds)


def test_student_accuracy(pool):
  root, paths, metas = pool
  teacher = SceneTeacher(root, student_accuracy=0.7)
  correct, total = 0, 0
  for path, meta in zip(paths, metas):
    for o in meta["objects"]:
      for q, d, truth in questions_of(o):
        ds = json.loads(teacher.generate([req("distractors", image_key=key_of(path), crop_box=o["bbox"], question=q,
                                              dimension=d, answer=truth, num=3)])[0][0])
        options = ds[:1] + [truth] + ds[1:]
        outs = teacher.generate([req("student", n=4, image_key=key_of(path), bbox=o["bbox"], question=q,
                                     options=options, dimension=d)])[0]
        for out in outs:
          assert re.fullmatch(r"[ABCD]\.?", out), out
          correct += out[0] == "B"
          total += 1
  assert total > 300
  assert abs(correct / total - 0.7) < 0.07, correct / total


def test_unknown_key_and_empty_region_raise(pool):
  root, paths, metas = pool
  teacher = SceneTeacher.from_config({"root": root})
  assert teacher.name == "scene" and teacher.answer_noise == 0.1 and teacher.student_accuracy == 0.5
  with pytest.raises(TeacherError, match="no_such_scene.png"):
    teacher.generate([req("propose", image_key="no_such_scene.png", image_size=SMALL)])
  with pytest.raises(TeacherError, match=key_of(paths[0])):
    teacher.generate([req("answer", image_key=key_of(paths[0]), crop_box=[0, 0, 2, 2], question="What is this object?",
                          dimension="identification")])
  with pytest.raises(TeacherError, match="crop_box"):
    teacher.generate([req("check", image_key=key_of(paths[0]), question="What is this object?")])
