"""The one interface every teacher (and the difficulty-filter student) implements.

A teacher takes a batch of `Request`s (images + prompt + how many samples) and returns, per request,
a list of `n` generated strings. Real backends (hf, openai) read only `images` and `prompt`; the
`scene` oracle answers from the procedural scene's metadata, which it finds through `context`.

`context` keys by `task` (set by the pipeline, the same for every backend):
  propose:     image_key, image_size (w, h) of the full image; boxes come back in pixels of images[0]
  objects:     image_key, image_size; the names of objects that appear once (for propose.detector)
  questions:   image_key, crop_box [x0, y0, x1, y1] (full-image pixels), label, num_questions
  check:       image_key, crop_box, question, dimension
  answer:      image_key, crop_box, question, dimension
  distractors: image_key, crop_box, question, dimension, answer, num
  group:       image_key, crop_box, question, dimension, answers (list)   (text only: no images)
  student:     image_key, bbox, question, options (list), dimension     (boxed full image)
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, Sequence

from PIL import Image

TASKS = ("propose", "objects", "questions", "check", "answer", "distractors", "group", "student")


class TeacherError(RuntimeError):
  """A teacher failed for good (after its retries); the message says which backend and why."""


@dataclasses.dataclass(frozen=True)
class Request:
  images: tuple[Image.Image, ...]
  prompt: str
  task: str
  n: int = 1
  temperature: float = 0.0
  max_new_tokens: int = 512
  context: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.task not in TASKS:
      raise ValueError(f"unknown teacher task {self.task!r}; tasks are {TASKS}")
    if self.n < 1:
      raise ValueError(f"n must be >= 1, got {self.n}")


class Teacher(abc.ABC):
  """Generates text for batches of requests."""

  name: str = "teacher"

  @abc.abstractmethod
  def generate(self, requests: Sequence[Request]) -> list[list[str]]:
    """One list of `request.n` strings per request, in order. Raises TeacherError when it gives up."""

  def close(self) -> None:
    """Releases connections / accelerator memory."""
