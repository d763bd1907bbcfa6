"""data_gen end to end: scene teacher, resume after kill -9, sharded workers + merge, bad input."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from data_gen import pipeline, scenes, writer
from data_gen.teachers.base import Request, Teacher
from data_gen.teachers.scene import SceneTeacher
from tests.shared import CONFIGS, KILL_AT, LAUNCH, shared_dir
from zwz_jax import records
from zwz_jax.config import load_config

# As the authors generate: the teacher names the objects and a detector boxes them (the scene
# oracle's), and the answers are grouped by the teacher (by normalised form), so resume and merge are
# checked with both in the loop.
SMALL = ["--config.scenes.num_images=6", "--config.scenes.width=896", "--config.scenes.height=672",
         "--config.write.images_per_shard=2", "--config.answers.grouper=llm", "--config.propose.detector=scene"]


def gen(out_dir, *extra, check=True, kill_at=""):
  harness = [f"{KILL_AT}", kill_at] if kill_at else []  # a SIGKILL at that point
  proc = subprocess.run([sys.executable, *harness, f"{LAUNCH}/gen_data.py", f"--config={CONFIGS}/datagen_tiny.py",
                         f"--config.out_dir={out_dir}", *SMALL, *extra],
                        capture_output=True, text=True, check=False, env={**os.environ, "TQDM_DISABLE": "1"})
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def read_all(out_dir):
  from array_record.python import array_record_module
  out = []
  for path in records.shard_paths(str(out_dir)):
    reader = array_record_module.ArrayRecordReader(path)
    out += [records.decode(b, where=path) for b in reader.read_all()]
    reader.close()
  return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  return pathlib.Path(shared_dir(tmp_path_factory, "gen_data_reference", gen))


@pytest.mark.xdist_group("gen_data_reference")  # shares the fixture run: one worker
def test_scene_run_writes_valid_records(reference_run):
  manifest = records.read_manifest(str(reference_run))
  recs = read_all(reference_run)
  assert len(recs) == manifest["num_records"] > 0
  assert manifest["num_images"] == 6
  assert sum(manifest["dimensions"].values()) == len(recs)
  assert len({r.id for r in recs}) == len(recs)
  for r in recs:
    assert (r.bbox[2] - r.bbox[0]) * (r.bbox[3] - r.bbox[1]) < 0.10 * r.width * r.height
    assert len(r.options) == 4 and r.teacher["agreement"] >= 6 / 8
  stages = manifest["stages"]
  assert stages["grouped_questions"] > 0 and "errors/unparsable_groups" not in stages
  assert {r.teacher["grouper"] for r in recs} == {"llm"}
  # One name per image is not in the scene: counted, not fatal; low detector scores are dropped.
  assert stages["object_names_not_found"] == 6 and stages["object_names"] == stages["proposals"] + 6
  assert stages["regions_dropped/low_score"] > 0 and "errors/unparsable_proposals" not in stages
  assert stages["questions_dropped/check"] > 0


@pytest.mark.xdist_group("gen_data_reference")  # shares the fixture run: one worker
def test_resume_after_kill_equals_uninterrupted_run(reference_run, tmp_path):
  killed = gen(tmp_path, check=False, kill_at="gen_images=3")
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert not (tmp_path / records.MANIFEST).exists()
  gen(tmp_path)
  assert [r.id for r in read_all(tmp_path)] == [r.id for r in read_all(reference_run)]
  a, b = records.read_manifest(str(tmp_path)), records.read_manifest(str(reference_run))
  assert a["stages"] == b["stages"] and a["shards"] == b["shards"]


@pytest.mark.xdist_group("gen_data_reference")  # shares the fixture run: one worker
def test_two_workers_merged_equal_one_run(reference_run, tmp_path):
  for i in range(2):
    gen(tmp_path, f"--shard_index={i}", "--num_shards=2")
  incomplete = gen(tmp_path, "--merge", "--num_shards=3", check=False)
  assert incomplete.returncode != 0 and "no finished chunks from workers [2]" in incomplete.stderr
  gen(tmp_path, "--merge", "--num_shards=2")
  merged, single = records.read_manifest(str(tmp_path)), records.read_manifest(str(reference_run))
  assert sorted(r.id for r in read_all(tmp_path)) == sorted(r.id for r in read_all(reference_run))
  assert merged["stages"] == single["stages"] and merged["dimensions"] == single["dimensions"]


def test_does_not_import_jax(tmp_path):
  code = (f"import sys, runpy; sys.argv = ['gen_data', '--config={CONFIGS}/datagen_tiny.py', "
          f"'--config.out_dir={tmp_path}', '--config.scenes.num_images=1', '--config.scenes.width=448', "
          f"'--config.scenes.height=448']; runpy.run_path('{LAUNCH}/gen_data.py', run_name='__main__'); "
          "assert 'jax' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# ---- in-process runs: custom pools and teachers --------------------------------------------------

def datagen_config(out_dir, pool_dir, *overrides):
  cfg = load_config(f"{CONFIGS}/datagen_tiny.py", [f"out_dir={out_dir}", f"pool.path={pool_dir}",
                                                 "write.images_per_shard=2", *overrides])
  cfg.teachers.scene.root = str(pool_dir)
  return cfg


@pytest.fixture(scope="module")
def scene_pool(tmp_path_factory):
  root = tmp_path_factory.mktemp("pool")
  scenes.write_scene_pool(str(root), 3, seed=1, width=896, height=672)
  return root


def run_pipeline(cfg, teachers):
  pipeline.run_worker(cfg, teachers, shard_index=0, num_shards=1)
  return writer.merge(cfg.out_dir, cfg.to_dict()), read_all(cfg.out_dir)


def test_consensus_answers_match_scene_metadata(scene_pool, tmp_path):
  cfg = datagen_config(tmp_path, scene_pool)
  manifest, recs = run_pipeline(cfg, {"scene": SceneTeacher.from_config(cfg.teachers.scene)})
  oracle = SceneTeacher(str(scene_pool), answer_noise=0.0)
  truth = oracle.generate([Request(images=(), prompt="", task="answer", context={
      "image_key": r.source["path"], "crop_box": list(r.bbox), "question": r.question, "dimension": r.dimension})
      for r in recs])
  from zwz_jax.answers import normalise_answer
  right = sum(normalise_answer(r.answer_text) == normalise_answer(t[0]) for r, t in zip(recs, truth))
  # The oracle's own boxes come with decoys that the filters must drop.
  assert manifest["stages"]["regions_dropped/low_score"] > 0 and manifest["stages"]["regions_dropped/too_large"] > 0
  # 10% noisy samples and a 6-of-8 majority: a wrong majority needs 6 wrong votes out of 8.
  assert len(recs) > 30 and right == len(recs), (right, len(recs))


class _Faulty(Teacher):
  """Wraps the scene teacher and corrupts its output for chosen (task, image) pairs."""
  name = "faulty"

  def __init__(self, inner, faults):
    self.inner, self.faults = inner, faults

  def generate(self, requests):
    out = self.inner.generate(requests)
    return [[self.faults[(r.task, r.context["image_key"])](t) for t in o]
            if (r.task, r.context["image_key"]) in self.faults else o for r, o in zip(requests, out)]


def test_bad_input_is_counted_and_the_job_continues(scene_pool, tmp_path):
  import shutil
  from PIL import Image
  pool = tmp_path / "pool"
  shutil.copytree(scene_pool, pool)
  (pool / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
  data = (pool / "scene_00000.png").read_bytes()
  (pool / "truncated.png").write_bytes(data[:len(data) // 2])
  Image.new("RGB", (100, 80)).save(pool / "tiny.png")
  cfg = datagen_config(tmp_path / "out", pool)
  inner = SceneTeacher(str(pool), answer_noise=0.1)
  zero_area = '[{"bbox_2d": [50, 50, 50, 90], "label": "line", "score": 0.99}]'
  teacher = _Faulty(inner, {
      ("propose", "scene_00000.png"): lambda t: t[:-5] + ", " + zero_area[1:-1] + "]\n```",  # + a zero-area box
      ("propose", "scene_00001.png"): lambda t: "I cannot see any objects, sorry.",  # unparsable
      ("questions", "scene_00002.png"): lambda t: "\udcff\udcfe not utf-8 {",  # non-UTF8 garbage
  })
  manifest, recs = run_pipeline(cfg, {"scene": teacher})
  s = manifest["stages"]
  assert s["images"] == 6 and manifest["num_images"] == 6
  assert s["images_skipped/corrupt"] == 2 and s["images_skipped/too_small"] == 1
  assert s["errors/unparsable_proposals"] == 1
  assert s["errors/unparsable_questions"] >= 1
  assert s["regions_dropped/zero_area"] == 1
  assert recs and {r.source["path"] for r in recs} <= {"scene_00000.png", "scene_00002.png"}


def test_difficulty_filter_drops_what_the_student_already_knows(scene_pool, tmp_path):
  runs = {}
  for acc in (0.0, 1.0):
    cfg = datagen_config(tmp_path / str(acc), scene_pool, "difficulty.enabled=True", "difficulty.student=student")
    student = SceneTeacher(str(scene_pool), student_accuracy=acc, name="student")
    runs[acc] = run_pipeline(cfg, {"scene": SceneTeacher.from_config(cfg.teachers.scene), "student": student})
  never_right, always_right = runs[0.0][0]["stages"], runs[1.0][0]["stages"]
  assert never_right.get("questions_dropped/too_easy", 0) == 0 and runs[0.0][1]
  assert always_right["questions_dropped/too_easy"] == len(runs[0.0][1]) and not runs[1.0][1]


def test_hf_teacher_end_to_end(scene_pool, tmp_path):
  """A tiny random transformers Qwen2.5-VL answers the crops (greedy: 8 identical votes)."""
  from data_gen.teachers.hf import HFTeacher
  from tests.tiny_hf_vlm import save_tiny_qwen2_5_vl
  ckpt = tmp_path / "tiny_vlm"
  save_tiny_qwen2_5_vl(str(ckpt))
  cfg = datagen_config(tmp_path / "out", scene_pool, "answers.teachers=('tiny',)", "answers.temperature=0.0",
                "propose.max_regions=2", "questions.per_crop=1")
  tiny = HFTeacher.from_config({"path": str(ckpt), "name": "tiny", "batch_size": 4, "max_new_tokens": 4})
  manifest, recs = run_pipeline(cfg, {"scene": SceneTeacher.from_config(cfg.teachers.scene), "tiny": tiny})
  assert manifest["num_records"] == len(recs) > 0
  for r in recs:
    assert r.teacher["names"] == ["tiny"] and r.teacher["agreement"] == 1.0


class _Grouper(Teacher):
  """Answers only the grouping task: reply(request) -> text."""
  name = "grouper"

  def __init__(self, reply):
    self.reply = reply

  def generate(self, requests):
    assert {r.task for r in requests} == {"group"} and not any(r.images for r in requests)
    return [[self.reply(r)] for r in requests]


def test_llm_grouper_in_the_pipeline(scene_pool, tmp_path):
  """answers.grouper=llm asks its teacher about every question with more than one distinct answer;
  a reply it cannot read is counted in the manifest and that question is voted by the rules; one
  that merges everything makes every such question unanimous."""
  rules = run_pipeline(datagen_config(tmp_path / "rules", scene_pool), {"scene": SceneTeacher(str(scene_pool))})
  llm = lambda name, reply: run_pipeline(datagen_config(tmp_path / name, scene_pool, "answers.grouper=llm",
                                         "answers.grouper_teacher=llm"),
                                 {"scene": SceneTeacher(str(scene_pool)), "llm": _Grouper(reply)})
  broken = llm("broken", lambda r: "I would rather not.")
  stages = broken[0]["stages"]
  assert stages["grouped_questions"] > 0 and stages["errors/unparsable_groups"] == stages["grouped_questions"]
  assert [r.id for r in broken[1]] == [r.id for r in rules[1]]  # the rules decided every vote
  # All of a question's answers in one group: every asked question is unanimous, so the vote keeps
  # what the rules kept and more (a question with failed samples can still fall short of 6).
  merged = llm("merged", lambda r: json.dumps([list(range(1, len(r.context["answers"]) + 1))]))
  assert "errors/unparsable_groups" not in merged[0]["stages"]
  assert {r.id for r in rules[1]} < {r.id for r in merged[1]}
  assert all(len(r.teacher["votes"]) == 1 for r in merged[1])
  with pytest.raises(ValueError, match="answers.grouper='meaning' is not one of"):
    pipeline.Pipeline(datagen_config(tmp_path / "c", scene_pool, "answers.grouper=meaning"), {})
  with pytest.raises(KeyError, match="teacher 'nobody'"):
    pipeline.Pipeline(datagen_config(tmp_path / "d", scene_pool, "answers.grouper=llm", "answers.grouper_teacher=nobody"),
                      {"scene": SceneTeacher(str(scene_pool))})


def test_images_in_flight_do_not_change_the_output(scene_pool, tmp_path):
  one = run_pipeline(datagen_config(tmp_path / "a", scene_pool), {"scene": SceneTeacher(str(scene_pool))})
  many = run_pipeline(datagen_config(tmp_path / "b", scene_pool, "write.images_in_flight=3"), {"scene": SceneTeacher(str(scene_pool))})
  assert [r.id for r in one[1]] == [r.id for r in many[1]]
  assert one[0]["stages"] == many[0]["stages"]


def test_open_answers_are_the_multiple_choice_answers_without_options(scene_pool, tmp_path):
  """mc.num_options=0 writes the same verified questions with the consensus answer as text; the
  difficulty filter then judges the student's open answers with the evaluation judge (zwz_jax.answers)."""
  mc = run_pipeline(datagen_config(tmp_path / "mc", scene_pool), {"scene": SceneTeacher.from_config(datagen_config(
      tmp_path / "mc", scene_pool).teachers.scene)})[1]
  cfg = datagen_config(tmp_path / "open", scene_pool, "mc.num_options=0")
  open_recs = run_pipeline(cfg, {"scene": SceneTeacher.from_config(cfg.teachers.scene)})[1]
  assert open_recs and all(r.options == () and r.answer == r.answer_text for r in open_recs)
  assert {(r.id, r.answer_text) for r in open_recs} == {(r.id, r.answer_text) for r in mc}
  for acc, kept in ((0.0, len(open_recs)), (1.0, 0)):
    cfg = datagen_config(tmp_path / f"d{acc}", scene_pool, "mc.num_options=0", "difficulty.enabled=True",
                  "difficulty.student=student")
    student = SceneTeacher(str(scene_pool), student_accuracy=acc, name="student")
    assert len(run_pipeline(cfg, {"scene": SceneTeacher.from_config(cfg.teachers.scene), "student": student})[1]) == kept


def test_scene_options_reach_the_generated_pool(tmp_path):
  """scenes.kinds / num_objects / size_fraction shape the pool launch/gen_data.py draws."""
  import subprocess
  import sys
  out = tmp_path / "run"
  r = subprocess.run([sys.executable, f"{LAUNCH}/gen_data.py", f"--config.out_dir={out}", "--config.scenes.num_images=3",
                      "--config.scenes.width=448", "--config.scenes.height=336", "--config.scenes.kinds=('icon',)",
                      "--config.scenes.num_objects=(2,2)"], capture_output=True, text=True, check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  metas = [scenes.load_metadata(str(p)) for p in sorted((out / "scene_pool").glob("*.png"))]
  assert len(metas) == 3
  assert all(m["width"] == 448 and [o["kind"] for o in m["objects"]] == ["icon", "icon"] for m in metas)
