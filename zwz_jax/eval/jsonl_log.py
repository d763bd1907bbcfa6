"""Append-only JSONL result logs that survive kill -9: whole lines are kept, a torn tail is cut."""
from __future__ import annotations

import json
import os
from typing import Callable, Hashable


def read(path: str, key: Callable[[dict], Hashable]) -> dict:
  """key(row) -> row for every complete line; a line cut by a kill (no newline) is ignored."""
  rows = {}
  if not os.path.exists(path):
    return rows
  with open(path, "rb") as f:
    for line in f:
      if not line.endswith(b"\n"):
        break
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      rows[key(row)] = row
  return rows


class Appender:
  """Opens `path` for appending after cutting any torn last line (else the next row would be glued
  onto it and lost); `write` makes each row durable (fsync) before returning."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
      with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
          f.truncate(data.rfind(b"\n") + 1)
    self._f = open(path, "a")

  def write(self, *rows: dict) -> None:
    for row in rows:
      self._f.write(json.dumps(row) + "\n")
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self) -> None:
    self._f.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
