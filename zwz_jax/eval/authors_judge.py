"""The ZwZ authors' answer judge, rule steps only (inclusionAI/Zooming-without-Zooming,
mm-eval/judge_qwenlm.py), reported beside ours: the paper's numbers were read this way, defects
included.

Extraction: the text between <answer> and </answer> (their slice drops the last character when the
closing tag is missing), else from "Answer:" on, else the last three lines. Then mathruler's
grade_answer(gt, extracted), in their argument order; then, for benchmarks on their MCQ list only,
the first letter of the extraction: "(X)", else "X." / "X)" / "X ", else the first capital letter
anywhere, so "Answer: D" reads as A. What neither step accepts goes to their LLM judge
(Qwen3-30B-A3B-Instruct-2507), which is not run here: those answers are counted as undecided.
"""
from __future__ import annotations

import re

# The benchmark kinds we load (zwz_jax.eval.benchmarks.KINDS) that their first-letter step applies
# to. Their MCQ list: mmstar, hrbench-4k, hrbench-8k, vstar, cvbench-2d, cvbench-3d, colorbench,
# mme-realworld, mme-realworld-cn; ZoomBench is not on it.
MCQ_KINDS = ("vstar", "hrbench", "mme_realworld")


def extract(output: str) -> str:
  if "<answer>" in output:
    return output[output.find("<answer>"):output.find("</answer>")].replace("<answer>", "").replace("</answer>", "")
  if "Answer:" in output:
    return output[output.find("Answer:"):]
  return "\n".join(output.split("\n")[-3:])


def first_option(text: str) -> str:
  """Their reading of a prediction's letter."""
  for pattern in (r"\(([A-Z])\)", r"([A-Z])[\.\)\s]", r"([A-Z])"):
    m = re.search(pattern, text or "")
    if m:
      return m.group(1)
  return ""


def reference_option(gt: str) -> str:
  """Their reading of a reference answer's letter ("C", "(C)", "C. red"; not "Cat")."""
  m = re.match(r"^[ (\[]*([A-F])(?:(?=$)|[\.\)\]]|(?:[\:\-]\s+))", (gt or "").strip())
  return m.group(1) if m else ""


def verdict(output: str, gt: str, *, mcq: bool) -> bool | None:
  """True where their rules accept the answer; None where their LLM judge would decide."""
  try:
    from mathruler.grader import grade_answer
  except ImportError:
    raise ImportError("the authors' judge needs mathruler: pip install mathruler pylatexenc") from None
  extracted = extract(output or "")
  try:
    if grade_answer(gt, extracted):
      return True
  except Exception:  # their loop counts a grader error as not right
    pass
  if mcq and gt and first_option(extracted) and reference_option(gt) == first_option(extracted):
    return True
  return None
