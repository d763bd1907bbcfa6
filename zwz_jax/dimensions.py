"""The six perception dimensions (records.DIMENSIONS): from a label, and from a question.

`normalise_dimension` reads a teacher's or a benchmark's label ("Color", "text/OCR", "Fine-Grained
Counting"); `infer_dimension` reads the question itself, for benchmarks that carry no label (the
released ZoomBench). Both data generation and evaluation use them; no jax.
"""
from __future__ import annotations

import re
from typing import Any

from zwz_jax.records import DIMENSIONS

_SYNONYMS = {
    "count": "counting", "counts": "counting", "number": "counting", "quantity": "counting",
    "how many": "counting", "numerosity": "counting",
    "text": "ocr", "reading": "ocr", "text recognition": "ocr", "optical character recognition": "ocr",
    "scene text": "ocr", "character recognition": "ocr",
    "color": "colour", "colors": "colour", "colours": "colour", "hue": "colour",
    "shape": "structure", "shapes": "structure", "form": "structure", "geometry": "structure",
    "pattern": "structure", "structural": "structure",
    "materials": "material", "texture": "material", "composition": "material",
    "object": "identification", "objects": "identification", "identity": "identification",
    "identify": "identification", "object identification": "identification", "recognition": "identification",
    "object recognition": "identification", "category": "identification", "classification": "identification",
}

# Single words that name a dimension inside a longer label; broader synonyms only match whole labels.
_WORDS = {"count": "counting", "text": "ocr", "color": "colour", "shape": "structure",
          "texture": "material", "object": "identification"}


def normalise_dimension(name: Any) -> str | None:
  """A DIMENSIONS name for a dimension label ("Color", "text/OCR", "Fine-Grained Counting"), else None."""
  if not isinstance(name, str):
    return None
  s = re.sub(r"[_\-]+", " ", name.strip().lower())
  s = re.sub(r"\s+", " ", s).strip(" .:")
  if s in DIMENSIONS:
    return s
  if s in _SYNONYMS:
    return _SYNONYMS[s]
  found = set()
  for part in re.split(r"\s*(?:/|,|&|\band\b|\bor\b|\(|\))\s*", s):
    part = part.strip()
    if part in DIMENSIONS or part in _SYNONYMS:
      found.add(part if part in DIMENSIONS else _SYNONYMS[part])
  if not found:
    for word in s.split():  # "colour question", "material type"
      if word in DIMENSIONS or word in _WORDS:
        found.add(word if word in DIMENSIONS else _WORDS[word])
  return found.pop() if len(found) == 1 else None


_MATERIALS = r"(?:wood(?:en)?|metal(?:lic)?|plastic|glass|stone|brick|fabric|leather|concrete|paper|ceramic|rubber)"
# What the question asks about, most specific first: "How many letters are on the sign?" counts,
# "What colour is the text?" asks a colour, "What shape is the label?" a shape; what is left of a
# wh-question asks what something is.
_RULES = (
    # "number of" counts, but a plate's, phone's or jersey's number is read.
    ("counting", r"\bhow many\b|(?<!plate )(?<!phone )(?<!serial )(?<!jersey )(?<!house )\bnumber of\b"
                 r"|\bcount(?:ing)?\b"),
    ("colour", r"\bcolou?rs?(?:ed)?\b|\bhues?\b|\bshade of\b"),
    ("material", r"\bmade (?:of|from|out of)\b|\bmaterials?\b|\btextures?\b|\bfabric\b|\bconstructed (?:of|from)\b"
                 rf"|\b{_MATERIALS}\b.*\bor\b.*\b{_MATERIALS}\b"),
    ("structure", r"\bshape[sd]?\b|\bpatterns?\b|\bpatterned\b|\bform\b|\barrange(?:d|ment)\b|\bstructure\b"
                  r"|\bdirection\b|\bpointing\b|\bfacing\b|\borient(?:ed|ation)\b|\blayout\b|\bgeometric\b|\bstriped\b"),
    ("ocr", r"\bwritten\b|\bwriting\b|\bwords?\b|\btext\b|\bsays?\b|\bread\b|\bletters?\b|\bprinted\b|\bdigits?\b"
            r"|\b(?:what|which) number\b|\bnumber (?:is|on)\b|\blicen[cs]e plate\b|\btitle\b|\bbrand\b|\blabel(?:led|ed)?\b"
            r"|\bprice\b|\binscription\b|\bcharacters?\b|\bspell"),
)


def infer_dimension(question: str) -> str:
  """The dimension a fine-grained question asks about, read from its wording (keyword rules in
  `_RULES`, most specific first; anything else is identification)."""
  q = question.lower()
  for dim, pattern in _RULES:
    if re.search(pattern, q):
      return dim
  return "identification"
