"""Answer verification by majority vote, and the 4-option multiple-choice question built from it.

A question is kept when at least `min_agreement` of its sampled answers (6 of 8 in the paper) fall in
one group. Groups come from `normalise_answer` (surface variants such as "Blue." and "blue", "3" and
"three"), optionally merged further by a semantic `grouper` (the paper groups with an LLM).
"""
from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from typing import Callable, Sequence

from zwz_jax.records import OPTION_LETTERS

_ARTICLES = {"a", "an", "the"}
_SPELLING = {"grey": "gray", "colour": "color", "colours": "colors", "centre": "center", "metre": "meter"}
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES) | {"dozen"}


class NotEnoughOptions(ValueError):
  """Fewer distinct options than asked for, after removing duplicates of the answer and each other."""

  def __init__(self, have: int, need: int):
    self.have, self.need = have, need
    super().__init__(f"only {have} distinct option(s) (answer included), {need} needed")

  def __reduce__(self):
    return type(self), (self.have, self.need)


def _words_to_number(words: list[str]) -> int:
  total, current = 0, 0
  for w in words:
    if w in _UNITS:
      current += _UNITS[w]
    elif w in _TENS:
      current += _TENS[w]
    elif w == "dozen":
      current = (current or 1) * 12
    elif w == "hundred":
      current = (current or 1) * 100
    else:  # thousand, million
      total += (current or 1) * _SCALES[w]
      current = 0
  return total + current


def _numbers(tokens: list[str]) -> list[str]:
  out, run = [], []
  for i, t in enumerate(tokens):
    # "and" continues a number only between number words ("one hundred and five").
    joins = t == "and" and run and i + 1 < len(tokens) and tokens[i + 1] in _NUMBER_WORDS
    if t in _NUMBER_WORDS or joins:
      if t != "and":
        run.append(t)
      continue
    if run:
      out.append(str(_words_to_number(run)))
      run = []
    out.append(t)
  if run:
    out.append(str(_words_to_number(run)))
  return out


def normalise_answer(text: str | None) -> str:
  """Case, punctuation, articles and whitespace folded; number words as digits; "" for no answer."""
  if not text:
    return ""
  s = unicodedata.normalize("NFKC", str(text)).casefold()
  s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
  s = s.replace("%", " percent ").replace("&", " and ")
  chars = []
  for i, c in enumerate(s):
    keep_point = c == "." and 0 < i < len(s) - 1 and s[i - 1].isdigit() and s[i + 1].isdigit()
    chars.append(" " if unicodedata.category(c).startswith("P") and not keep_point else c)
  tokens = [_SPELLING.get(t, t) for t in "".join(chars).split()]
  content = [t for t in tokens if t not in _ARTICLES]
  tokens = content or tokens  # an answer that is only "A" stays "a"
  return " ".join(_numbers(tokens))


@dataclasses.dataclass(frozen=True)
class Consensus:
  keep: bool
  answer: str  # most frequent original wording in the majority group ("" when no answer parsed)
  votes: dict[str, int]  # normalised group answer -> count, most voted first
  agreement: float  # majority group size / number of samples (failed samples count against it)
  minority: list[str]  # one original wording per other group, most voted first: natural distractors
  reason: str = "ok"  # ok | no_answers | tie | below_threshold


def _union_find(n: int, pairs) -> list[int]:
  parent = list(range(n))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  for a, b in pairs:
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[max(ra, rb)] = min(ra, rb)
  return [find(i) for i in range(n)]


def consensus(answers: Sequence[str | None], min_agreement: int,
              grouper: Callable[[list[str]], list[int]] | None = None) -> Consensus:
  """Majority vote over sampled answers; None or empty entries are failed samples.

  grouper: given the non-empty answers, returns one group id per answer (e.g. from an LLM judging
  meaning); answers with equal normalised forms are always in one group.
  A tie for the top group is never kept: there is no single answer to distil.
  """
  if min_agreement < 1:
    raise ValueError(f"min_agreement must be >= 1, got {min_agreement}")
  total = len(answers)
  valid = [a.strip() for a in answers if isinstance(a, str) and normalise_answer(a)]
  if not valid:
    return Consensus(False, "", {}, 0.0, [], "no_answers")
  norms = [normalise_answer(a) for a in valid]
  first = {}
  pairs = [(first.setdefault(n, i), i) for i, n in enumerate(norms)]
  if grouper is not None:
    ids = list(grouper(list(valid)))
    if len(ids) != len(valid):
      raise ValueError(f"grouper returned {len(ids)} group ids for {len(valid)} answers")
    first_of_id = {}
    pairs += [(first_of_id.setdefault(g, i), i) for i, g in enumerate(ids)]
  roots = _union_find(len(valid), pairs)

  groups: dict[int, list[int]] = {}
  for i, r in enumerate(roots):
    groups.setdefault(r, []).append(i)
  # Most voted first; equal counts in order of first appearance (roots are the smallest index).
  ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))

  def representative(members: list[int]) -> str:
    counts = {}
    for i in members:
      counts[valid[i]] = counts.get(valid[i], 0) + 1
    return max(counts, key=lambda a: (counts[a], -valid.index(a)))

  reps = [representative(g) for g in ordered]
  votes = {normalise_answer(r): len(g) for r, g in zip(reps, ordered)}
  top = len(ordered[0])
  tie = len(ordered) > 1 and len(ordered[1]) == top
  reason = "tie" if tie else ("below_threshold" if top < min_agreement else "ok")
  return Consensus(reason == "ok", reps[0], votes, top / total, reps[1:], reason)


def _harmonise(option: str, answer: str) -> str:
  # Options whose style differs from the answer (capital letter, final period) give the answer away.
  if answer[:1].islower() and option[:1].isupper() and not option[1:2].isupper():
    option = option[0].lower() + option[1:]
  elif answer[:1].isupper() and option[:1].islower():
    option = option[0].upper() + option[1:]
  if not answer.endswith(".") and option.endswith(".") and not option.endswith(".."):
    option = option[:-1]
  return option


def make_multiple_choice(answer: str, distractors: Sequence[str], rng: random.Random,
                         num_options: int = 4, *, harmonise: bool = True) -> tuple[tuple[str, ...], str]:
  """(options, letter of the answer). Distractors are used in the order given (minority answers
  first, then the teacher's), skipping empties and any that normalise equal to the answer or to an
  earlier option; the order is then shuffled with `rng`.
  """
  if not 2 <= num_options <= len(OPTION_LETTERS):
    raise ValueError(f"num_options must be in [2, {len(OPTION_LETTERS)}], got {num_options}")
  answer = " ".join(str(answer).split())
  if not normalise_answer(answer):
    raise ValueError(f"answer {answer!r} is empty after normalisation")
  options, seen = [answer], {normalise_answer(answer)}
  for d in distractors:
    if len(options) == num_options:
      break
    if not isinstance(d, str):
      continue
    d = " ".join(d.split())
    if harmonise and d:
      d = _harmonise(d, answer)
    n = normalise_answer(d)
    if n and n not in seen:
      seen.add(n)
      options.append(d)
  if len(options) < num_options:
    raise NotEnoughOptions(len(options), num_options)
  order = list(range(num_options))
  rng.shuffle(order)
  shuffled = tuple(options[i] for i in order)
  return shuffled, OPTION_LETTERS[order.index(0)]
