"""What counts as the same answer: the rules shared by data generation's vote and the judge.

`normalise_answer` folds surface variants ("Blue." and "blue", "3" and "three", "grey" and "gray");
the consensus vote groups teacher answers by it (data_gen/consensus.py) and the judge compares open
answers by it, so a sample kept as "6 of 8 agree" is judged by the same notion of agreement.

The judge: option letters, numbers and short open answers by rule, an LLM (any callable, e.g.
`zwz_jax.eval.judge.LLMJudge`) for what the rules cannot settle. Rule first, as the authors'
evaluation does, but stricter about what counts as an option letter: their first-capital-letter
fallback reads "Answer: D" as "A" and "A red car" as option A; here a letter counts only where it is
clearly a choice ("D", "(d)", "D.", "Answer: D", "**D**", "\\boxed{D}", "Option D").

Pure python: imports neither jax nor torch (data_gen uses it).
"""
from __future__ import annotations

import dataclasses
import re
import string
import unicodedata
from typing import Callable, Sequence

from zwz_jax.records import OPTION_LETTERS

ANSWER_TYPES = ("mc", "number", "text")
_ASCII_ALNUM = set(string.ascii_letters + string.digits)

# ----------------------------------------------------------------------------------------------
# Extracting the final answer
# ----------------------------------------------------------------------------------------------

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


def extract_answer(text) -> str:
  """The final answer part of a response: last <answer>...</answer>, else after the last </think>."""
  if text is None:
    return ""
  text = str(text)
  tagged = _ANSWER_TAG.findall(text)
  if tagged:
    return tagged[-1].strip()
  low = text.lower()
  if "<answer>" in low:  # opened but cut off by the token limit: what follows is still the answer
    return text[low.rindex("<answer>") + len("<answer>"):].strip()
  if "</think>" in low:
    return text[low.rindex("</think>") + len("</think>"):].strip()
  return text.strip()


def _last_boxed(text: str) -> str | None:
  """Content of the last \\boxed{...}, braces balanced."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  i, depth = start + len("\\boxed{"), 1
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j]
  return text[i:]


def _clean(text: str) -> str:
  """Final answer without markup: boxed content, \\text{}, markdown emphasis, quotes, math dollars."""
  text = unicodedata.normalize("NFKC", text)
  boxed = _last_boxed(text)
  if boxed is not None:
    text = boxed
  text = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}", r"\1", text)
  text = re.sub(r"[*`$\"“”]", "", text)
  return text.strip()


# ----------------------------------------------------------------------------------------------
# Normalised text and numbers
# ----------------------------------------------------------------------------------------------

_ARTICLES = {"a", "an", "the"}
# Words that turn "red" inside a prediction into something else ("not red", "red or blue").
_NEGATION = {"not", "no", "never", "neither", "nor", "or", "isnt", "arent", "wasnt", "werent", "dont",
             "doesnt", "cannot", "cant", "none", "unclear", "unsure"}


_SPELLING = {"grey": "gray", "colour": "color", "colours": "colors", "centre": "center", "metre": "meter"}


def normalise_answer(s) -> str:
  """Case, punctuation and symbols (apostrophes dropped, "1,000" and decimals kept whole), articles
  (unless the answer is only one: "A" stays "a"), British spellings and whitespace folded; numbers
  in words as digits ("twenty-one" -> "21"); "" for no answer."""
  if s is None:
    return ""
  s = unicodedata.normalize("NFKC", str(s)).casefold()
  s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
  s = s.replace("%", " percent ").replace("&", " and ")
  s = re.sub(r"['’`]", "", s)
  s = re.sub(r"(?<=\d)\.(?=\d)", "\x00", s)  # keep decimals through the punctuation pass
  s = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in s)
  tokens = [_SPELLING.get(t, t) for t in s.replace("\x00", ".").split()]
  content = [t for t in tokens if t not in _ARTICLES]
  return " ".join(_words_as_digits(content or tokens))


_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_UNITS["none"] = 0
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
# "the one on the left" is a pronoun, not a count.
_NOT_A_COUNT_BEFORE_ONE = {"the", "this", "that", "which", "each", "every", "any", "another", "other", "left",
                           "right", "top", "bottom", "middle", "last", "first", "same", "no", "only", "one"}
_NUMBER_WORDS = set(_UNITS) | set(_TENS) | set(_SCALES) | {"dozen"}


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


def _words_as_digits(tokens: list[str]) -> list[str]:
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


_DIGITS = re.compile(r"(?<![\d.])([-+](?=\d))?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?!\d)")
_NUMBER_ANCHOR = re.compile(r"(?i)\b(?:answer|total)\b|答案")


def _numbers(text: str) -> list[tuple[int, float]]:
  """(position, value) of every number written in digits or English words, in order."""
  found = []
  for m in _DIGITS.finditer(text):
    sign = -1.0 if m.group(1) == "-" and (m.start() == 0 or text[m.start() - 1].isspace()) else 1.0
    found.append((m.start(), sign * float(m.group(2).replace(",", ""))))
  low = text.lower()
  words = [(m.start(), m.end(), m.group(0)) for m in re.finditer(r"[a-z]+", low)]
  i = 0
  while i < len(words):
    pos, _, w = words[i]
    if w not in _UNITS and w not in _TENS:
      i += 1
      continue
    # One number is a run of number words joined only by spaces or hyphens ("twenty-one",
    # "one hundred and five"); "one, two" are two numbers and "five six" is not fifty-six.
    total, current, last, j = 0, 0, None, i
    while j < len(words):
      if j > i and not re.fullmatch(r"[\s-]*", low[words[j - 1][1]:words[j][0]]):
        break
      v = words[j][2]
      if v in _UNITS:
        if last in ("unit", "tens") and (last == "unit" or _UNITS[v] >= 10 or _UNITS[v] == 0):
          break
        current, last = current + _UNITS[v], "unit"
      elif v in _TENS:
        if last in ("unit", "tens"):
          break
        current, last = current + _TENS[v], "tens"
      elif v in _SCALES and last in ("unit", "tens"):
        if _SCALES[v] == 100:
          current = current * 100
        else:
          total, current = total + current * _SCALES[v], 0
        last = "scale"
      elif not (v == "and" and last == "scale" and j + 1 < len(words)
                and (words[j + 1][2] in _UNITS or words[j + 1][2] in _TENS)):
        break
      j += 1
    if not (w == "one" and j == i + 1 and i > 0 and words[i - 1][2] in _NOT_A_COUNT_BEFORE_ONE):
      found.append((pos, float(total + current)))
    i = j
  return sorted(found)


def parse_number(s) -> float | None:
  """The number a short answer states ("3", "three", "The answer is 3.", "1,000", "twelve cats").

  With several different numbers, the first one after the last "answer"/"total" wins; without
  such an anchor the answer is ambiguous and None comes back.
  """
  if s is None:
    return None
  text = _clean(str(s))
  nums = _numbers(text)
  if not nums:
    return None
  values = {v for _, v in nums}
  if len(values) == 1:
    return nums[0][1]
  anchors = list(_NUMBER_ANCHOR.finditer(text))
  if anchors:
    after = [v for p, v in nums if p >= anchors[-1].end()]
    if after:
      return after[0]
  return None


def is_number_answer(answer) -> bool:
  """Whether a reference answer is a count/number: the number alone or with one unit word ("3 cats")."""
  if answer is None:
    return False
  a = _clean(str(answer)).rstrip(".").strip()
  num = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
  if re.fullmatch(rf"{num}(?:\s*%|\s+[a-z]+)?", a):
    return True
  words = a.lower().replace("-", " ").split()
  vocab = set(_UNITS) | set(_TENS) | set(_SCALES) | {"and"}
  return bool(words) and words[0] in set(_UNITS) | set(_TENS) and (
      all(w in vocab for w in words) or (all(w in vocab for w in words[:-1]) and len(words) >= 2
                                          and words[-1] not in vocab and words[-2] != "and"))


# ----------------------------------------------------------------------------------------------
# Option letters
# ----------------------------------------------------------------------------------------------

# Words that may follow a bare "A" when it is the option ("A or B", "A is correct"); any other word
# after it makes it the article ("A red car").
_CONNECTIVES = {"or", "and", "is", "was", "seems", "appears", "looks", "would", "should", "could", "might",
                "because", "since", "as", "being", "fits", "matches", "best", "only", "here"}
_BRACKET = re.compile(r"[(\[{（【]\s*([A-Za-z])\s*[)\]}）】]")
_ANSWER_KW = re.compile(
    r"(?i)(?:\b(?:final\s+answer|correct\s+answer|answer|ans)\b|答案)\s*"
    r"(?:(?:is|would\s+be|should\s+be|will\s+be|=|:|：|是|为)\s*)*"
    r"(?:(?:probably|likely|clearly|definitely)\s+)?(?:(?:option|choice|letter)\s*)?[:：]?\s*")
_CHOICE_KW = re.compile(
    r"(?i)(?:\b(?:option|choice|choose|chose|select|selected|pick|picked|go\s+with)\b|选项|选)\s*"
    r"(?:(?:is|=|:|：)\s*)?(?:option\s*)?")
_LETTER = re.compile(r"([A-Za-z])(?![A-Za-z0-9]|['’][A-Za-z])")  # "B" or "'B'", not "B's"
_JOINER = re.compile(r"(?i)\s*(?:,|/|&|\bor\b|\band\b)\s*")


def _token_at(t: str, i: int) -> tuple[str, int] | None:
  """(LETTER, end) when an option letter is written at t[i], in a form that reads as a choice."""
  if i > 0 and (t[i - 1] in _ASCII_ALNUM or t[i - 1] == "."):  # "B2", "i.e."
    return None
  m = _BRACKET.match(t, i)
  if m:
    return m.group(1).upper(), m.end()
  m = _LETTER.match(t, i)
  if not m:
    return None
  c, rest = m.group(1), t[m.end():]
  if re.match(r"[ \t]*(?:[.):;,：](?=\s|$)|\n|$)", rest):  # "D.", "d)", "B:", a letter ending the line
    return c.upper(), m.end()
  if c.islower() or c == "I":  # "a cat", "I think"
    return None
  if c == "A":
    w = re.match(r"[ \t]+([A-Za-z]+)", rest)
    if w and w.group(1).lower() not in _CONNECTIVES:
      return None  # the article
  return c, m.end()


def _choice_at(t: str, i: int, letters: str) -> tuple[str | None, bool]:
  """(letter, found): found with letter None means a hedge between options ("A or B")."""
  tok = _token_at(t, i)
  if tok is None or tok[0] not in letters:
    return None, False
  j = _JOINER.match(t, tok[1])
  if j:
    other = _token_at(t, j.end())
    if other and other[0] != tok[0]:
      return None, True
  return tok[0], True


def _match_option_text(t: str, options: Sequence[str]) -> str | None:
  """The one option whose text the answer states (exactly, else as a whole-word phrase)."""
  norm = normalise_answer(t)
  if not norm:
    return None
  opts = [normalise_answer(o) for o in options]
  exact = [i for i, o in enumerate(opts) if o and o == norm]
  if len(exact) == 1:
    return OPTION_LETTERS[exact[0]]
  padded = f" {norm} "
  inside = [i for i, o in enumerate(opts) if o and f" {o} " in padded]
  # "dark red" also contains the option "red": keep only the longest matches.
  inside = [i for i in inside if not any(j != i and f" {opts[i]} " in f" {opts[j]} " for j in inside)]
  if len(inside) == 1 and not _NEGATION & (set(norm.split()) - set(opts[inside[0]].split())):
    return OPTION_LETTERS[inside[0]]
  # Counting options ("0", "2", "1", "3") answered in words: "two".
  values = [parse_number(o) for o in options]
  if not inside and all(v is not None for v in values):
    said = parse_number(t)
    hits = [i for i, v in enumerate(values) if said is not None and v == said]
    if len(hits) == 1:
      return OPTION_LETTERS[hits[0]]
  return None


def parse_option(text, num_options: int = 4, *, options: Sequence[str] = ()) -> str | None:
  """The option letter a response chooses, or None when absent or ambiguous.

  Reads "D", "d", "(b)", "D.", "d)", "Answer: D", "The answer is (B).", "**C**", "Option B",
  "B. red", "\\boxed{C}"; never takes the "A" of "Answer" or of "A red car" for option A. With
  `options` (their texts), an answer that states one option's text instead of a letter maps to it.
  """
  letters = OPTION_LETTERS[:max(num_options, len(options))]
  t = _clean(extract_answer(text))
  if not t:
    return None
  whole = re.fullmatch(r"(?:[(\[{（【]\s*)?([A-Za-z])(?:\s*[)\]}）】])?\s*[.:：)]?", t)
  if whole:
    return whole.group(1).upper() if whole.group(1).upper() in letters else None
  # An explicit "answer is X" settles it; the last one wins (models restate after reasoning).
  for m in reversed(list(_ANSWER_KW.finditer(t))):
    letter, found = _choice_at(t, m.end(), letters)
    if found:
      return letter
  # "Option B" / "I choose B": one letter among all such mentions, else ambiguous.
  chosen = {_choice_at(t, m.end(), letters) for m in _CHOICE_KW.finditer(t)}
  chosen = {c for c in chosen if c[1]}
  if chosen:
    return chosen.pop()[0] if len(chosen) == 1 else None
  # Leading letter: "B. red", "(B) red", "B) red", "B red".
  letter, found = _choice_at(t, 0, letters)
  if found:
    return letter
  # Anywhere else: a single distinct letter written as a choice.
  seen = set()
  for m in re.finditer(r"[(\[{（【A-Za-z]", t):
    tok = _token_at(t, m.start())
    if tok and tok[0] in letters:
      seen.add(tok[0])
  if seen:
    return seen.pop() if len(seen) == 1 else None
  return _match_option_text(t, options) if options else None


def answer_letter(answer, options: Sequence[str] = ()) -> str | None:
  """The option letter a reference answer names: "C", "(C)", "C. red", or an option's exact text."""
  if answer is None:
    return None
  a = _clean(str(answer))
  letters = OPTION_LETTERS[:len(options)] if options else OPTION_LETTERS
  m = re.fullmatch(r"[(\[]?\s*([A-Ja-j])\s*[)\]]?\s*[.:)]?", a)
  if m:
    return m.group(1).upper() if m.group(1).upper() in letters else None
  m = re.fullmatch(r"(?:\(([A-J])\)|([A-J])[.:)])\s+(.+)", a, re.S)  # "C. red": the text must be C's
  if m:
    letter = m.group(1) or m.group(2)
    idx = OPTION_LETTERS.index(letter)
    if letter in letters and (not options or (idx < len(options)
                                              and normalise_answer(m.group(3)) == normalise_answer(options[idx]))):
      return letter
  if options:
    norm = normalise_answer(a)
    hits = [i for i, o in enumerate(options) if normalise_answer(o) == norm]
    if len(hits) == 1:
      return OPTION_LETTERS[hits[0]]
  return None


# ----------------------------------------------------------------------------------------------
# The judge
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Verdict:
  correct: bool | None  # None: undecided (the LLM judge failed or gave no clear yes/no)
  method: str  # "mc" | "number" | "text" | "llm" | "empty" | "invalid"
  parsed: str | None  # what the rules read from the prediction (letter, number, normalised text)
  reason: str


_YES_NO = {"yes": "yes", "no": "no", "true": "yes", "false": "no"}


def infer_answer_type(answer, options: Sequence[str] = ()) -> str:
  """mc with options or a bare letter answer; number when the answer is a count; else text."""
  a = _clean(str(answer or ""))
  if options or re.fullmatch(r"[(\[]?[A-J][)\]]?\.?", a):
    return "mc"
  return "number" if is_number_answer(a) else "text"


def _format_number(x: float) -> str:
  return str(int(x)) if float(x).is_integer() else repr(x)


def _text_verdict(pred: str, answer: str) -> Verdict:
  p, a = normalise_answer(pred), normalise_answer(answer)
  if not a:
    return Verdict(None, "invalid", p, "empty reference answer")
  if p == a:
    return Verdict(True, "text", p, "exact match after normalisation")
  ptok, atok = p.split(), a.split()
  if a in _YES_NO and ptok and ptok[0] in _YES_NO:
    ok = _YES_NO[ptok[0]] == _YES_NO[a]
    return Verdict(ok, "text", ptok[0], f"yes/no answer {'matches' if ok else 'differs'}")
  short = len(ptok) <= max(12, 4 * len(atok))
  if short and f" {a} " in f" {p} " and not (_NEGATION - set(atok)) & set(ptok):
    return Verdict(True, "text", p, "reference contained in a short prediction")
  return Verdict(False, "text", p, "no match" if short else "no match (long prediction)")


def judge(prediction, answer, *, options: Sequence[str] = (), answer_type: str | None = None,
          llm: Callable[[str, str, str], bool | None] | None = None, question: str = "") -> Verdict:
  """Judges one prediction against the reference; never raises for a bad prediction.

  answer_type: "mc" (answer is an option letter), "number", "text", or None to infer it. `llm`
  (e.g. an LLMJudge) is asked, with `question`, when the rules cannot confirm an open answer or
  find no option choice at all; it never overrides a letter the rules did read.
  """
  options = tuple(options or ())
  answer = "" if answer is None else str(answer)
  pred = extract_answer(prediction)
  if not _clean(pred):
    return Verdict(False, "empty", None, "empty prediction")
  kind = answer_type or infer_answer_type(answer, options)
  if kind not in ANSWER_TYPES:
    return Verdict(None, "invalid", None, f"answer_type {kind!r} is not one of {ANSWER_TYPES}")

  if kind == "mc":
    ref = answer_letter(answer, options)
    if ref is None:
      return Verdict(None, "invalid", None, f"reference answer {answer!r} is not an option letter")
    n = max(len(options) or 4, OPTION_LETTERS.index(ref) + 1)
    got = parse_option(pred, n, options=options)
    if got is not None:
      ok = got == ref
      return Verdict(ok, "mc", got, f"chose {got}, answer {ref}")
    verdict = Verdict(False, "mc", None, "no unambiguous option letter in the prediction")
    ref_text = f"{ref}. {options[OPTION_LETTERS.index(ref)]}" if OPTION_LETTERS.index(ref) < len(options) else ref
    return _ask(llm, question, options, ref_text, pred, verdict) if llm else verdict

  if kind == "number":
    ref = parse_number(answer)
    if ref is None:
      return Verdict(None, "invalid", None, f"reference answer {answer!r} is not a number")
    got = parse_number(pred)
    if got is not None:
      ok = abs(got - ref) <= 1e-9 * max(1.0, abs(ref))
      return Verdict(ok, "number", _format_number(got), f"read {_format_number(got)}, answer {_format_number(ref)}")
    verdict = Verdict(False, "number", None, "no unambiguous number in the prediction")
    return _ask(llm, question, options, answer, pred, verdict) if llm else verdict

  verdict = _text_verdict(_clean(pred), answer)
  if verdict.correct is False and llm:
    return _ask(llm, question, options, answer, pred, verdict)
  return verdict


def _ask(llm, question, options, reference, prediction, rule: Verdict) -> Verdict:
  q = question
  if options:
    q = f"{question}\n" + "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
  try:
    ok = llm(q, reference, prediction)
  except Exception as e:  # one failed call must not end a long evaluation
    return Verdict(None, "llm", rule.parsed, f"{rule.reason}; LLM judge failed: {e}")
  if ok is None:
    return Verdict(None, "llm", rule.parsed, f"{rule.reason}; LLM judge gave no clear yes/no")
  return Verdict(bool(ok), "llm", rule.parsed, f"{rule.reason}; LLM judge said {'yes' if ok else 'no'}")


_YES = {"yes", "y", "true", "valid", "correct", "answerable"}
_NO = {"no", "n", "false", "invalid", "incorrect", "unanswerable"}
_VERDICT = re.compile(r"(?:valid|answer|decision|verdict|final answer|judgement|judgment)\s*[:=]\s*"
                      r"\**\s*(yes|no|valid|invalid|true|false)\b", re.IGNORECASE)


def parse_yes_no(reply) -> bool | None:
  """A model's yes/no verdict (the LLM judge's reply, data generation's question check), None when
  it says neither or both. Read from the final answer (after </think>, inside <answer> or \\boxed{}):
  the last labelled verdict ("VALID: Yes", "Final answer: no"), else its first word, else its last
  line's first word ("yes", "valid", "correct", ... or their negatives), else the one of yes/no it
  contains."""
  text = _clean(extract_answer(reply))
  verdicts = _VERDICT.findall(text)
  if verdicts:
    return verdicts[-1].lower() in _YES
  lines = [ln for ln in text.splitlines() if ln.strip()]
  for line in (text, lines[-1] if lines else ""):
    first = re.match(r"[^A-Za-z]*([A-Za-z]+)", line)
    if first and first.group(1).lower() in _YES | _NO:
      return first.group(1).lower() in _YES
  words = set(re.findall(r"[a-z]+", text.lower()))
  has_yes, has_no = "yes" in words, "no" in words
  return has_yes if has_yes != has_no else None
