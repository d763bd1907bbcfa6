"""Teacher prompts for each task in `teachers.base.TASKS`, and parsers for their answers.

Wording follows the authors' data synthesis where it has one (question rules, the checker's
criteria, distractor rules); the output formats are ours and kept machine-checkable. Parsers raise
`ParseError` (with a snippet of the output) and never anything else on bad text.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from data_gen.boxes import FORMATS
from data_gen.parsing import ParseError, as_text, json_items
from zwz_jax import answers
from zwz_jax.dimensions import normalise_dimension
from zwz_jax.records import DIMENSIONS, FOCUS_OVERLAY, format_question

__all__ = ["ParseError", "DIMENSION_GUIDE", "propose_prompt", "objects_prompt", "questions_prompt",
           "check_prompt", "answer_prompt", "distractors_prompt", "group_prompt", "student_prompt",
           "parse_questions", "parse_yes_no", "parse_list", "parse_names", "parse_groups", "parse_answer"]

# One line per perception dimension: what to ask, with an example, as given to the question writer.
DIMENSION_GUIDE = {
    "counting": "how many of a kind of small thing there are (e.g. 'How many buttons are on the remote?')",
    "ocr": "text, digits or symbols written on something (e.g. 'What number is painted on the bus?')",
    "colour": "the colour of a specific object or part (e.g. 'What colour is the cyclist's helmet?')",
    "structure": "shape, form, pattern or arrangement (e.g. 'What shape is the sign on the door?')",
    "material": "what something is made of (e.g. 'What material is the bench seat made of?')",
    "identification": "what a specific object or part is (e.g. 'What is the man holding in his left hand?')",
}

# ----------------------------------------------------------------------------------------------
# Prompt builders
# ----------------------------------------------------------------------------------------------


def propose_prompt(box_format: str = "qwen2_5", image_size: tuple[int, int] | None = None) -> str:
  """Ask for every small, clearly identifiable object with a box, label and confidence.

  box_format: the model's coordinate convention (see boxes.FORMATS); image_size: (w, h) of the
  image the model sees, stated for qwen2_5 so its pixel coordinates have a frame.
  """
  if box_format not in FORMATS:
    raise ValueError(f"box format {box_format!r} is not one of {FORMATS}")
  if box_format == "qwen3":
    coords = "Coordinates are relative to the image, normalised to 0-1000 on both axes."
  else:
    size = f" of this {image_size[0]}x{image_size[1]} image" if image_size else " of this image"
    coords = f"Coordinates are absolute pixel positions{size}."
  return (
      "Find every small object in this image that is clearly visible and identifiable: small items, "
      "parts of larger things, text, signs, labels, logos, small animals or people in the distance. "
      "Skip large objects, background regions and anything too blurry to name with confidence.\n"
      "For each object give a tight bounding box [x0, y0, x1, y1], a short specific label, and your "
      f"confidence from 0 to 1 that the box holds that object. {coords}\n"
      "Output only a JSON list, for example:\n"
      '[{"bbox_2d": [x0, y0, x1, y1], "label": "red bicycle bell", "confidence": 0.9}]\n'
      "If there are no such objects, output []."
  )


def objects_prompt(k: int = 16) -> str:
  """Ask for the names of up to k small objects that appear once (each is then found by the detector)."""
  return (
      "List the distinct small objects in this image that appear exactly once: small items, parts of "
      "larger things, text, signs, labels, logos, small animals or people in the distance. Name each "
      "with a short, specific noun phrase that tells it apart from everything else in the image (for "
      "example 'red bicycle bell' or 'white sign with blue text'). Skip large objects, background "
      "regions, anything that appears more than once and anything too blurry to name with confidence.\n"
      f"List at most {k}. Output only a JSON list of strings, for example:\n"
      '["red bicycle bell", "white sign with blue text"]\n'
      "If there are no such objects, output []."
  )


def questions_prompt(k: int = 3, label: str | None = None,
                     dimensions: Sequence[str] = DIMENSIONS) -> str:
  """Ask for k questions about the crop, each tagged with one perception dimension."""
  guide = "\n".join(f"- {d}: {DIMENSION_GUIDE[d]}" for d in dimensions)
  subject = f" The region shows: {label}." if label else ""
  return (
      f"This image is a zoomed-in region of a larger photo.{subject} Write {k} questions about fine "
      "visual details that can be answered by looking at this image alone.\n\n"
      f"Dimensions (use a different one for each question where possible):\n{guide}\n\n"
      "Rules:\n"
      "1. Each question has exactly one correct answer that is short, factual and concrete: a word, "
      "a number or a short phrase (or the exact text, for reading questions).\n"
      "2. Name the target precisely (which object, which part), so the question stays unambiguous "
      "when asked about the whole photo.\n"
      "3. Do not mention the crop, the zoom, the image border or this instruction. No yes/no "
      "questions, no opinions, no guesses about things that are not visible.\n"
      "4. If the image is too blurry or empty for good questions, output [].\n\n"
      f"Output only a JSON list of {k} objects with the keys \"question\" and \"dimension\" "
      f"(one of: {', '.join(dimensions)}), for example:\n"
      '[{"question": "What colour is the umbrella handle?", "dimension": "colour"}]'
  )


def check_prompt(question: str, dimension: str | None = None, full_image: bool = False) -> str:
  """Ask whether the question is unambiguous and answerable from the crop (yes/no).

  full_image: the request carries the full image first and the crop second, so the checker can also
  reject questions with a different answer elsewhere in the full image (the authors' criterion).
  """
  images = ("Image 1 is a full photo and Image 2 a zoomed-in region of it.\n" if full_image
            else "The image is a zoomed-in region of a larger photo.\n")
  consistent = ("- the full photo has no other object that would give a different answer;\n"
                if full_image else "")
  kind = f" ({dimension} question)" if dimension else ""
  return (
      f"{images}Question{kind}: {question}\n\n"
      "Is this a good question? Say yes only if ALL hold:\n"
      "- it can be answered by looking at the zoomed-in region alone;\n"
      "- it has exactly one correct, short answer (not a matter of opinion or guessing);\n"
      f"{consistent}"
      "- it names its target clearly (no vague 'it' or 'this object' when several could be meant).\n"
      "Reply with one word: yes or no."
  )


_ANSWER_HINT = {
    "counting": "Answer with a number in digits.",
    "ocr": "Answer with the exact text as written.",
}


def answer_prompt(question: str, dimension: str | None = None) -> str:
  """Ask for a short answer on the crop (sampled 8 times for the vote)."""
  hint = _ANSWER_HINT.get(dimension or "", "Answer with a single word or a short phrase.")
  return f"{question}\n{hint} Output only the answer."


def distractors_prompt(question: str, answer: str, k: int = 3, dimension: str | None = None) -> str:
  """Ask for k plausible but wrong options for a multiple-choice question."""
  del dimension  # same rules for every dimension; kept so every builder takes the context it is given
  return (
      "You are writing a multiple-choice question about this image.\n"
      f"Question: {question}\nCorrect answer: {answer}\n\n"
      f"Write {k} plausible but INCORRECT options. They must be relevant to the image and the "
      "question, clearly different from the correct answer (no synonyms or rephrasings of it), "
      "plausible at first glance, and of the same kind, format and length as the correct answer.\n"
      f"Do not include the correct answer. Output only a JSON list of {k} strings, for example:\n"
      '["option 1", "option 2", "option 3"]'
  )


def group_prompt(question: str, answers: Sequence[str]) -> str:
  """Ask which sampled answers mean the same (the vote counts groups of equal meaning)."""
  listing = "\n".join(f"{i}. {a}" for i, a in enumerate(answers, 1))
  return (
      f"Several people answered this question about an image.\nQuestion: {question}\n\nAnswers:\n{listing}\n\n"
      "Group the answers that mean the same thing: the same number however it is written ('2', 'two', "
      "'a pair'), the same text, colour, material or object in other words. Answers that differ in "
      "meaning, or are more or less specific in a way that matters for the question, go to different "
      "groups. Put every answer number in exactly one group.\n"
      "Output only a JSON list of groups, each a list of answer numbers, for example: [[1, 3], [2]]"
  )


def student_prompt(question: str, options: Sequence[str] = ()) -> str:
  """The boxed full-image question as the student sees it (difficulty filter); the same text as
  records.ground(record, "overlay"), for use before a record exists."""
  return f"{format_question(question, options)}\n\n{FOCUS_OVERLAY}"


# ----------------------------------------------------------------------------------------------
# Parsers
# ----------------------------------------------------------------------------------------------


def parse_questions(text: Any, k: int, *, strict: bool = True) -> list[tuple[str, str]]:
  """Up to k (question, dimension) pairs; [] when the teacher declined with an empty list.

  strict: an entry with an unknown dimension raises ParseError; otherwise such entries are skipped
  (ParseError only when none is left).
  """
  raw = text
  text = as_text(text)
  items = json_items(text, dict, ("question",))
  if items is None:
    raise ParseError("no JSON list of questions in teacher output", raw)
  out, seen = [], set()
  for item in items:
    if not isinstance(item, dict):
      if strict:
        raise ParseError(f"question entry is a {type(item).__name__}, not an object", repr(item))
      continue
    q = item.get("question", item.get("q"))
    if not isinstance(q, str) or not q.strip():
      if strict:
        raise ParseError("question entry has no question text", repr(item))
      continue
    tag = next((item[key] for key in ("dimension", "type", "category") if key in item), None)
    dim = normalise_dimension(tag)
    if dim is None:
      if strict:
        raise ParseError(f"unknown dimension {tag!r} (dimensions are {DIMENSIONS})", repr(item))
      continue
    q = " ".join(q.split())
    if q.lower() not in seen:
      seen.add(q.lower())
      out.append((q, dim))
  if items and not out:
    raise ParseError("no usable question in teacher output", raw)
  return out[:k]


def parse_yes_no(text: Any) -> bool:
  """The checker's verdict (`zwz_jax.answers.parse_yes_no`, the LLM judge's reading too); raises
  ParseError when the output gives none."""
  verdict = answers.parse_yes_no(as_text(text))
  if verdict is None:
    raise ParseError("no yes/no verdict in teacher output", text)
  return verdict


_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|[A-Ja-j][.)])\s+(.+?)\s*$")


def parse_list(text: Any) -> list[str]:
  """A list of short strings: a JSON list, else bulleted or numbered lines."""
  raw = text
  text = as_text(text)
  items = json_items(text, (str, int, float))
  if items is not None:
    out = [str(v).strip() for v in items if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    return [s for s in out if s]
  out = [m.group(1).strip().strip("\"'") for m in map(_BULLET.match, text.splitlines()) if m]
  if not out:
    raise ParseError("no list in teacher output", raw)
  return out


_NAME_KEYS = ("name", "label", "object", "category")


def parse_names(text: Any, k: int) -> list[str]:
  """Up to k distinct object names (case and spacing folded); [] when the teacher listed none.
  Takes a JSON list of strings or of objects with a name / label, else bulleted or numbered lines."""
  items = json_items(as_text(text), (str, dict))
  if items is None:
    items = parse_list(text)
  names = {}
  for item in items:
    if isinstance(item, dict):
      item = next((item[key] for key in _NAME_KEYS if isinstance(item.get(key), str)), "")
    name = " ".join(str(item).split()).strip(" .")
    if name and len(names) < k:
      names.setdefault(name.casefold(), name)
  return list(names.values())


def parse_groups(text: Any, n: int) -> list[int]:
  """One group id per answer (the index of its group in the reply) from a JSON list of groups of
  1-based answer numbers; every answer must be in exactly one group."""
  raw = text
  text = as_text(text)
  groups = json_items(text, list)
  if groups is None or not groups:
    raise ParseError("no JSON list of groups in teacher output", raw)
  ids = [None] * n
  for g, members in enumerate(groups):
    if not isinstance(members, list) or not members:
      raise ParseError(f"group {g + 1} is not a non-empty list of answer numbers", raw)
    for m in members:
      if isinstance(m, bool) or not isinstance(m, (int, float)) or m != int(m) or not 1 <= int(m) <= n:
        raise ParseError(f"{m!r} in group {g + 1} is not an answer number 1-{n}", raw)
      if ids[int(m) - 1] is not None:
        raise ParseError(f"answer {int(m)} is in two groups", raw)
      ids[int(m) - 1] = g
  missing = [i + 1 for i, g in enumerate(ids) if g is None]
  if missing:
    raise ParseError(f"answer(s) {missing} are in no group", raw)
  return ids


_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_ANSWER_PREFIX = re.compile(r"^(?:final answer|answer)\s*[:：]\s*", re.IGNORECASE)


def parse_answer(text: Any) -> str:
  """A short answer: the last \\boxed{} if any, else the first non-empty line, without an "Answer:"
  prefix, markdown emphasis, surrounding quotes or a final period.
  """
  raw = text
  text = as_text(text)
  boxed = _BOXED.findall(text)
  if boxed:
    text = boxed[-1]
  line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
  line = _ANSWER_PREFIX.sub("", line)
  line = line.strip().strip("*_`").strip().strip("\"'").strip()
  if line.endswith(".") and not line.endswith(".."):
    line = line[:-1].rstrip()
  if not line:
    raise ParseError("empty answer", raw)
  return line
