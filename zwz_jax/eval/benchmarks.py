"""Benchmarks as lists of EvalItem: the public ZoomBench parquet, the authors' JSON, our own records.

Every loader reads local files only. One bad item (missing field, unreadable image) comes back with
`error` set so the evaluator can count it per item; only a file that cannot be read at all raises,
naming the file. Multiple-choice options written into a prompt ("A. red" lines, "(A) red") are
parsed out, so `question` is the bare question and the prompt can be rebuilt in any style.

Pure python: imports neither jax nor torch (pyarrow and array_record only where they are needed).
"""
from __future__ import annotations

import base64
import collections
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import re
import sys
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from zwz_jax import answers, dimensions, records
from zwz_jax.data import tfds_datasets
from zwz_jax.eval import authors_judge

OPTION_LETTERS = records.OPTION_LETTERS


@dataclasses.dataclass(frozen=True)
class EvalItem:
  id: str
  image: bytes  # encoded full image (global view)
  image_format: str
  width: int
  height: int
  crop: bytes | None  # encoded region crop (regional view), None when the benchmark has none
  crop_format: str | None
  question: str  # without the options, when they could be parsed out of the prompt
  options: tuple[str, ...]
  answer: str  # option letter for "mc", else the reference text
  answer_type: str  # "mc" | "number" | "text"
  dimension: str | None
  bbox: tuple[float, ...] | None  # x0, y0, x1, y1 as the benchmark stores it
  source: str  # file:row the item came from
  error: str | None = None  # why this item cannot be evaluated; None when it is fine
  raw_prompt: str | None = None  # the prompt exactly as the benchmark wrote it
  dimension_inferred: bool = False  # `dimension` read from the question (the benchmark has no label)

  @property
  def answer_text(self) -> str:
    """The answer as words (the option's text for multiple choice)."""
    if self.answer_type == "mc" and self.answer in OPTION_LETTERS[:len(self.options)]:
      return self.options[OPTION_LETTERS.index(self.answer)]
    return self.answer

  @property
  def prompt(self) -> str:
    """Question plus lettered options and the letter instruction, as the student is trained on."""
    return records.format_question(self.question, self.options)


# ----------------------------------------------------------------------------------------------
# Options inside prompts
# ----------------------------------------------------------------------------------------------

_OPTION_LINE = re.compile(r"^\s*(?:[(\[]([A-J])[)\]]|([A-J])\s*[.:)：])\s*(\S.*?)\s*$")
_HEADER_LINE = re.compile(r"(?i)^\s*(?:options|choices|candidates|select from)\b[^\n]*:?\s*$|^\s*(?:选项)[:：]?\s*$")


def split_options(prompt: str) -> tuple[str, tuple[str, ...]]:
  """(question, options) from a prompt with lettered options appended; ((prompt), ()) when none.

  Options are the last run of lines "A. x", "(A) x", "A) x", "A: x" lettered A, B, C... (at least
  two), or, on one line, "(A) x (B) y ...". Text after the options (an answer instruction) is
  dropped; a bare "Options:" line before them too.
  """
  if not prompt:
    return prompt or "", ()
  lines = prompt.splitlines()
  best = None
  i = 0
  while i < len(lines):
    m = _OPTION_LINE.match(lines[i])
    if m and (m.group(1) or m.group(2)) == "A":
      opts, j, end = [m.group(3)], i + 1, i + 1
      while j < len(lines):
        if not lines[j].strip():
          j += 1
          continue
        n = _OPTION_LINE.match(lines[j])
        if not n or (n.group(1) or n.group(2)) != OPTION_LETTERS[len(opts)]:
          break
        opts.append(n.group(3))
        j, end = j + 1, j + 1
      if len(opts) >= 2:
        best = (i, end, opts)
      i = max(end, i + 1)
    else:
      i += 1
  if best is not None:
    head = lines[:best[0]]
    while head and not head[-1].strip():
      head.pop()
    if head and _HEADER_LINE.match(head[-1]) and len(head) > 1:
      head.pop()
    return "\n".join(head).strip(), tuple(best[2])
  return _split_inline(prompt)


def _split_inline(prompt: str) -> tuple[str, tuple[str, ...]]:
  """Options written on one line: "... (A) red (B) blue (C) green"."""
  marks, pos = [], 0
  for letter in OPTION_LETTERS:
    m = re.compile(rf"(?:^|(?<=\s))\({letter}\)\s*").search(prompt, pos)
    if not m or (marks and "\n" in prompt[marks[-1].end():m.start()]):
      break
    marks.append(m)
    pos = m.end()
  if len(marks) < 2:
    return prompt.strip(), ()
  opts = [prompt[a.end():b.start()].strip() for a, b in zip(marks, marks[1:])]
  opts.append(prompt[marks[-1].end():].split("\n", 1)[0].strip())
  if not all(opts):
    return prompt.strip(), ()
  return prompt[:marks[0].start()].strip(), tuple(opts)


def _options_prompt(question: str, options: Sequence[str]) -> str:
  if not options:
    return question
  return question + "\n" + "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))


# ----------------------------------------------------------------------------------------------
# Building items
# ----------------------------------------------------------------------------------------------


def _reason(e: Exception) -> str:
  """Error text without object addresses (PIL names the BytesIO), so reports are reproducible."""
  return f"{type(e).__name__}: {re.sub(r' <[^>]* at 0x[0-9a-f]+>', '', str(e))}"


def _probe(data: bytes, verify: bool) -> tuple[str, int, int]:
  """(format, width, height); reads the header only unless `verify` decodes all pixels."""
  img = Image.open(io.BytesIO(data))
  if verify:
    img.load()
  return (img.format or "png").lower(), int(img.width), int(img.height)


def _as_bbox(value) -> tuple[float, ...] | None:
  if value is None:
    return None
  if isinstance(value, str):
    try:
      value = json.loads(value)
    except ValueError:
      return None
  try:
    box = tuple(float(c) for c in value)
  except (TypeError, ValueError):
    return None
  return box if len(box) == 4 and all(math.isfinite(c) for c in box) else None


def _first(row: dict, *names):
  for n in names:
    if row.get(n) is not None:
      return row[n]
  return None


def _error_item(id, source: str, error: str) -> EvalItem:
  """An item that could not be parsed at all: only its id, where it came from and why."""
  return EvalItem(id=str(id), image=b"", image_format="", width=0, height=0, crop=None, crop_format=None,
                  question="", options=(), answer="", answer_type="text", dimension=None, bbox=None,
                  source=source, error=error)


QUESTION_TYPES = ("mcq", "blank")  # ZoomBench's question_type


def _make_item(*, id, source: str, image: bytes | None, crop: bytes | None, prompt, answer,
               dimension=None, bbox=None, image_error: str | None = None, crop_error: str | None = None,
               verify: bool = False, question_type: str | None = None, infer_dimension: bool = False) -> EvalItem:
  """One EvalItem from raw fields; whatever is missing or unreadable goes into `error`.

  question_type ("mcq" | "blank", ZoomBench's column): a blank question keeps its whole prompt and
  has no options; an mcq must have options. infer_dimension: without a dimension label, read one
  from the question (zwz_jax.dimensions.infer_dimension) and mark the item."""
  errors = [e for e in (image_error, crop_error) if e]
  fmt, w, h = "", 0, 0
  if not image:
    if not image_error:
      errors.append("field 'image' is missing or empty")
  else:
    try:
      fmt, w, h = _probe(image, verify)
    except Exception as e:  # PIL raises several types for garbage
      errors.append(f"image does not decode ({_reason(e)})")
  crop_fmt = None
  if crop:
    try:
      crop_fmt = _probe(crop, verify)[0]
    except Exception as e:
      errors.append(f"crop image does not decode ({_reason(e)})")
  prompt = "" if prompt is None else str(prompt).replace("<image>", "").strip()
  if not prompt:
    errors.append("field 'prompt' (question) is missing or empty")
  answer = "" if answer is None else str(answer).strip()
  if question_type is not None and question_type not in QUESTION_TYPES:
    errors.append(f"question_type {question_type!r} is not one of {sorted(QUESTION_TYPES)}")
  question, options = (prompt, ()) if question_type == "blank" else split_options(prompt)
  answer_type = answers.infer_answer_type(answer, options)
  if question_type == "blank" and answer_type == "mc":
    answer_type = "text"  # a blank whose answer is a letter ("Which letter is on the tail?" -> "A")
  if question_type == "mcq" and not options:
    errors.append("question_type 'mcq' but no options could be read from the query")
  inferred = infer_dimension and not dimension and bool(question)
  if inferred:
    dimension = dimensions.infer_dimension(question)
  if not answer:
    errors.append("field 'answer' is missing or empty")
  elif answer_type == "mc":
    letter = answers.answer_letter(answer, options)
    if letter is None:
      errors.append(f"answer {answer!r} is not one of the option letters {OPTION_LETTERS[:len(options)]}")
    else:
      answer = letter
  return EvalItem(
      id=str(id), image=bytes(image or b""), image_format=fmt, width=w, height=h,
      crop=bytes(crop) if crop else None, crop_format=crop_fmt, question=question, options=tuple(options),
      answer=answer, answer_type=answer_type, dimension=None if dimension is None else str(dimension),
      bbox=_as_bbox(bbox), source=source, error="; ".join(errors) or None, raw_prompt=prompt or None,
      dimension_inferred=inferred)


def _image_field(value, base_dir: str) -> tuple[bytes | None, str | None]:
  """(bytes, error) of a parquet image cell: raw bytes, {"bytes": ...}, or {"path": ...} on disk."""
  if value is None:
    return None, None
  if isinstance(value, (bytes, bytearray, memoryview)):
    return bytes(value), None
  if isinstance(value, dict):
    if value.get("bytes"):
      return bytes(value["bytes"]), None
    value = value.get("path")
    if not value:
      return None, None
  if isinstance(value, str):
    return _read_file(value, base_dir)
  return None, f"image cell of type {type(value).__name__} is neither bytes nor a path"


def _read_file(path: str, root: str) -> tuple[bytes | None, str | None]:
  full = path if os.path.isabs(path) else os.path.join(root, path)
  try:
    with open(full, "rb") as f:
      return f.read(), None
  except OSError as e:
    return None, f"image {path!r} cannot be read under {root or '.'} ({type(e).__name__}: {e.strerror or e})"


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


def load_zoombench_parquet(path: str, *, verify: bool = False) -> list[EvalItem]:
  """Items of a ZoomBench-schema parquet file.

  Columns: image (bytes or {"bytes", "path"}), crop_image (same, may be null), prompt / query
  (question, maybe with options appended), answer / response; optional question_type (mcq | blank,
  as released), dimension / category (when absent, inferred from the question and marked),
  id / index, bbox. verify=True decodes every image fully (slower) instead of reading headers only.
  """
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise ImportError("reading ZoomBench parquet needs pyarrow: pip install pyarrow") from None
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such benchmark file")
  try:
    pf = pq.ParquetFile(path)
  except Exception as e:
    raise ValueError(f"{path}: cannot be read as parquet ({type(e).__name__}: {e})") from None
  cols = set(pf.schema_arrow.names)
  needed = {"image": ("image",), "prompt": ("prompt", "question", "query"), "answer": ("answer", "response")}
  missing = [k for k, names in needed.items() if not cols & set(names)]
  if missing:
    raise ValueError(f"{path}: not a ZoomBench parquet, no column for {missing} (columns: {sorted(cols)})")
  base, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
  items = []
  try:
    for batch in pf.iter_batches(batch_size=32):
      for row in batch.to_pylist():
        items.append(zoombench_item(row, f"{name}:{len(items)}", len(items), base, verify=verify))
  except (OSError, ValueError) as e:  # pyarrow.ArrowException derives from these
    raise ValueError(f"{path}: unreadable at row {len(items)} ({type(e).__name__}: {e})") from None
  return items


def zoombench_item(row: dict, source: str, index: int, base: str, *, verify: bool = False) -> EvalItem:
  """One item of a ZoomBench row (its parquet's columns, or the TFDS zoombench features)."""
  image, err = _image_field(row.get("image"), base)
  crop, crop_err = _image_field(row.get("crop_image"), base)
  rid = _first(row, "id", "index", "question_id")
  return _make_item(
      id=index if rid is None else rid, source=source, image=image, crop=crop,
      prompt=_first(row, "prompt", "question", "query"), answer=_first(row, "answer", "response"),
      dimension=_first(row, "dimension", "category"), bbox=row.get("bbox"), image_error=err, crop_error=crop_err,
      verify=verify, question_type=row.get("question_type"), infer_dimension=True)


def load_tfds_zoombench(entry: str, *, verify: bool = False) -> list[EvalItem]:
  """ZoomBench from its TFDS dataset (zwz_jax/data/tfds_datasets/zoombench): the released columns."""
  name, source = tfds_datasets.open_split(entry, ("image", "crop_image"))
  if name != "zoombench":
    raise ValueError(f"{entry}: a TFDS {name!r} dataset; eval.benchmarks reads TFDS zoombench only")
  items = []
  for i in range(len(source)):
    ex = source[i]
    row = {k: tfds_datasets.text(v) for k, v in ex.items() if k not in ("image", "crop_image", "bbox")}
    row.update(image=bytes(ex["image"]), crop_image=bytes(ex["crop_image"]) or None,
               bbox=None if np.isnan(ex["bbox"]).any() else [float(c) for c in ex["bbox"]],
               dimension=row.get("dimension") or None, question_type=row.get("question_type") or None)
    items.append(zoombench_item(row, f"{os.path.basename(entry)}:{i}", i, "", verify=verify))
  return items


def _json_rows(path: str) -> tuple[list[tuple[Any, str | None]], bool]:
  """((object, parse error) per item, whether the file is one JSON list) of a JSON or JSON-lines file."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such benchmark file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot be read ({e})") from None
  stripped = text.lstrip()
  whole = None
  if stripped.startswith("["):
    try:
      whole = json.loads(text)
    except ValueError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  elif stripped.startswith("{"):
    try:
      whole = json.loads(text)
    except ValueError:
      whole = None  # JSON lines
  if isinstance(whole, list):
    return [(r, None) for r in whole], True
  if isinstance(whole, dict):
    return [(whole, None)], False
  rows = []
  for line in text.splitlines():
    if line.strip():
      try:
        rows.append((json.loads(line), None))
      except ValueError as e:
        rows.append((None, f"line is not valid JSON ({e})"))
  if not rows and stripped:
    raise ValueError(f"{path}: no items")
  return rows, False


def _is_mme_realworld(rows) -> bool:
  first = rows[0][0] if rows else None
  return isinstance(first, dict) and bool({"Ground truth", "Answer choices"} & set(first))


def load_json(path: str, image_root: str | None = None, *, verify: bool = False) -> list[EvalItem]:
  """Items of the authors' JSON (a list) or JSON-lines format.

  Each item: images (paths relative to image_root, default the file's folder; the first is the full
  image, a second one the crop), optional crop_images (the crop, as their converter writes it),
  query (prompt), response (answer), optional dimension/category, id, bbox.
  """
  return _authors_items(path, _json_rows(path)[0], image_root, verify)


def _authors_items(path, rows, image_root, verify) -> list[EvalItem]:
  root = os.path.dirname(os.path.abspath(path)) if image_root is None else image_root
  name = os.path.basename(path)
  items = []
  for i, (row, err) in enumerate(rows):
    source = f"{name}:{i}"
    if not isinstance(row, dict):
      items.append(_error_item(i, source, err or f"item is a {type(row).__name__}, not an object"))
      continue
    imgs = row.get("images")
    imgs = [imgs] if isinstance(imgs, str) else list(imgs or [])
    crops = row.get("crop_images")
    crops = [crops] if isinstance(crops, str) else list(crops or [])
    image = crop = image_error = crop_error = None
    if not imgs:
      image_error = "field 'images' is missing or empty"
    else:
      image, image_error = _read_file(str(imgs[0]), root)
    crop_path = crops[0] if crops else (imgs[1] if len(imgs) > 1 else None)
    if crop_path:
      crop, crop_error = _read_file(str(crop_path), root)
    rid = _first(row, "id", "index", "question_id")
    items.append(_make_item(
        id=i if rid is None else rid, source=source, image=image, crop=crop,
        prompt=_first(row, "query", "prompt", "question"), answer=_first(row, "response", "answer"),
        dimension=_first(row, "dimension", "category"), bbox=row.get("bbox"),
        image_error=image_error, crop_error=crop_error, verify=verify))
  return items


# ----------------------------------------------------------------------------------------------
# The fine-grained suite the paper reports beside ZoomBench, in the formats its authors publish
# ----------------------------------------------------------------------------------------------

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VSTAR_QUESTIONS = "test_questions.jsonl"


def _read_lines(path: str) -> list[tuple[Any, str | None]]:
  """(object, parse error) per non-empty line of a JSON-lines file."""
  out = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        try:
          out.append((json.loads(line), None))
        except ValueError as e:
          out.append((None, f"line is not valid JSON ({e})"))
  return out


def _union_xywh(boxes) -> tuple[float, ...] | None:
  """The box covering every [x, y, w, h] of `boxes` as (x0, y0, x1, y1), or None if none parse."""
  try:
    xywh = [tuple(float(v) for v in b) for b in boxes or ()]
  except (TypeError, ValueError):
    return None
  if not xywh or any(len(b) != 4 for b in xywh):
    return None
  return (min(b[0] for b in xywh), min(b[1] for b in xywh), max(b[0] + b[2] for b in xywh),
          max(b[1] + b[3] for b in xywh))


def load_vstar(path: str, *, verify: bool = False) -> list[EvalItem]:
  """V* Bench from its release folder (github penghao-wu/vstar, HF craigwu/vstar_bench).

  With `test_questions.jsonl` (image: relative path, text: question with "(A) ..." options and an
  answer instruction, label: the letter, category, question_id) that file is read. Otherwise the
  per-image annotations: <category>/<name>.json beside <name>.jpg, with question, options (the
  first is the right one), target_object and bbox ([x, y, w, h] per target). Those options are put
  in an order drawn from the item's name, so the right letter varies as in the jsonl, and the same
  on every load; the box is the one around all targets. The category (direct_attributes,
  relative_position) is the dimension. V* has no crops: only its global view is scored.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no V* Bench folder")
  questions = os.path.join(path, VSTAR_QUESTIONS)
  items = []
  if os.path.exists(questions):
    for i, (row, err) in enumerate(_read_lines(questions)):
      source = f"{VSTAR_QUESTIONS}:{i}"
      if not isinstance(row, dict):
        items.append(_error_item(i, source, err or "item is not an object"))
        continue
      image, image_error = (_read_file(str(row["image"]), path) if row.get("image")
                            else (None, "field 'image' is missing or empty"))
      rid = row.get("question_id")
      items.append(_make_item(id=i if rid is None else rid, source=source, image=image, crop=None,
                              prompt=row.get("text"), answer=row.get("label"), dimension=row.get("category"),
                              image_error=image_error, verify=verify))
    return items
  categories = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  for category in categories:
    folder = os.path.join(path, category)
    for ann in sorted(f for f in os.listdir(folder) if f.endswith(".json")):
      stem, rid = ann[:-len(".json")], f"{category}/{ann[:-len('.json')]}"
      source = f"{category}/{ann}"
      try:
        with open(os.path.join(folder, ann), encoding="utf-8") as f:
          row = json.load(f)
      except (OSError, ValueError) as e:
        items.append(_error_item(rid, source, f"annotation cannot be read ({type(e).__name__}: {e})"))
        continue
      if not isinstance(row, dict):
        items.append(_error_item(rid, source, "annotation is not an object"))
        continue
      image_path = next((stem + ext for ext in _IMAGE_EXTS if os.path.exists(os.path.join(folder, stem + ext))), None)
      image, image_error = (_read_file(image_path, folder) if image_path
                            else (None, f"no image {stem}.* beside the annotation"))
      options = row.get("options")
      if not isinstance(options, list) or len(options) < 2:
        items.append(_error_item(rid, source, "field 'options' is missing or has fewer than two options"))
        continue
      order = list(range(len(options)))
      random.Random(hashlib.sha1(rid.encode()).hexdigest()).shuffle(order)
      shuffled = [str(options[k]) for k in order]
      items.append(_make_item(
          id=rid, source=source, image=image, crop=None, prompt=_options_prompt(str(row.get("question") or ""), shuffled),
          answer=OPTION_LETTERS[order.index(0)], dimension=category, bbox=_union_xywh(row.get("bbox")),
          image_error=image_error, verify=verify))
  if not items:
    raise ValueError(f"{path}: neither {VSTAR_QUESTIONS} nor <category>/*.json annotations")
  return items


def _hrbench_rows(path: str):
  """The rows of an HR-Bench file: a TSV (as released) or the same table as parquet."""
  if path.lower().endswith(".parquet"):
    import pyarrow.parquet as pq
    for batch in pq.ParquetFile(path).iter_batches(batch_size=16):
      yield from batch.to_pylist()
    return
  csv.field_size_limit(sys.maxsize)  # one cell holds a whole 8K image in base64
  with open(path, encoding="utf-8", newline="") as f:
    yield from csv.DictReader(f, delimiter="\t")


def load_hrbench(path: str, *, verify: bool = False) -> list[EvalItem]:
  """HR-Bench 4K / 8K (github DreamMr/HR-Bench): hr_bench_{4k,8k}.tsv or .parquet with columns index,
  question, answer (a letter), A, B, C, D, category (the dimension), cycle_category and image (the
  image as base64). Each question appears once per rotation of its options; the paper averages
  over all rows, as here. HR-Bench has no crops."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such benchmark file")
  name, items = os.path.basename(path), []
  try:
    for i, row in enumerate(_hrbench_rows(path)):
      missing = [c for c in ("question", "answer", "image") if c not in row]
      if missing:
        raise ValueError(f"not an HR-Bench table, no column {missing} (columns: {sorted(row)})")
      options = [str(row[c]).strip() for c in OPTION_LETTERS[:4] if row.get(c) not in (None, "") and row[c] == row[c]]
      image, image_error = None, None
      try:
        image = base64.b64decode(row["image"] or "", validate=True) or None
      except (ValueError, TypeError) as e:
        image_error = f"field 'image' is not valid base64 ({type(e).__name__})"
      rid = row.get("index")
      item = _make_item(id=i if rid in (None, "") else rid, source=f"{name}:{i}", image=image, crop=None,
                        prompt=_options_prompt(str(row.get("question") or ""), options), answer=row.get("answer"),
                        dimension=row.get("category"), image_error=image_error, verify=verify)
      if len(options) < 2:
        item = dataclasses.replace(item, error="; ".join(filter(None, [
            item.error, f"option columns {', '.join(OPTION_LETTERS[:4])} hold {len(options)} option(s)"])))
      items.append(item)
  except (OSError, ValueError, csv.Error) as e:  # pyarrow.ArrowException derives from these
    raise ValueError(f"{path}: unreadable at row {len(items)} ({type(e).__name__}: {e})") from None
  return items


_CHOICE = re.compile(r"^\s*\(?([A-J])\)?\s*[.:)]?\s*")


def load_mme_realworld(path: str, image_root: str | None = None, *, verify: bool = False) -> list[EvalItem]:
  """MME-RealWorld, English (MME_RealWorld.json) or Chinese (MME_RealWorld_CN.json), as released
  (github yfzhang114/MME-RealWorld): a JSON list of Question_id, Image (path under image_root,
  default the file's folder), Text, "Answer choices" (["(A) ...", ...], up to E), "Ground truth" (a
  letter), Task, Subtask, Category. The subtask (else the category) is the dimension. No crops."""
  rows, is_list = _json_rows(path)
  if not is_list:
    raise ValueError(f"{path}: not a JSON list of questions")
  return _mme_items(path, rows, image_root, verify)


def _mme_items(path, rows, image_root, verify) -> list[EvalItem]:
  root = os.path.dirname(os.path.abspath(path)) if image_root is None else image_root
  name, items = os.path.basename(path), []
  for i, (row, _) in enumerate(rows):
    source = f"{name}:{i}"
    if not isinstance(row, dict):
      items.append(_error_item(i, source, "item is not an object"))
      continue
    rid = _first(row, "Question_id", "question_id")
    choices = row.get("Answer choices")
    if not isinstance(choices, list) or len(choices) < 2:
      items.append(_error_item(i if rid is None else rid, source, "field 'Answer choices' is missing or short"))
      continue
    options = [_CHOICE.sub("", str(c), count=1).strip() for c in choices]
    image, image_error = (_read_file(str(row["Image"]), root) if row.get("Image")
                          else (None, "field 'Image' is missing or empty"))
    items.append(_make_item(
        id=i if rid is None else rid, source=source, image=image, crop=None,
        prompt=_options_prompt(str(row.get("Text") or ""), options), answer=row.get("Ground truth"),
        dimension=_first(row, "Subtask", "Category", "Task"), image_error=image_error, verify=verify))
  return items


def from_records(record_dir: str, *, split: str | None = None) -> list[EvalItem]:
  """Our own ArrayRecord records as items; the crop is the record's box cut from the full image.

  split: keep only records of that split (default all). A record that does not decode comes back
  as an item with `error` set, its id (and split) taken from the raw entry when readable.
  """
  import msgpack

  items = []
  for path in records.shard_paths(record_dir):
    name = os.path.basename(path)
    for i, raw in enumerate(records.read_shard(path)):
      source = f"{name}:{i}"
      try:
        r = records.decode(raw, where=source)
      except records.RecordError as e:
        try:  # what the broken entry still tells: its id, and its split for the filter
          d = msgpack.unpackb(raw, raw=False)
          rid, rsplit = d.get("id") or source, d.get("split")
        except Exception:
          rid, rsplit = source, None
        if split is None or rsplit in (split, None):
          items.append(_error_item(rid, source, str(e)))
        continue
      if split is not None and r.split != split:
        continue
      items.append(_record_item(r, source))
  return items


def answer_prior(record_dir: str, items: Sequence[EvalItem]) -> float:
  """Accuracy of answering each item with its dimension's most frequent answer among the records in
  `record_dir` (the training data): what a student blind to the image gets."""
  counts = collections.defaultdict(collections.Counter)
  for path in records.shard_paths(record_dir):
    for raw in records.read_shard(path):
      r = records.decode(raw, where=path)
      counts[r.dimension][answers.normalise_answer(r.answer_text)] += 1
  right = [answers.judge(counts[it.dimension].most_common(1)[0][0] if counts[it.dimension] else "", it.answer,
                         options=it.options, answer_type=it.answer_type).correct for it in items if not it.error]
  return sum(right) / max(len(right), 1)


def _record_item(r: records.Record, source: str) -> EvalItem:
  crop, crop_fmt, error = None, None, None
  try:
    crop, crop_fmt = records.encode_image(records.crop_region(records.open_image(r), r.bbox), "png"), "png"
  except records.RecordError as e:
    error = str(e)
  answer_type = answers.infer_answer_type(r.answer, r.options)
  return EvalItem(
      id=r.id, image=r.image, image_format=r.image_format, width=r.width, height=r.height, crop=crop,
      crop_format=crop_fmt, question=r.question, options=tuple(r.options), answer=r.answer,
      answer_type=answer_type, dimension=r.dimension, bbox=tuple(float(c) for c in r.bbox),
      source=f"{source} ({r.source.get('pool', '')}:{r.source.get('path', '')})", error=error,
      raw_prompt=records.format_question(r.question, r.options))


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str  # its key in reports: the file or folder name without extension
  kind: str  # which loader read it: one of KINDS
  path: str
  items: list[EvalItem]

  @property
  def authors_mcq(self) -> bool:
    """On the ZwZ authors' MCQ list, so their first-letter step reads its answers (ZoomBench is not)."""
    return self.kind in authors_judge.MCQ_KINDS

  @property
  def dual_view(self) -> bool:
    """Whether the benchmark has region crops, so its regional view is scored too."""
    return any(it.crop for it in self.items)


KINDS = ("records", "vstar", "hrbench", "zoombench", "mme_realworld", "json")


def load(path: str, *, image_root: str | None = None, verify: bool = False) -> Benchmark:
  """Any supported benchmark by its form: a record directory or a V* Bench folder; a .parquet file
  (ZoomBench, or HR-Bench by its option columns); an HR-Bench .tsv; MME-RealWorld's .json (by its
  keys) or the authors' .json / .jsonl; a prepared TFDS zoombench (DIR/zoombench/1.0.0[test])."""
  kind, items = _load(path, image_root, verify)
  if tfds_datasets.is_prepared(path):  # DIR/<name>/<version>[split]
    name = os.path.basename(os.path.dirname(os.path.normpath(tfds_datasets.split_entry(path)[0])))
  else:
    name = os.path.basename(os.path.normpath(path))
    name = name if os.path.isdir(path) else os.path.splitext(name)[0]
  return Benchmark(name=safe_name(name) or kind, kind=kind, path=path, items=items)


def safe_name(text: str) -> str:
  """`text` as a file or folder name: runs of other characters than letters, digits, '.', '_' and
  '-' become '_'."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def load_suite(paths: str, *, image_root: str | None = None, verify: bool = False) -> list[Benchmark]:
  """The benchmarks of a comma-separated list of paths (eval.benchmarks), with distinct names."""
  suite = [load(p.strip(), image_root=image_root, verify=verify) for p in paths.split(",") if p.strip()]
  seen = collections.Counter()
  for i, b in enumerate(suite):
    seen[b.name] += 1
    if seen[b.name] > 1:
      suite[i] = dataclasses.replace(b, name=f"{b.name}_{seen[b.name]}")
  return suite


def _load(path: str, image_root: str | None, verify: bool) -> tuple[str, list[EvalItem]]:
  if tfds_datasets.is_prepared(path):
    return "zoombench", load_tfds_zoombench(path, verify=verify)
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, records.MANIFEST)):
      return "records", from_records(path)
    if os.path.exists(os.path.join(path, VSTAR_QUESTIONS)) or any(
        os.path.isdir(os.path.join(path, d)) and any(f.endswith(".json") for f in os.listdir(os.path.join(path, d)))
        for d in os.listdir(path)):
      return "vstar", load_vstar(path, verify=verify)
    raise ValueError(f"{path}: a directory that is neither a record directory (no {records.MANIFEST}) "
                     "nor a V* Bench folder")
  low = path.lower()
  if low.endswith(".tsv") or (low.endswith(".parquet") and _parquet_columns(path) >= {"A", "B", "question"}):
    return "hrbench", load_hrbench(path, verify=verify)
  if low.endswith(".parquet"):
    return "zoombench", load_zoombench_parquet(path, verify=verify)
  if low.endswith((".json", ".jsonl")):
    rows, is_list = _json_rows(path)  # read once; MME-RealWorld is told by its keys
    if is_list and _is_mme_realworld(rows):
      return "mme_realworld", _mme_items(path, rows, image_root, verify)
    return "json", _authors_items(path, rows, image_root, verify)
  raise ValueError(f"{path}: unknown benchmark format (expected a record directory, a V* folder, .parquet, "
                   ".tsv, .json or .jsonl)")


def _parquet_columns(path: str) -> set[str]:
  try:
    import pyarrow.parquet as pq
    return set(pq.ParquetFile(path).schema_arrow.names)
  except Exception:  # unreadable: the ZoomBench loader says why, naming the file
    return set()


# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------


def write_zoombench_parquet(items: Iterable[EvalItem], path: str) -> str:
  """Writes items in the ZoomBench schema (image/crop_image as {"bytes", "path"} like HF datasets).

  The prompt is the question with its options appended as "A. ..." lines, which the loader parses
  back; question_type is "mcq" for items with options, else "blank". Written to a temporary file first, so a crash never leaves a half file at `path`.
  """
  import pyarrow as pa
  import pyarrow.parquet as pq

  img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  schema = pa.schema([("id", pa.string()), ("image", img_t), ("crop_image", img_t), ("prompt", pa.string()),
                      ("answer", pa.string()), ("question_type", pa.string()), ("dimension", pa.string()),
                      ("bbox", pa.list_(pa.float64()))])
  rows = []
  for it in items:
    rows.append({
        "id": str(it.id),
        "image": {"bytes": bytes(it.image), "path": f"{it.id}.{it.image_format or 'png'}"},
        "crop_image": {"bytes": bytes(it.crop), "path": f"{it.id}_crop.{it.crop_format or 'png'}"} if it.crop else None,
        "prompt": _options_prompt(it.question, it.options), "answer": it.answer,
        "question_type": "mcq" if it.options else "blank",
        "dimension": None if it.dimension_inferred else it.dimension,  # a label only where the source had one
        "bbox": [float(c) for c in it.bbox] if it.bbox is not None else None})
  table = pa.Table.from_pylist(rows, schema=schema)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  pq.write_table(table, tmp)
  os.replace(tmp, path)
  return path
