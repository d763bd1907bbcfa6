"""The ZwZ authors' judge rules read answers as their script does, defects included, and the report
puts them beside ours."""
import pytest

from zwz_jax.eval import authors_judge as A


@pytest.mark.parametrize("output,want", [
    ("I think... <answer> C </answer>", " C "),
    ("reasoning <answer>blue car", "blue ca"),  # no closing tag: their slice drops the last character
    ("The sign says EXIT.\nAnswer: D", "Answer: D"),
    ("line 1\nline 2\nline 3\nline 4", "line 2\nline 3\nline 4"),
])
def test_extraction(output, want):
  assert A.extract(output) == want


@pytest.mark.parametrize("text,want", [
    ("(B) red", "B"), ("B. red", "B"), ("C) green", "C"), ("D is right", "D"),
    ("Answer: D", "A"),  # the first capital letter: their known misreading
    ("the answer is d", ""), ("", ""),
])
def test_first_option(text, want):
  assert A.first_option(text) == want


@pytest.mark.parametrize("gt,want", [("C", "C"), ("(C)", "C"), ("C. red", "C"), ("Cat", ""), ("G", "")])
def test_reference_option(gt, want):
  assert A.reference_option(gt) == want


def test_verdicts():
  assert A.verdict("<answer>C</answer>", "C", mcq=False) is True  # mathruler: equal strings
  assert A.verdict("<answer>3.0</answer>", "3", mcq=False) is True  # and equal numbers
  assert A.verdict("<answer>(C) white</answer>", "C", mcq=True) is True  # the first-letter step
  assert A.verdict("<answer>(C) white</answer>", "C", mcq=False) is None  # ZoomBench: to their LLM judge
  assert A.verdict("Answer: D", "D", mcq=True) is None  # read as A, so not accepted by the rules
  assert A.verdict("<answer>B</answer>", "C", mcq=True) is None


def test_report_puts_them_beside_ours():
  from zwz_jax.eval import zoombench
  rows = [("a", True, True), ("b", True, None), ("c", False, None), ("d", False, True)]
  preds = {(i, v): {"id": i, "view": v, "correct": ok, "error": None, "dimension": "ocr", "answer_type": "mc",
                    "authors": theirs} for i, ok, theirs in rows for v in zoombench.VIEWS}
  rep = zoombench.report(preds)
  assert rep["authors_rules"]["global"] == {"right": 2, "undecided": 2, "accuracy": 0.5}
  assert rep["views"]["global"]["accuracy"] == 0.5
  md = zoombench.benchmark_markdown({"ckpt": rep})
  assert "The authors' rules on the same answers" in md and "| ckpt | global | 50.0 | 50.0 | 2 |" in md
  assert "authors' rules" not in zoombench.benchmark_markdown({"ckpt": zoombench.report(
      {k: {kk: vv for kk, vv in v.items() if kk != "authors"} for k, v in preds.items()})})
