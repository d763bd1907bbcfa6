"""Answer verification by majority vote, and the 4-option multiple-choice question built from it.

A question is kept when at least `min_agreement` of its sampled answers (6 of 8 in the paper) fall in
one group. Groups come from `zwz_jax.answers.normalise_answer` (surface variants such as "Blue." and
"blue", "3" and "three"; the judge compares answers by the same function), optionally merged further
by groups of meaning (the paper groups with an LLM: data_gen/grouping.py).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from zwz_jax.answers import normalise_answer
from zwz_jax.records import OPTION_LETTERS


class NotEnoughOptions(ValueError):
  """Fewer distinct options than asked for, after removing duplicates of the answer and each other."""

  def __init__(self, have: int, need: int):
    self.have, self.need = have, need
    super().__init__(f"only {have} distinct option(s) (answer included), {need} needed")

  def __reduce__(self):
    return type(self), (self.have, self.need)


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


def valid_answers(answers: Sequence[str | None]) -> list[str]:
  """The answers a vote counts (stripped; failed samples and empty ones left out), in order: what
  `groups` in `consensus` labels."""
  return [a.strip() for a in answers if isinstance(a, str) and normalise_answer(a)]


def consensus(answers: Sequence[str | None], min_agreement: int, groups: Sequence[int] | None = None) -> Consensus:
  """Majority vote over sampled answers; None or empty entries are failed samples.

  groups: one group id per answer of `valid_answers(answers)` (e.g. an LLM's judgement of meaning);
  answers with equal normalised forms are always in one group.
  A tie for the top group is never kept: there is no single answer to distil.
  """
  if min_agreement < 1:
    raise ValueError(f"min_agreement must be >= 1, got {min_agreement}")
  total = len(answers)
  valid = valid_answers(answers)
  if not valid:
    return Consensus(False, "", {}, 0.0, [], "no_answers")
  norms = [normalise_answer(a) for a in valid]
  first = {}
  pairs = [(first.setdefault(n, i), i) for i, n in enumerate(norms)]
  if groups is not None:
    if len(groups) != len(valid):
      raise ValueError(f"{len(groups)} group ids for {len(valid)} answers")
    first_of_id = {}
    pairs += [(first_of_id.setdefault(g, i), i) for i, g in enumerate(groups)]
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
