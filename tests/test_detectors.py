"""Text-prompted detectors for region proposals (propose.detector): each model from a tiny random
checkpoint through the pipeline, boxes mapped back to full-image pixels from known model outputs,
names not found counted, and configuration errors that name the key."""
import types

from PIL import Image
import pytest
import torch

from data_gen import detectors, pipeline, prompts, scenes
from data_gen.boxes import Box
from data_gen.detectors import hf
from data_gen.teachers.base import Request
from data_gen.teachers.scene import SceneTeacher
from tests.test_gen_data import datagen_config, run_pipeline
from tests.tiny_detectors import KINDS, model_and_tokenizer, save_tiny_detector


@pytest.fixture(scope="module")
def scene_pool(tmp_path_factory):
  root = tmp_path_factory.mktemp("pool")
  scenes.write_scene_pool(str(root), 2, seed=3, width=896, height=672)
  return root


@pytest.mark.parametrize("kind", KINDS)
def test_model_detector_writes_valid_records(kind, scene_pool, tmp_path):
  """A tiny random checkpoint, loaded from its directory by the config, boxes every name the teacher
  lists (threshold 0: nothing is 'not found'); its random boxes pass the widened filters, and the
  records written from them are valid and labelled with those names."""
  ckpt = save_tiny_detector(kind, str(tmp_path / kind))
  cfg = datagen_config(tmp_path / "out", scene_pool, f"propose.detector={kind}", f"detector.path={ckpt}",
                       "detector.threshold=0.0", "detector.batch_size=3", "propose.min_score=0.0",
                       "propose.max_area_frac=1.0")
  teacher = SceneTeacher(str(scene_pool))
  manifest, recs = run_pipeline(cfg, {"scene": teacher})
  stages = manifest["stages"]
  assert stages["object_names"] == stages["proposals"] > 0 and stages["object_names_not_found"] == 0
  assert "images_failed/detector_error" not in stages
  assert manifest["num_records"] == len(recs) > 0
  for r in recs:
    r.validate()
    request = Request(images=(), prompt="", task="objects", context={"image_key": r.source["path"]})
    assert r.teacher["region_label"] in prompts.parse_names(teacher.generate([request])[0][0], 16)


# ---- known model outputs -> full-image pixels ----------------------------------------------------

# name -> (best query, its logit, its box as the model writes it); other queries score lower, and a
# name not in the table scores sigmoid(-6) < threshold everywhere: not found.
KNOWN = {"cup": (2, 3.0, (0.5, 0.25, 0.1, 0.05)), "key": (0, 1.5, (0.2, 0.7, 0.3, 0.9))}
QUERIES = 4


class _Known(torch.nn.Module):
  """Stands in for a detection model: outputs from KNOWN by the text of each row it is given."""

  def __init__(self, real, tokenizer, kind):
    super().__init__()
    self.config, self.tokenizer, self.kind = real.config, tokenizer, kind
    self.weight = torch.nn.Parameter(torch.zeros(1))
    self.texts, self.vision_calls = [], 0

  def _rows(self, input_ids):
    texts = [t.strip().rstrip(".").strip() for t in self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)]
    self.texts.append(texts)
    logits, boxes = torch.full((len(texts), QUERIES), -6.0), torch.full((len(texts), QUERIES, 4), 0.5)
    for i, t in enumerate(texts):
      if t in KNOWN:
        q, logit, box = KNOWN[t]
        logits[i, :] = logit - 1.0
        logits[i, q], boxes[i, q] = logit, torch.tensor(box)
    return logits, boxes

  def get_vision_features(self, pixel_values):
    self.vision_calls += 1
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput
    return Sam3VisionEncoderOutput(fpn_hidden_states=(pixel_values[:, :1, :2, :2],))

  def forward(self, input_ids, attention_mask=None, **inputs):
    logits, boxes = self._rows(input_ids)
    if self.kind == "owlv2":  # one image, the names as its queries: (1, queries, names)
      assert inputs["pixel_values"].shape[0] == 1
      return types.SimpleNamespace(logits=logits.T[None], pred_boxes=boxes[:1])  # boxes: one image
    if self.kind == "grounding_dino":  # a row per name; the best text token counts
      tokens = torch.full((*logits.shape, 5), -9.0)
      tokens[..., 3] = logits
      return types.SimpleNamespace(logits=tokens, pred_boxes=boxes)
    fpn = inputs["vision_embeds"].fpn_hidden_states[0]
    assert fpn.shape[0] == len(input_ids)  # the one encoded image, expanded over the names
    # SAM3: score = sigmoid(query) * sigmoid(presence); presence logit 2 for every row.
    return types.SimpleNamespace(pred_logits=logits, pred_boxes=boxes, presence_logits=torch.full((len(logits), 1), 2.0))


def _expected(kind, name, w, h):
  q, logit, box = KNOWN[name]
  score = torch.sigmoid(torch.tensor(logit)).item()
  if kind == "sam3":  # x0, y0, x1, y1 fractions of the image (resized, not padded, to a square)
    return [box[0] * w, box[1] * h, box[2] * w, box[3] * h], score * torch.sigmoid(torch.tensor(2.0)).item()
  cx, cy, bw, bh = box
  x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
  if kind == "owlv2":  # fractions of the image padded (bottom / right) to a max(w, h) square
    s = max(w, h)
    return [x0 * s, y0 * s, x1 * s, y1 * s], score
  return [x0 * w, y0 * h, x1 * w, y1 * h], score  # grounding_dino: fractions of the image


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(1344, 1008), (630, 945)])
def test_boxes_map_back_to_full_image_pixels(kind, size):
  real, tok, image_processor = model_and_tokenizer(kind)
  cls = {"sam3": hf.Sam3Detector, "owlv2": hf.Owlv2Detector, "grounding_dino": hf.GroundingDinoDetector}[kind]
  extra = {"preprocess": {"size": {"height": 56, "width": 56}}} if kind == "sam3" else {}
  known = _Known(real, tok, kind)
  det = cls(known, tok, image_processor, batch_size=2, threshold=0.3, **extra)
  names = ["Cup", "ghost", "key"]
  found = det.detect(Image.new("RGB", size, (90, 120, 40)), [n.lower() for n in names], {"image_key": "x.png"})
  assert found[1] is None  # not found
  for name, box in ((names[0], found[0]), (names[2], found[2])):
    xyxy, score = _expected(kind, name.lower(), *size)
    assert box.label == name.lower() and box.score == pytest.approx(score, rel=1e-6)
    assert box.as_list() == pytest.approx(xyxy, rel=1e-6, abs=1e-4)
  # batch_size 2: two model calls of names in order; SAM3 encodes the image once for both.
  assert known.texts == [["cup", "ghost"], ["key"]]
  assert known.vision_calls == (1 if kind == "sam3" else 0)


# ---- the scene oracle, custom functions, errors --------------------------------------------------


def test_scene_detector_boxes_are_the_scene_objects(scene_pool, tmp_path):
  cfg = datagen_config(tmp_path / "out", scene_pool, "propose.detector=scene", "propose.min_score=0.0")
  manifest, recs = run_pipeline(cfg, {"scene": SceneTeacher(str(scene_pool))})
  stages = manifest["stages"]
  assert stages["object_names_not_found"] == 2  # one absent name per image
  assert recs and "regions_dropped/low_score" not in stages
  for r in recs:
    meta = scenes.load_metadata(r.source["path"], str(scene_pool))
    obj = next(o for o in meta["objects"] if o["label"] == r.teacher["region_label"])
    assert list(r.bbox) == pytest.approx(obj["bbox"], abs=0.005)  # records round boxes to 0.01 px


def known_function(image, names):
  """A custom detector: a box at a fixed place for 'corner', nothing for any other name."""
  return [{"x0": 10.0, "y0": 10.0, "x1": 50.0, "y1": 50.0, "score": 0.99} if n == "corner" else None
          for n in names]


class _Naming(SceneTeacher):
  """The scene oracle, but its object list is `reply` (per image key)."""

  def __init__(self, root, reply):
    super().__init__(root)
    self.reply = reply

  def _objects(self, r, key, meta):
    return [self.reply(key)] * r.n


def test_custom_function_detector_and_bad_replies(scene_pool, tmp_path):
  replies = {"scene_00000.png": '["corner", "moon"]', "scene_00001.png": "I see nothing I can name."}
  cfg = datagen_config(tmp_path / "out", scene_pool, "propose.detector=tests.test_detectors:known_function")
  manifest, _ = run_pipeline(cfg, {"scene": _Naming(str(scene_pool), replies.get)})
  stages = manifest["stages"]
  assert stages["object_names"] == 2 and stages["object_names_not_found"] == 1 and stages["proposals"] == 1
  assert stages["errors/unparsable_objects"] == 1 and stages["images"] == 2
  det = detectors.build(cfg)
  assert det.detect(Image.new("RGB", (64, 64)), ["corner"], {}) == [Box(10.0, 10.0, 50.0, 50.0, "corner", 0.99)]
  # A detector that fails on an image is counted; the job goes on.
  broken = datagen_config(tmp_path / "broken", scene_pool, "propose.detector=tests.test_detectors:wrong_length")
  stages = run_pipeline(broken, {"scene": SceneTeacher(str(scene_pool))})[0]["stages"]
  assert stages["images_failed/detector_error"] == 2


def wrong_length(image, names):
  return []


@pytest.mark.parametrize("override,message", [
    ("propose.detector=nope:x", "config propose.detector='nope:x': cannot import"),
    ("propose.detector=yolo", "config propose.detector='yolo' is not one of"),
    ("propose.detector=sam3", "propose.detector='sam3' needs detector.path, a local checkpoint directory"),
])
def test_config_errors_name_the_key(override, message, scene_pool, tmp_path):
  with pytest.raises(ValueError, match=message):
    pipeline.Pipeline(datagen_config(tmp_path, scene_pool, override), {})


def test_a_checkpoint_of_another_model_is_refused(scene_pool, tmp_path):
  ckpt = save_tiny_detector("owlv2", str(tmp_path / "owl"))
  with pytest.raises(ValueError, match="holds a 'owlv2' checkpoint, not sam3"):
    detectors.build(datagen_config(tmp_path, scene_pool, "propose.detector=sam3", f"detector.path={ckpt}"))


def test_sam3_reads_the_hubs_sam3_video_folder(scene_pool, tmp_path):
  """facebook/sam3 on the hub is a sam3_video folder; the detector built from it finds what the one
  built from the plain image model finds."""
  image = Image.open(scene_pool / "scene_00000.png")
  found = []
  for name, video in (("plain", False), ("video", True)):
    ckpt = save_tiny_detector("sam3", str(tmp_path / name), sam3_video=video)
    det = detectors.build(datagen_config(tmp_path, scene_pool, "propose.detector=sam3", f"detector.path={ckpt}",
                                         "detector.threshold=0.0"))
    found.append(det.detect(image, ["blue key", "white sign"], {"image_key": "scene_00000.png"}))
  assert found[0] == found[1] and all(b is not None for b in found[0])

