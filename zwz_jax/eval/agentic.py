"""Thinking-with-images baseline: a model that zooms with a crop tool over several turns, same harness.

The agent answers a question about an image; on any turn it may call the zoom tool in Qwen's
function-calling format

  <tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x0, y0, x1, y1]}}</tool_call>

(a bare `<zoom>[x0, y0, x1, y1]</zoom>` is accepted too). Coordinates are in the frame the model
grounds in: absolute pixels of the image as the model saw it, i.e. after the processor's
smart_resize (Qwen2.5-VL), or a 0-1000 scale on both axes (Qwen3-VL, processor.box_coordinates =
"relative"); the system prompt says which. The harness maps the box back to the original image, clips it, grows it to a
minimum size, crops the ORIGINAL pixels (not the downsampled view: zooming exists to recover
detail), upscales the crop and returns it as a tool-response turn holding the image, then lets the
model continue. After at most `max_turns` tool calls the loop ends; the final answer is judged with
`answers.judge` (which reads `<answer>...</answer>`). One item never raises: a malformed call, a box
off the image or a failed generation is recorded as the item's error and the item counts as wrong.

`AgenticHarness` only needs `generate_fn(conversation) -> str`, so it runs with a scripted function
in tests, or with our JAX student through `model_generate_fn` (KV-cache sampler, batch of 1).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from zwz_jax import answers, records
from zwz_jax.data import batch as batching
from zwz_jax.data import processor as processor_lib
from zwz_jax.eval import jsonl_log
from zwz_jax.eval.benchmarks import EvalItem

TOOL_NAME = "image_zoom_in_tool"
TOOL_CALL_END = "</tool_call>"
# How the tool's box is expressed, by processor.box_coordinates.
COORDINATE_FRAMES = {"absolute": "absolute pixel coordinates of the image",
                     "relative": "coordinates of the image on a 0-1000 scale"}


def tool_schema(box_coordinates: str = "absolute") -> dict:
  return {
      "type": "function",
      "function": {
          "name": TOOL_NAME,
          "description": "Zoom in on a region of the image: crop it by a bounding box and return the enlarged crop.",
          "parameters": {
              "type": "object",
              "properties": {
                  "bbox_2d": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                              "description": "[x1, y1, x2, y2]: top-left and bottom-right corners, in "
                                             f"{COORDINATE_FRAMES[box_coordinates]}."},
                  "label": {"type": "string", "description": "What the region contains (optional)."},
              },
              "required": ["bbox_2d"],
          },
      },
  }


def tool_system_prompt(box_coordinates: str = "absolute") -> str:
  """Qwen's function-calling system prompt, with the answer format the judge reads."""
  return (
      "You are a helpful assistant. Look at the image closely; when a detail is too small to see, zoom "
      "in on it with the tool, then look again. Put the final answer inside <answer></answer>.\n\n"
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
      f"{json.dumps(tool_schema(box_coordinates))}\n</tools>\n\n"
      "For each function call, return a json object with function name and arguments within "
      "<tool_call></tool_call> XML tags:\n<tool_call>\n"
      '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


SYSTEM_PROMPT = tool_system_prompt()

_VISION = f"{processor_lib.VISION_START}{processor_lib.IMAGE_PAD}{processor_lib.VISION_END}"
_VISION_MARKUP = re.compile("|".join(re.escape(t) for t in (
    processor_lib.VISION_START, processor_lib.IMAGE_PAD, processor_lib.VISION_END, "<|video_pad|>")))
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_ZOOM = re.compile(r"<zoom>\s*(.*?)\s*(?:</zoom>|$)", re.S)


# ----------------------------------------------------------------------------------------------
# Conversation
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Turn:
  role: str  # "user" | "assistant" | "tool" (a user turn wrapped in <tool_response>, as Qwen renders it)
  parts: tuple  # text (str) and images (PIL), in order; an image renders as one vision placeholder


@dataclasses.dataclass
class Conversation:
  """A multi-turn chat with images, rendered to Qwen's chat text with one placeholder per image."""
  system_prompt: str = processor_lib.DEFAULT_SYSTEM_PROMPT
  turns: list[Turn] = dataclasses.field(default_factory=list)

  ROLES = ("user", "assistant", "tool")

  def add(self, role: str, *parts) -> "Conversation":
    if role not in self.ROLES:
      raise ValueError(f"role {role!r} is not one of {self.ROLES}")
    clean = []
    for p in parts:
      if isinstance(p, Image.Image):
        clean.append(p)
      elif isinstance(p, str):
        # Text must not smuggle in vision markup: the image-token count would stop matching the images.
        clean.append(_VISION_MARKUP.sub("", p))
      else:
        raise TypeError(f"a turn part must be str or PIL image, got {type(p).__name__}")
    self.turns.append(Turn(role, tuple(clean)))
    return self

  @property
  def images(self) -> list[Image.Image]:
    """Every image in the order the rendered text places its placeholder."""
    return [p for t in self.turns for p in t.parts if isinstance(p, Image.Image)]

  @property
  def num_tool_turns(self) -> int:
    return sum(t.role == "tool" for t in self.turns)

  def render(self, add_generation_prompt: bool = True) -> str:
    """Qwen chat text; a single user turn [image, question] equals `processor.chat_prompt`."""
    s, e = processor_lib.IM_START, processor_lib.IM_END
    out = [f"{s}system\n{self.system_prompt}{e}\n"]
    for t in self.turns:
      body = "".join(_VISION if isinstance(p, Image.Image) else p for p in t.parts)
      if t.role == "tool":
        out.append(f"{s}user\n<tool_response>\n{body}\n</tool_response>{e}\n")
      else:
        out.append(f"{s}{t.role}\n{body}{e}\n")
    if add_generation_prompt:
      out.append(f"{s}assistant\n")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Tool calls
# ----------------------------------------------------------------------------------------------


class ToolCallError(ValueError):
  """A tool call the harness cannot execute; the message says what was wrong with it."""


@dataclasses.dataclass(frozen=True)
class ToolCall:
  box: tuple[float, float, float, float]  # as written: model-view pixels
  start: int  # span of the call's markup in the output text
  end: int
  closing: str  # the closing tag the call lacks ("" when closed): generation may stop on it


def _as_box(value, where: str) -> tuple[float, float, float, float]:
  if not isinstance(value, (list, tuple)) or len(value) != 4:
    raise ToolCallError(f"{where} must be a list of 4 numbers [x0, y0, x1, y1], got {value!r}")
  if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
    raise ToolCallError(f"{where} must hold 4 finite numbers, got {value!r}")
  return tuple(float(v) for v in value)


def _json(text: str, what: str):
  try:
    return json.loads(text)
  except ValueError as e:
    raise ToolCallError(f"{what} is not valid JSON ({e}): {text[:200]!r}") from None


def parse_tool_call(text: str) -> ToolCall | None:
  """The first zoom call in a model output, None when there is none; raises ToolCallError if malformed.

  An unclosed call running to the end of the text is read too: generation may stop on the closing
  tag's token, which decoding can drop.
  """
  found = [m for m in (_TOOL_CALL.search(text), _ZOOM.search(text)) if m]
  if not found:
    return None
  m = min(found, key=lambda m: m.start())
  if m.re is _ZOOM:
    closing = "" if m.group(0).endswith("</zoom>") else "</zoom>"
    return ToolCall(_as_box(_json(m.group(1), "<zoom> box"), "<zoom> box"), m.start(), m.end(), closing)
  call = _json(m.group(1), "<tool_call> body")
  if not isinstance(call, dict):
    raise ToolCallError(f"<tool_call> body must be a JSON object, got {type(call).__name__}")
  if call.get("name") != TOOL_NAME:
    raise ToolCallError(f"unknown tool {call.get('name')!r}; the only tool is {TOOL_NAME!r}")
  args = call.get("arguments")
  if isinstance(args, str):  # OpenAI-style: arguments as a JSON string
    args = _json(args, "tool arguments")
  if not isinstance(args, dict) or "bbox_2d" not in args:
    raise ToolCallError(f"tool arguments must be an object with 'bbox_2d', got {args!r}")
  closing = "" if m.group(0).endswith(TOOL_CALL_END) else TOOL_CALL_END
  return ToolCall(_as_box(args["bbox_2d"], "bbox_2d"), m.start(), m.end(), closing)


def _grow(a: int, b: int, size: int, limit: int) -> tuple[int, int]:
  """[a, b) widened about its centre to at least `size` (at most `limit`), kept inside [0, limit)."""
  size = min(size, limit)
  if b - a >= size:
    return a, b
  a = (a + b - size) // 2
  a = max(0, min(a, limit - size))
  return a, a + size


def original_box(box: Sequence[float], view_size: tuple[int, int], image_size: tuple[int, int],
                 min_crop: int = 28) -> tuple[int, int, int, int]:
  """Integer crop box in original pixels for a box in model-view pixels.

  Scaled by original / view per axis, clipped to the image, widened outwards to whole pixels
  (floor / ceil) and to at least `min_crop` pixels per side. A box with no overlap with the image
  raises ToolCallError.
  """
  (vw, vh), (w, h) = view_size, image_size
  x0, x1 = sorted((box[0], box[2]))
  y0, y1 = sorted((box[1], box[3]))
  x0, x1, y0, y1 = x0 * w / vw, x1 * w / vw, y0 * h / vh, y1 * h / vh
  if x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
    raise ToolCallError(f"box {list(box)} lies outside the {vw}x{vh} image")
  x0, y0 = math.floor(max(x0, 0.0)), math.floor(max(y0, 0.0))
  x1, y1 = math.ceil(min(x1, float(w))), math.ceil(min(y1, float(h)))
  x0, x1 = _grow(x0, x1, min_crop, w)
  y0, y1 = _grow(y0, y1, min_crop, h)
  return x0, y0, x1, y1


def view_size_fn(config) -> Callable[[int, int], tuple[int, int]]:
  """(width, height) -> the frame the model's tool boxes are in: the (width, height) the processor
  resizes an image to, or (1000, 1000) for a relative-coordinate model (Qwen3-VL)."""
  if config.processor.get("box_coordinates", "absolute") == "relative":
    return lambda width, height: (1000, 1000)
  factor = int(config.model.vision.patch_size) * int(config.model.vision.spatial_merge_size)
  lo, hi = int(config.processor.min_pixels), int(config.processor.max_pixels)

  def view_size(width: int, height: int) -> tuple[int, int]:
    h, w = processor_lib.smart_resize(height, width, factor, lo, hi)
    return w, h
  return view_size


# ----------------------------------------------------------------------------------------------
# The harness
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class AgentResult:
  id: str
  prediction: str  # the final answer text the judge reads
  turns: int  # model calls made (a failed one included)
  tool_calls: list[tuple[int, int, int, int]]  # executed crop boxes, original pixels
  wall_time_s: float
  error: str | None = None  # why the loop ended abnormally; None for a normal final answer
  correct: bool = False
  outputs: list[str] = dataclasses.field(default_factory=list)  # raw model output per turn
  skipped: bool = False  # the item itself could not be evaluated (bad image): not counted in accuracy


class AgenticHarness:
  """Runs the zoom-tool loop for one item at a time.

  generate_fn(conversation) -> str: the assistant's next message. view_size(width, height) -> the
  model's view of an image (default: `generate_fn.view_size`, which `model_generate_fn` provides);
  system_prompt defaults to `generate_fn.system_prompt`, else SYSTEM_PROMPT.
  """

  def __init__(self, generate_fn: Callable[[Conversation], str], *, max_turns: int = 3, upscale: float = 2.0,
               min_crop: int = 28, system_prompt: str | None = None,
               view_size: Callable[[int, int], tuple[int, int]] | None = None):
    if max_turns < 0:
      raise ValueError(f"max_turns must be >= 0, got {max_turns}")
    if upscale <= 0:
      raise ValueError(f"upscale must be > 0, got {upscale}")
    self.generate_fn = generate_fn
    self.view_size = view_size or getattr(generate_fn, "view_size", None)
    if self.view_size is None:
      raise ValueError("pass view_size=(w, h) -> model view: tool coordinates are in the model's view")
    self.max_turns, self.upscale, self.min_crop = max_turns, upscale, min_crop
    self.system_prompt = system_prompt or getattr(generate_fn, "system_prompt", SYSTEM_PROMPT)

  def run(self, item: EvalItem) -> AgentResult:
    t0 = time.perf_counter()
    res = AgentResult(id=item.id, prediction="", turns=0, tool_calls=[], wall_time_s=0.0)
    image = None
    if item.error:
      res.error, res.skipped = item.error, True
    else:
      try:
        image = records.decode_image(item.image)
      except ValueError as e:
        res.error, res.skipped = str(e), True
    if image is not None:
      self._loop(item, image, res)
      verdict = answers.judge(res.prediction, item.answer, options=item.options, answer_type=item.answer_type)
      res.correct = bool(verdict.correct)
    res.wall_time_s = time.perf_counter() - t0
    return res

  def _loop(self, item: EvalItem, image: Image.Image, res: AgentResult) -> None:
    conv = Conversation(self.system_prompt).add("user", image, item.prompt)
    try:
      view = self.view_size(image.width, image.height)
      while True:
        res.turns += 1  # counted before the call: a generation that fails was still a turn
        text = self.generate_fn(conv)
        res.outputs.append(text)
        try:
          call = parse_tool_call(text)
        except ToolCallError as e:
          res.error = f"turn {res.turns}: malformed tool call: {e}"
          res.prediction = _before_call(text)
          return
        if call is None:
          res.prediction = text
          return
        res.prediction = text[:call.start]
        if len(res.tool_calls) >= self.max_turns:
          res.error = f"turn limit reached: tool call {len(res.tool_calls) + 1} > max_turns={self.max_turns}"
          return
        try:
          box = original_box(call.box, view, image.size, self.min_crop)
        except ToolCallError as e:
          res.error = f"turn {res.turns}: {e}"
          return
        res.tool_calls.append(box)
        # Anything after the call is dropped: the agent must see the tool result before going on.
        conv.add("assistant", text[:call.end] + call.closing)
        conv.add("tool", records.zoom(image, box, self.upscale))
    except Exception as e:  # one item's failure (generation, resize) must not end an evaluation
      res.error = f"turn {res.turns}: {type(e).__name__}: {e}"


def _before_call(text: str) -> str:
  starts = [i for i in (text.find("<tool_call>"), text.find("<zoom>")) if i >= 0]
  return text[:min(starts)] if starts else text


AGENTIC = "agentic.jsonl"


def read_results(out_dir: str) -> dict[str, dict]:
  """item id -> saved result row."""
  return jsonl_log.read(os.path.join(out_dir, AGENTIC), key=lambda r: r["id"])


def summarize(rows: Iterable[dict]) -> dict:
  """Accuracy, turns, tool calls and wall time over the items that could run (agent errors count as wrong)."""
  rows = list(rows)
  ran = [r for r in rows if not r["skipped"]]
  mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
  return {
      "accuracy": mean([r["correct"] for r in ran]),
      "mean_turns": mean([r["turns"] for r in ran]),
      "mean_tool_calls": mean([len(r["tool_calls"]) for r in ran]),
      "mean_wall_time_s": mean([r["wall_time_s"] for r in ran]),
      "n": len(ran),
      "skipped": len(rows) - len(ran),
      "errors": sorted((r["id"], r["error"]) for r in rows if r["error"]),
  }


def evaluate(harness: AgenticHarness, items: Iterable[EvalItem], *, out_dir: str = "",
             progress: bool = False) -> dict:
  """Runs every item and summarises; with `out_dir`, results are appended to agentic.jsonl as they
  finish (fsync'd) and items already there are not run again, so a killed job continues."""
  import tqdm
  items = list(items)
  done = read_results(out_dir) if out_dir else {}
  todo = [it for it in items if it.id not in done]
  log = jsonl_log.Appender(os.path.join(out_dir, AGENTIC)) if out_dir else None
  try:
    for it in tqdm.tqdm(todo, desc="agentic eval", disable=not progress):
      row = dataclasses.asdict(harness.run(it))
      row["tool_calls"] = [list(b) for b in row["tool_calls"]]
      done[it.id] = row
      if log is not None:
        log.write(row)
  finally:
    if log is not None:
      log.close()
  rows = [done[it.id] for it in items]
  return {**summarize(rows), "results": rows}


# ----------------------------------------------------------------------------------------------
# generate_fn for our JAX student
# ----------------------------------------------------------------------------------------------


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


class ModelGenerateFn:
  """Conversation -> assistant text with our model and the KV-cache sampler (batch of 1, left pad).

  Stops on <|im_end|>, and on </tool_call> when the tokenizer has it as one token (Qwen's does);
  otherwise the call is parsed out of the text that ran on to <|im_end|> or the token limit.
  """

  def __init__(self, model, tokenizer, config, sampling):
    from zwz_jax.generate import sampler  # jax side, imported here so the harness itself needs no jax
    self.model = model
    self.generate = sampler.Sampler(model)
    self.tokenizer = tokenizer
    self.processor = processor_lib.Processor.from_config(config, tokenizer)
    self.view_size = view_size_fn(config)
    self.system_prompt = tool_system_prompt(self.processor.box_coordinates)
    im_end = tokenizer.token_to_id(processor_lib.IM_END)
    self.tool_end = tokenizer.token_to_id(TOOL_CALL_END)
    stops = tuple(sampling.stop_ids) + (im_end,) + ((self.tool_end,) if self.tool_end is not None else ())
    self.sampling = dataclasses.replace(sampling, stop_ids=tuple(dict.fromkeys(stops)))
    self._drop = set(self.sampling.stop_ids) - {self.tool_end}  # </tool_call> stays in the text

  def example(self, conv: Conversation) -> dict:
    """The processed inputs of a conversation: ids, M-RoPE positions over all images, patches."""
    p = self.processor
    pixel_values, grid_thw = p.images(conv.images)
    text = processor_lib.expand_image_tokens(conv.render(), list(grid_thw), p.merge_size)
    ids = p.encode(text)
    want = sum(processor_lib.num_image_tokens(g, p.merge_size) for g in grid_thw)
    if int((ids == p.image_token_id).sum()) != want:
      raise ValueError(f"conversation tokenizes to {int((ids == p.image_token_id).sum())} image tokens, "
                       f"its {len(grid_thw)} images need {want}")
    positions, _ = processor_lib.mrope_positions(ids, list(grid_thw), image_token_id=p.image_token_id,
                                                 merge_size=p.merge_size)
    return {"input_ids": ids, "positions": positions, "pixel_values": pixel_values, "grid_thw": grid_thw}

  def batch(self, conv: Conversation) -> dict:
    v = batching.VisionLayout.of(self.model.cfg.vision)
    ex = self.example(conv)
    # Shapes rounded up so a growing conversation reuses a few compiled programs.
    return batching.build_batch([ex], vision_cfg=v, image_token_id=self.model.cfg.image_token_id,
                                max_tokens=_round_up(len(ex["input_ids"]), 64),
                                max_patches=_round_up(max(v.padded_patches(ex["grid_thw"]), 1), 4 * v.window_patches),
                                pad_side="left")

  def __call__(self, conv: Conversation) -> str:
    tokens, lengths = self.generate(self.batch(conv), self.sampling)
    ids = [int(t) for t in tokens[0, :lengths[0]] if int(t) not in self._drop]
    return self.tokenizer.decode(ids, skip_special_tokens=True)


def model_generate_fn(model, tokenizer, config, sampling) -> ModelGenerateFn:
  """generate_fn for AgenticHarness with our JAX model; it also carries the model's `view_size`."""
  return ModelGenerateFn(model, tokenizer, config, sampling)
