"""`scene` teacher: an oracle that answers every task from a procedural scene's metadata.

It writes the same text a real teacher is asked for (Qwen-style grounding JSON, question lists,
yes/no, short answers, distractor lists, option letters), with controlled imperfections, so the
pipeline's parsers, filters and consensus run for real on a CPU with no model:
  propose     all true objects plus three decoys: a low-confidence box, a jittered duplicate of a
              true box, and a box over 10% of the image;
  objects     the labels of the objects that appear once, plus a name that is not in the scene
              (for the detector not to find);
  questions   sometimes one question about something outside the crop, for the checker to drop;
  answer      a wrong but plausible answer with probability `answer_noise`, and varied surface forms
              ("Blue.", "three") for answer normalisation;
  student     the right letter with probability `student_accuracy`.
`SceneDetector` is the same oracle as a text-prompted detector (propose.detector=scene).
Every random choice is a hash of (seed, task, request content, sample index): reproducible, the same
in any batch order, and different across the n samples of one request.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any, Mapping, Sequence

from data_gen import scenes
from data_gen.boxes import Box
from data_gen.detectors import Detector, DetectorError
from data_gen.teachers.base import Request, Teacher, TeacherError

# Per kind of object and dimension, the questions the oracle writes and recognises; the attribute
# of the object that answers them is _ATTRIBUTE[dimension].
TEMPLATES = {
    "shape": {
        "colour": ("What colour is the shape?", "What is the colour of the geometric shape?",
                   "Which colour is the shape filled with?"),
        "structure": ("What shape is the object?", "What geometric shape is drawn here?",
                      "Which geometric figure is this object?"),
    },
    "texture": {
        "material": ("What material or surface pattern does the shape have?", "What texture covers the shape?",
                     "Which pattern fills the shape?"),
        "structure": ("What is the outline shape of the textured object?",
                      "What geometric shape is the textured patch?", "What shape is the patterned object?"),
    },
    "text": {
        "ocr": ("What text is written on the sign?", "What does the sign say?",
                "Read the characters on the small sign."),
        "colour": ("What colour is the text on the sign?", "In what colour are the letters on the sign written?",
                   "What is the colour of the characters on the sign?"),
    },
    "group": {
        "counting": ("How many small items are in the group?", "How many identical items are there in the cluster?",
                     "Count the small items in the group. How many are there?"),
        "colour": ("What colour are the small items in the group?", "What is the colour of the items in the cluster?",
                   "Which colour do the grouped items have?"),
        "structure": ("What shape are the small items in the group?",
                      "What geometric shape do the items in the cluster have?", "Which shape are the grouped items?"),
    },
    "icon": {
        "identification": ("What object is shown?", "What is this object?", "Which everyday object is drawn here?"),
        "colour": ("What colour is the object?", "What is the colour of the drawn object?",
                   "Which colour is the object painted in?"),
    },
}
# About things that are never in a scene: the checker must answer "no".
UNANSWERABLE = (
    ("What is written on the license plate of the car?", "ocr"),
    ("How many people are standing behind the object?", "counting"),
    ("What colour is the bird sitting on the roof?", "colour"),
    ("What is the animal next to the object holding?", "identification"),
    ("What is the table under the object made of?", "material"),
    ("What shape is the window of the building on the left?", "structure"),
)
_ATTRIBUTE = {"colour": "colour", "structure": "shape", "material": "material", "ocr": "text",
              "counting": "count", "identification": "name"}
_ICON_EXTRAS = ("spoon", "bottle", "clock", "umbrella", "lamp", "bell", "chair", "kite")
_MATERIAL_EXTRAS = ("metal", "glass", "woven", "marble")
_SIMILAR = {"O": "0", "0": "O", "I": "1", "1": "I", "S": "5", "5": "S", "B": "8", "8": "B", "E": "F", "F": "E",
            "C": "G", "G": "C", "Z": "2", "2": "Z", "A": "4", "4": "A", "T": "7", "7": "T", "N": "M", "M": "N"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")
UNANSWERABLE_RATE = 0.25  # share of `questions` requests that carry one unanswerable question
_SURFACE_RATE = 0.2  # share of answers written in another surface form
_REQUIRED = {"propose": (), "objects": (), "questions": ("crop_box",), "check": ("crop_box", "question"),
             "answer": ("crop_box", "question"), "distractors": ("crop_box", "question", "answer"),
             "group": ("answers",), "student": ("bbox", "question")}
_DECOY_LABELS_LOW = ("smudge", "shadow", "pebble", "stain")
_DECOY_LABELS_BIG = ("background", "table surface", "wall")
_ABSENT_NAMES = ("bicycle bell", "street lamp", "small dog", "door handle")


def _digest(*parts: Any) -> int:
  key = "\x1f".join(json.dumps(p, sort_keys=True, default=str) for p in parts)
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _rng(*parts: Any) -> random.Random:
  return random.Random(_digest(*parts))


def _norm(text: Any) -> str:
  """Case, punctuation, articles and number words folded: "Three." == "3", "The Key" == "key"."""
  t = re.sub(r"[^\w\s]", " ", str(text).lower()).split()
  t = [w for w in t if w not in ("a", "an", "the")]
  t = [str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in t]
  return " ".join(t)


def _box(box: Sequence[float]) -> list[float]:
  return [round(float(c), 2) for c in box]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


class SceneTeacher(Teacher):
  """Answers from `scenes` metadata, found beside each image (`root` is the pool folder)."""

  def __init__(self, root: str | None = None, *, answer_noise: float = 0.1, seed: int = 0,
               student_accuracy: float = 0.5, name: str = "scene",
               metadata: Mapping[str, Mapping[str, Any]] | None = None):
    for key, p in (("answer_noise", answer_noise), ("student_accuracy", student_accuracy)):
      if not 0.0 <= p <= 1.0:
        raise ValueError(f"scene teacher: {key} must be in [0, 1], got {p}")
    self.root = root
    self.answer_noise = float(answer_noise)
    self.student_accuracy = float(student_accuracy)
    self.seed = int(seed)
    self.name = name
    self._metadata = dict(metadata or {})  # image key -> metadata; filled from disk on first use

  @classmethod
  def from_config(cls, cfg) -> "SceneTeacher":
    """cfg: ConfigDict or dict with root, answer_noise, seed, student_accuracy, name."""
    get = cfg.get
    return cls(get("root", None), answer_noise=get("answer_noise", 0.1), seed=get("seed", 0),
               student_accuracy=get("student_accuracy", 0.5), name=get("name", "scene"))

  # -- lookup ------------------------------------------------------------------------------------

  def metadata(self, key: str) -> Mapping[str, Any]:
    if key not in self._metadata:
      try:
        self._metadata[key] = scenes.load_metadata(key, self.root)
      except (OSError, ValueError) as e:
        raise TeacherError(f"{self.name}: unknown image key {key!r}: {e}") from None
    return self._metadata[key]

  def _object(self, key: str, meta: Mapping[str, Any], box: Sequence[float]) -> Mapping[str, Any]:
    """The object a region is about: mostly inside the box, best IoU with it."""
    best, best_iou = None, -1.0
    for obj in meta["objects"]:
      b = obj["bbox"]
      area = (b[2] - b[0]) * (b[3] - b[1])
      ix = max(0.0, min(b[2], box[2]) - max(b[0], box[0]))
      iy = max(0.0, min(b[3], box[3]) - max(b[1], box[1]))
      if area <= 0 or ix * iy < 0.5 * area:
        continue
      v = iou(b, box)
      if v > best_iou:
        best, best_iou = obj, v
    if best is None:
      raise TeacherError(f"{self.name}: no object of image {key!r} lies in box {list(box)}")
    return best

  @staticmethod
  def _template(obj: Mapping[str, Any], question: str) -> str | None:
    """The dimension of a question the oracle can answer about `obj`, or None."""
    q = _norm(question)
    for dim, templates in TEMPLATES[obj["kind"]].items():
      if obj.get(_ATTRIBUTE[dim]) is None:
        continue
      if any(_norm(t) in q for t in templates):
        return dim
    return None

  def _truth(self, obj: Mapping[str, Any], question: str) -> tuple[str | None, str | None]:
    dim = self._template(obj, question)
    return (dim, str(obj[_ATTRIBUTE[dim]])) if dim else (None, None)

  # -- generation --------------------------------------------------------------------------------

  def generate(self, requests: Sequence[Request]) -> list[list[str]]:
    return [self._generate(r) for r in requests]

  def _generate(self, r: Request) -> list[str]:
    ctx = r.context
    key = ctx.get("image_key")
    if key is None:
      raise TeacherError(f"{self.name}: {r.task} request has no context['image_key']")
    missing = [k for k in _REQUIRED[r.task] if k not in ctx]
    if missing:
      raise TeacherError(f"{self.name}: {r.task} request for {key!r} lacks context key(s) {missing}")
    return getattr(self, f"_{r.task}")(r, str(key), self.metadata(str(key)))

  def _propose(self, r: Request, key: str, meta) -> list[str]:
    # Boxes are in pixels of the image the teacher is shown (often a downsized view of the full image),
    # as a real grounding model's are; context image_size only stands in when no image is sent.
    size = r.images[0].size if r.images else (r.context.get("image_size") or (meta["width"], meta["height"]))
    w, h = int(size[0]), int(size[1])
    sx, sy = w / meta["width"], h / meta["height"]
    rng = _rng(self.seed, "propose", key, [w, h])

    def scaled(b):
      return [round(b[0] * sx), round(b[1] * sy), round(b[2] * sx), round(b[3] * sy)]

    out = [{"bbox_2d": scaled(o["bbox"]), "label": o["label"], "score": round(rng.uniform(0.8, 1.0), 2)}
           for o in meta["objects"]]
    if meta["objects"]:
      # A second box for one object, shifted by 3% of its size per axis: IoU ~0.89 with the original.
      src = meta["objects"][rng.randrange(len(meta["objects"]))]
      x0, y0, x1, y1 = scaled(src["bbox"])
      dx, dy = max(1, round(0.03 * (x1 - x0))), max(1, round(0.03 * (y1 - y0)))
      dx, dy = dx * rng.choice((-1, 1)), dy * rng.choice((-1, 1))
      if x0 + dx < 0 or x1 + dx > w:
        dx = -dx
      if y0 + dy < 0 or y1 + dy > h:
        dy = -dy
      out.append({"bbox_2d": [x0 + dx, y0 + dy, x1 + dx, y1 + dy], "label": src["label"],
                  "score": round(rng.uniform(0.8, 0.95), 2)})
    bw, bh = max(2, round(0.04 * w)), max(2, round(0.04 * h))
    bx, by = rng.randrange(0, w - bw), rng.randrange(0, h - bh)
    out.append({"bbox_2d": [bx, by, bx + bw, by + bh], "label": rng.choice(_DECOY_LABELS_LOW),
                "score": round(rng.uniform(0.3, 0.7), 2)})
    bw, bh = round(rng.uniform(0.5, 0.7) * w), round(rng.uniform(0.5, 0.7) * h)
    bx, by = rng.randrange(0, w - bw + 1), rng.randrange(0, h - bh + 1)
    out.append({"bbox_2d": [bx, by, bx + bw, by + bh], "label": rng.choice(_DECOY_LABELS_BIG),
                "score": round(rng.uniform(0.8, 0.95), 2)})
    rng.shuffle(out)
    text = "```json\n[\n" + ",\n".join("\t" + json.dumps(e) for e in out) + "\n]\n```"
    return [text] * r.n

  def _objects(self, r: Request, key: str, meta) -> list[str]:
    labels = [o["label"] for o in meta["objects"]]
    names = [label for label in dict.fromkeys(labels) if labels.count(label) == 1]
    rng = _rng(self.seed, "objects", key)
    names.append(rng.choice(_ABSENT_NAMES))
    rng.shuffle(names)
    return ["```json\n" + json.dumps(names) + "\n```"] * r.n

  def _questions(self, r: Request, key: str, meta) -> list[str]:
    box = r.context["crop_box"]
    try:
      obj = self._object(key, meta, box)
    except TeacherError:  # a region with nothing in it (a proposal that slipped through): no questions
      return ["```json\n[]\n```"] * r.n
    num = int(r.context.get("num_questions", 3))
    templates = TEMPLATES[obj["kind"]]
    dims = [d for d in obj["dimensions"] if obj.get(_ATTRIBUTE[d]) is not None]
    outs = []
    for i in range(r.n):
      rng = _rng(self.seed, "questions", key, _box(box), num, i)
      order = dims[:]
      rng.shuffle(order)
      offsets = {d: rng.randrange(len(templates[d])) for d in order}
      qs = []
      for j in range(num):
        d = order[j % len(order)]
        t = templates[d][(offsets[d] + j // len(order)) % len(templates[d])]
        qs.append({"question": t, "dimension": d})
      if num and rng.random() < UNANSWERABLE_RATE:
        q, d = UNANSWERABLE[rng.randrange(len(UNANSWERABLE))]
        qs[rng.randrange(num)] = {"question": q, "dimension": d}
      outs.append("```json\n" + json.dumps(qs, indent=2) + "\n```")
    return outs

  def _check(self, r: Request, key: str, meta) -> list[str]:
    try:
      obj = self._object(key, meta, r.context["crop_box"])
    except TeacherError:
      return ["no"] * r.n
    return ["yes" if self._template(obj, r.context["question"]) else "no"] * r.n

  def _answer(self, r: Request, key: str, meta) -> list[str]:
    box, question = r.context["crop_box"], r.context["question"]
    obj = self._object(key, meta, box)
    dim, truth = self._truth(obj, question)
    dim = dim or r.context.get("dimension") or "identification"
    outs = []
    for i in range(r.n):
      rng = _rng(self.seed, "answer", key, _box(box), question, i)
      if truth is None:  # a guess about something not there: samples scatter, consensus fails
        ans = rng.choice(_wrong(dim, None, rng))
      elif rng.random() < self.answer_noise:
        ans = rng.choice(_wrong(dim, truth, rng))
      else:
        ans = truth
      outs.append(_surface(ans, dim, rng))
    return outs

  def _group(self, r: Request, key: str, meta) -> list[str]:
    # The oracle's surface variants (case, a final period, digits for number words) are exactly what
    # normalise_answer undoes: its groups are those, as a reply in the grouping prompt's format.
    groups = {}
    for i, a in enumerate(r.context["answers"], 1):
      groups.setdefault(_norm(str(a)), []).append(i)
    return [json.dumps(list(groups.values()))] * r.n

  def _distractors(self, r: Request, key: str, meta) -> list[str]:
    box, question, answer = r.context["crop_box"], r.context["question"], r.context["answer"]
    num = int(r.context.get("num", 3))
    obj = self._object(key, meta, box)
    dim, truth = self._truth(obj, question)
    dim = r.context.get("dimension") or dim or "identification"
    # Neither the given answer nor the true one may appear: a record needs exactly one right option.
    banned = {_norm(answer)} | ({_norm(truth)} if truth is not None else set())
    ref = truth if truth is not None else str(answer)
    outs = []
    for i in range(r.n):
      rng = _rng(self.seed, "distractors", key, _box(box), question, str(answer), num, i)
      picked, seen = [], set(banned)
      for cand in _wrong(dim, ref, rng, many=True) + _wrong(dim, str(answer), rng, many=True):
        if _norm(cand) not in seen and len(picked) < num:
          picked.append(cand)
          seen.add(_norm(cand))
      outs.append(json.dumps(picked))
    return outs

  def _student(self, r: Request, key: str, meta) -> list[str]:
    box, question = r.context["bbox"], r.context["question"]
    options = list(r.context.get("options") or ())
    obj = self._object(key, meta, box)
    dim, truth = self._truth(obj, question)
    dim = dim or r.context.get("dimension") or "identification"
    correct = None
    if truth is not None:
      hits = [k for k, o in enumerate(options) if _norm(o) == _norm(truth)]
      correct = hits[0] if hits else None
    outs = []
    for i in range(r.n):
      rng = _rng(self.seed, "student", key, _box(box), question, options, i)
      right = rng.random() < self.student_accuracy
      if not options:  # open question: answer text
        outs.append(truth if right and truth is not None else rng.choice(_wrong(dim, truth, rng)))
        continue
      if correct is None:
        k = rng.randrange(len(options))
      elif right or len(options) == 1:
        k = correct
      else:
        k = rng.choice([j for j in range(len(options)) if j != correct])
      letter = "ABCDEFGHIJ"[k]
      outs.append(letter + "." if rng.random() < _SURFACE_RATE else letter)
    return outs


class SceneDetector(Detector):
  """propose.detector=scene: a name that labels exactly one object of the scene gets that object's
  box (in pixels of the image given) with a score in [0.6, 1), so some fall under the 0.75 cut as a
  real detector's do; any other name (not in the scene, or on several objects) is not found. Scores
  are a hash of (seed, image key, name). `root`: the pool folder."""

  name = "scene"

  def __init__(self, root: str | None = None, seed: int = 0):
    self.root, self.seed = root, int(seed)

  def detect(self, image, names, context):
    key = str(context["image_key"])
    try:
      meta = scenes.load_metadata(key, self.root)
    except (OSError, ValueError) as e:
      raise DetectorError(f"scene detector: unknown image key {key!r}: {e}") from None
    sx, sy = image.width / meta["width"], image.height / meta["height"]
    out = []
    for name in names:
      hits = [o for o in meta["objects"] if _norm(o["label"]) == _norm(name)]
      if len(hits) != 1:
        out.append(None)
        continue
      x0, y0, x1, y1 = hits[0]["bbox"]
      score = round(_rng(self.seed, "detect", key, _norm(name)).uniform(0.6, 1.0), 4)
      out.append(Box(x0 * sx, y0 * sy, x1 * sx, y1 * sy, name, score))
    return out


def _wrong(dim: str, truth: str | None, rng: random.Random, many: bool = False) -> list[str]:
  """Plausible wrong answers of one dimension, in a random order (`many`: include rarer ones)."""
  t = _norm(truth) if truth is not None else None
  if dim == "colour":
    pool = list(scenes.PALETTE)
  elif dim == "structure":
    pool = list(scenes.SHAPES)
  elif dim == "material":
    pool = list(scenes.MATERIALS) + (list(_MATERIAL_EXTRAS) if many else [])
  elif dim == "identification":
    pool = list(scenes.ICONS) + (list(_ICON_EXTRAS) if many else [])
  elif dim == "counting":
    # Near counts, in random order (always k-1 and k+1 would make the answer the middle option).
    k = int(t) if t is not None and t.isdigit() else rng.randint(2, 9)
    near = [str(k + d) for d in (-3, -2, -1, 1, 2, 3) if k + d > 0]
    rng.shuffle(near)
    pool = near + [str(k + d) for d in (4, 5, 6)] + ([str(k)] if truth is None else [])
  elif dim == "ocr":
    # Look-alike misreadings mixed with other codes or words, so the answer is not simply the one
    # option every other option is an edit of.
    text = truth or rng.choice(scenes.WORDS)
    if text.isdigit():
      others = [str(rng.randrange(10 ** (len(text) - 1) if len(text) > 1 else 0, 10 ** len(text))) for _ in range(6)]
    else:
      others = [w for w in scenes.WORDS if len(w) == len(text)]
      rng.shuffle(others)
    pool = _ocr_variants(text, rng)[:3] + others[:3]
    rng.shuffle(pool)
    pool += others[3:] + [w for w in scenes.WORDS if w not in others]
  else:
    pool = list(scenes.PALETTE)
  if dim not in ("counting", "ocr"):
    rng.shuffle(pool)
  return [p for p in dict.fromkeys(pool) if t is None or _norm(p) != t]


def _ocr_variants(text: str, rng: random.Random) -> list[str]:
  """Look-alike misreadings: a confusable character, a swapped pair, a dropped or changed last character."""
  out = []
  for i, ch in enumerate(text):
    if ch in _SIMILAR:
      out.append(text[:i] + _SIMILAR[ch] + text[i + 1:])
  if len(text) > 1:
    j = rng.randrange(len(text) - 1)
    out.append(text[:j] + text[j + 1] + text[j] + text[j + 2:])
    out.append(text[:-1])
  last = text[-1]
  alphabet = "0123456789" if last.isdigit() else "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
  out.append(text[:-1] + rng.choice([c for c in alphabet if c != last]))
  rng.shuffle(out)
  return out


def _surface(answer: str, dim: str, rng: random.Random) -> str:
  """Sometimes the same answer in another form: "Blue.", "Blue", "three"; OCR keeps its case."""
  r = rng.random()
  if r >= _SURFACE_RATE:
    return answer
  if dim == "counting" and answer.isdigit() and int(answer) < len(NUMBER_WORDS) and r < _SURFACE_RATE / 2:
    return NUMBER_WORDS[int(answer)]
  if dim == "ocr":
    return answer + "."
  return answer.capitalize() + ("." if r < _SURFACE_RATE / 2 else "")
