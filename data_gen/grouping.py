"""Which of a question's sampled answers mean the same, before the 6-of-8 vote (answers.grouper).

`rules`: answers equal after zwz_jax.answers.normalise_answer are one group (always true, whatever
the grouper). `llm`: a teacher (the authors use an LLM) also groups answers by meaning ("2", "two"
and "a pair"), one text-only request per question; a reply that cannot be read is counted
(errors/unparsable_groups) and that question is voted by the rules alone.
"""
from __future__ import annotations

import collections
from typing import Sequence

from data_gen import consensus, prompts
from data_gen.teachers.base import Request, Teacher
from zwz_jax.answers import normalise_answer

GROUPERS = ("rules", "llm")


def llm_groups(teacher: Teacher, questions: Sequence[tuple[str, dict]], votes: Sequence[Sequence[str | None]],
               counts: collections.Counter) -> list[list[int] | None]:
  """Per question ((question, request context), its sampled answers): one group id per answer of
  consensus.valid_answers, or None where the rules decide (fewer than two distinct answers: nothing
  to merge; or an unreadable reply, counted)."""
  reqs, asked = [], []
  for k, ((question, context), answers) in enumerate(zip(questions, votes)):
    valid = consensus.valid_answers(answers)
    # One wording per normalised form (the rules merge those anyway): a shorter prompt.
    forms = list(dict.fromkeys(normalise_answer(a) for a in valid))
    if len(forms) < 2:
      continue
    distinct = [next(a for a in valid if normalise_answer(a) == f) for f in forms]
    reqs.append(Request(images=(), prompt=prompts.group_prompt(question, distinct), task="group", n=1,
                        temperature=0.0, context={**context, "question": question, "answers": distinct}))
    asked.append((k, valid, forms, distinct))
  counts["grouped_questions"] += len(reqs)
  out: list[list[int] | None] = [None] * len(votes)
  for (k, valid, forms, distinct), reply in zip(asked, teacher.generate(reqs) if reqs else []):
    try:
      ids = prompts.parse_groups(reply[0], len(distinct))
    except prompts.ParseError:
      counts["errors/unparsable_groups"] += 1
      continue
    out[k] = [ids[forms.index(normalise_answer(a))] for a in valid]
  return out
