"""Shared helpers for reading teacher output: text coercion, think-block stripping, JSON salvage.

Teacher text is untrusted: it may be bytes, hold invalid UTF-8, wrap JSON in markdown fences, trail
off into prose or stop mid-list when it hits the token limit. Everything here either returns
something usable or raises `ParseError` carrying a short snippet of the offending text.
"""
from __future__ import annotations

import ast
import json
import re
from typing import Any, Iterator

# Longer outputs are cut before scanning: no honest answer to our prompts is this long, and it
# bounds the time spent on runaway generations.
MAX_CHARS = 50_000
_SNIPPET = 160
_LENIENT_BUDGET = 400_000

_THINK_END = re.compile(r"</think>", re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


class ParseError(ValueError):
  """Teacher output that could not be parsed; `snippet` holds the start of the offending text."""

  def __init__(self, message: str, text: Any = ""):
    self.message, self.snippet = message, snippet(text)
    super().__init__(f"{message}: {self.snippet!r}" if self.snippet else message)

  def __reduce__(self):
    return type(self), (self.message, self.snippet)


def snippet(text: Any, n: int = _SNIPPET) -> str:
  if isinstance(text, (bytes, bytearray)):
    text = bytes(text[:n * 4]).decode("utf-8", "backslashreplace")
  text = str(text) if text is not None else ""
  text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates stay printable
  return text if len(text) <= n else text[:n] + "..."


def as_text(text: Any) -> str:
  """`text` as clean str: bytes must be UTF-8, lone surrogates and NULs are rejected."""
  if isinstance(text, (bytes, bytearray)):
    try:
      text = bytes(text).decode("utf-8")
    except UnicodeDecodeError as e:
      raise ParseError(f"teacher output is not UTF-8 ({e.reason} at byte {e.start})", text) from None
  if not isinstance(text, str):
    raise ParseError(f"teacher output is a {type(text).__name__}, not text", text)
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise ParseError("teacher output holds undecodable bytes (lone surrogates)", text) from None
  if "\x00" in text:
    raise ParseError("teacher output holds NUL bytes", text)
  # Reasoning models: the answer follows the last </think> (the opening tag may be in the template).
  ends = [m.end() for m in _THINK_END.finditer(text)]
  if ends:
    text = text[ends[-1]:]
  return text[:MAX_CHARS].strip()


def _closing(text: str, start: int, stop: int) -> int:
  """Index just past the bracket matching text[start], ignoring brackets in strings; -1 if there
  is none before `stop`."""
  pairs = {"[": "]", "{": "}"}
  stack, quote, i = [], None, start
  while i < stop:
    c = text[i]
    if quote:
      if c == "\\":
        i += 1
      elif c == quote:
        quote = None
    elif c in "\"'":
      quote = c
    elif c in pairs:
      stack.append(pairs[c])
    elif c in "]}":
      if not stack or stack.pop() != c:
        return -1
      if not stack:
        return i + 1
    i += 1
  return -1


def _lenient(span: str) -> Any:
  """Decodes near-JSON (trailing commas, Python literals with single quotes); raises ValueError."""
  try:
    return json.loads(_TRAILING_COMMA.sub(r"\1", span))
  except (ValueError, RecursionError):
    pass
  try:
    return ast.literal_eval(span)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    raise ValueError("not a literal") from None


def iter_json(text: str) -> Iterator[Any]:
  """Every JSON list/object in `text`, in order: fenced blocks first, then a left-to-right scan.

  A span that does not decode (e.g. a list cut off by the token limit) is skipped one character at
  a time, so the complete objects inside it are still found. The lenient retries share a budget of
  characters so that bracket-heavy garbage costs linear, not quadratic, time.
  """
  decoder = json.JSONDecoder()
  sources = [m.group(1) for m in _FENCE.finditer(text)] or [text]
  budget = _LENIENT_BUDGET
  for source in sources:
    i = 0
    while i < len(source):
      if source[i] not in "[{":
        i += 1
        continue
      try:
        value, end = decoder.raw_decode(source, i)
      except RecursionError:  # nesting no honest answer has; every later start would hit it too
        break
      except ValueError:
        value, end = None, -1
        if budget > 0:
          stop = min(len(source), i + budget)
          end = _closing(source, i, stop)
          budget -= (end if end > 0 else stop) - i
        if end > 0:
          budget -= end - i
          try:
            value = _lenient(source[i:end])
          except ValueError:
            value = None
        if value is None:
          i += 1
          continue
      if isinstance(value, (list, dict)):
        yield value
      i = end


def json_items(text: str, item_type: type | tuple = dict, item_keys: tuple = ()) -> list | None:
  """The items of the first JSON list in `text` whose entries are `item_type` (an empty list counts).

  A wrapper object such as {"objects": [...]} is opened unless it has one of `item_keys` itself.
  Without any such list, loose objects (one object, or those salvaged from a truncated list) are
  returned when `item_type` is dict. None when nothing usable is found.
  """
  loose = []
  for value in iter_json(text):
    if isinstance(value, dict) and not any(k in value for k in item_keys):
      inner = [v for v in value.values() if isinstance(v, list)]
      if len(inner) == 1:
        value = inner[0]
    if isinstance(value, list):
      if not value or any(isinstance(v, item_type) for v in value):
        return value
    elif isinstance(value, dict):
      loose.append(value)
  return loose if loose and item_type is dict else None
