"""Teacher from a local `transformers` vision-language checkpoint, with batched generation.

Requests are grouped into batches of `batch_size` that share (n, temperature, max_new_tokens),
left-padded and generated together; only the new tokens are decoded. The k-th sampled batch of a
teacher is seeded from (seed, name, k): a rerun with the same config and inputs reproduces its
samples, while asking a teacher twice (or two teachers on one checkpoint) gives fresh samples, so
repeated answers can never fake a consensus.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from typing import Any, Sequence

from PIL import Image
import torch
import transformers

from data_gen.teachers.base import Request, Teacher, TeacherError

DEFAULTS = {
    "name": "hf",
    "path": "",
    "device": "cpu",
    "device_map": None,  # e.g. "auto": spread a large teacher over all GPUs (`device` unused)
    "dtype": "auto",  # "auto" keeps the checkpoint's dtype
    "batch_size": 8,
    "max_pixels": None,  # images above this many pixels are downscaled on the host first
    "seed": 0,  # None: leave torch's global RNG alone
    # Sampling filters. Qwen checkpoints ship top_k=1/top_p=0.001 in generation_config.json, which
    # would make every "sample" the greedy answer; these defaults sample from the full distribution.
    "top_p": 1.0,
    "top_k": 0,
    "attn_implementation": None,  # e.g. "sdpa" or "flash_attention_2"; None: transformers' default
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cfg_get(cfg, key):
  value = cfg.get(key, None) if cfg is not None else None
  return DEFAULTS[key] if value is None else value


def cap_pixels(image: Image.Image, max_pixels: int | None) -> Image.Image:
  """`image` downscaled (aspect kept, bicubic) so width * height <= max_pixels."""
  w, h = image.size
  if not max_pixels or w * h <= max_pixels:
    return image
  scale = math.sqrt(max_pixels / (w * h))
  size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
  return image.resize(size, Image.Resampling.BICUBIC)


def _read_chat_template(path: str, tokenizer) -> str | None:
  if getattr(tokenizer, "chat_template", None):
    return tokenizer.chat_template
  jinja = os.path.join(path, "chat_template.jinja")
  if os.path.isfile(jinja):
    with open(jinja, encoding="utf-8") as f:
      return f.read()
  legacy = os.path.join(path, "chat_template.json")
  if os.path.isfile(legacy):
    with open(legacy, encoding="utf-8") as f:
      return json.load(f).get("chat_template")
  return None


def _without_video_check(cls):
  """`cls` accepting video_processor=None (the video processors need torchvision)."""

  def check_argument_for_proper_class(self, argument_name, argument):
    if argument_name == "video_processor" and argument is None:
      return None
    return super(sub, self).check_argument_for_proper_class(argument_name, argument)

  sub = type(cls.__name__, (cls,),
             {"check_argument_for_proper_class": check_argument_for_proper_class})
  return sub


def load_processor(path: str):
  """AutoProcessor when it loads; otherwise the model's processor class without a video processor.

  AutoProcessor fails for the Qwen-VL family when torchvision is missing (its video processor needs
  it); AutoImageProcessor then picks the PIL image processor and images still work.
  """
  try:
    return transformers.AutoProcessor.from_pretrained(path)
  except (ImportError, ValueError, TypeError, OSError) as first_error:
    from transformers.models.auto import processing_auto  # pylint: disable=import-outside-toplevel
    config = transformers.AutoConfig.from_pretrained(path)
    try:
      cls = processing_auto.PROCESSOR_MAPPING[type(config)]
    except KeyError:
      raise first_error from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    kwargs = {"image_processor": transformers.AutoImageProcessor.from_pretrained(path),
              "tokenizer": tokenizer, "chat_template": _read_chat_template(path, tokenizer)}
    if "video_processor" in getattr(cls, "get_attributes", lambda: [])():
      cls = _without_video_check(cls)
      kwargs["video_processor"] = None
    return cls(**kwargs)


def _batch_seed(seed: int, name: str, k: int) -> int:
  digest = hashlib.blake2b(json.dumps([int(seed), name, k]).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") & (2**63 - 1)


class HFTeacher(Teacher):
  """Batched generation with a transformers image-text-to-text model and its processor."""

  def __init__(self, model, processor, *, name: str = "hf", batch_size: int = 8,
               max_pixels: int | None = None, seed: int | None = 0, top_p: float = 1.0,
               top_k: int = 0):
    if batch_size < 1:
      raise ValueError(f"hf teacher {name!r}: batch_size must be >= 1, got {batch_size}")
    self.name = name
    self.model = model.eval()
    self.processor = processor
    self.batch_size = int(batch_size)
    self.max_pixels = max_pixels
    self.seed = seed
    self.top_p = top_p
    self.top_k = top_k
    self._sampled_batches = 0
    # One model on one accelerator: calls from concurrent pipeline threads take turns.
    self._lock = threading.Lock()
    tokenizer = processor.tokenizer
    if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
      raise ValueError(f"hf teacher {name!r}: the checkpoint has no chat template (looked for "
                       "chat_template in tokenizer_config.json, chat_template.jinja, "
                       "chat_template.json)")
    if getattr(processor, "chat_template", None) is None:
      processor.chat_template = tokenizer.chat_template
    # Decoder-only batches pad on the left so every row's new tokens start at the same column.
    tokenizer.padding_side = "left"
    self._pad_id = tokenizer.pad_token_id
    if self._pad_id is None:
      self._pad_id = tokenizer.eos_token_id

  @classmethod
  def from_config(cls, cfg) -> "HFTeacher":
    """Keys: path, device, device_map, dtype, batch_size, max_pixels, seed, top_p, top_k,
    attn_implementation, name."""
    name, path = _cfg_get(cfg, "name"), _cfg_get(cfg, "path")
    if not path or not os.path.isdir(path):
      raise ValueError(f"hf teacher {name!r}: config key 'path' must be a local checkpoint "
                       f"directory, got {path!r}")
    dtype_name = _cfg_get(cfg, "dtype")
    if dtype_name != "auto" and dtype_name not in _DTYPES:
      raise ValueError(f"hf teacher {name!r}: config key 'dtype' must be 'auto' or one of "
                       f"{sorted(_DTYPES)}, got {dtype_name!r}")
    # Config files cannot override a None default, so "" also means "no device_map".
    device, device_map = _cfg_get(cfg, "device"), _cfg_get(cfg, "device_map") or None
    if str(device).startswith("cuda") and device_map is None and not torch.cuda.is_available():
      raise ValueError(f"hf teacher {name!r}: config key 'device' is {device!r} but CUDA is not "
                       "available")
    kwargs: dict[str, Any] = {"dtype": dtype_name if dtype_name == "auto" else _DTYPES[dtype_name]}
    if device_map is not None:
      kwargs["device_map"] = device_map
    if _cfg_get(cfg, "attn_implementation"):
      kwargs["attn_implementation"] = _cfg_get(cfg, "attn_implementation")
    model = transformers.AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if device_map is None:
      model = model.to(device)
    return cls(model, load_processor(path), name=name, batch_size=_cfg_get(cfg, "batch_size"),
               max_pixels=_cfg_get(cfg, "max_pixels"), seed=cfg.get("seed", DEFAULTS["seed"]),
               top_p=_cfg_get(cfg, "top_p"), top_k=_cfg_get(cfg, "top_k"))

  def __repr__(self):
    return (f"HFTeacher(name={self.name!r}, model={type(self.model).__name__}, "
            f"device={self.model.device}, dtype={self.model.dtype}, batch_size={self.batch_size})")

  # --------------------------------------------------------------------------------------------

  def generate(self, requests: Sequence[Request]) -> list[list[str]]:
    with self._lock:
      return self._generate(requests)

  def _generate(self, requests: Sequence[Request]) -> list[list[str]]:
    results: list[list[str] | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
      groups.setdefault((r.n, float(r.temperature), r.max_new_tokens), []).append(i)
    for indices in groups.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        for i, texts in zip(chunk, self._generate_splitting([requests[i] for i in chunk])):
          results[i] = texts
    return results  # type: ignore[return-value]

  def _generate_splitting(self, batch: list[Request]) -> list[list[str]]:
    """Generates `batch`, halving it when the accelerator runs out of memory."""
    try:
      return self._generate_batch(batch)
    except torch.OutOfMemoryError as e:
      if len(batch) == 1:
        raise TeacherError(f"teacher {self.name!r}: out of memory on a single request "
                           f"(max_new_tokens={batch[0].max_new_tokens}, n={batch[0].n}); lower "
                           "max_pixels or use a bigger device") from e
    # Outside the handler: the failed attempt's tensors are released with the exception.
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
    half = len(batch) // 2
    return self._generate_splitting(batch[:half]) + self._generate_splitting(batch[half:])

  def prompt_text(self, request: Request) -> str:
    """The templated prompt for `request`: image placeholders first, then the text."""
    content = [{"type": "image"} for _ in request.images]
    content.append({"type": "text", "text": request.prompt})
    return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                              add_generation_prompt=True, tokenize=False)

  @torch.inference_mode()
  def _generate_batch(self, batch: list[Request]) -> list[list[str]]:
    first = batch[0]
    try:
      texts = [self.prompt_text(r) for r in batch]
      images = [cap_pixels(im, self.max_pixels) for r in batch for im in r.images]
      inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
    except (ValueError, TypeError) as e:  # e.g. an extreme aspect ratio: skip these, not the run
      sizes = [im.size for r in batch for im in r.images]
      raise TeacherError(f"teacher {self.name!r}: cannot prepare a batch of {len(batch)} requests "
                         f"(image sizes {sizes}): {e}") from e
    device, dtype = self.model.device, self.model.dtype
    inputs = {k: (v.to(device, dtype) if torch.is_floating_point(v) else v.to(device))
              for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    sample = first.temperature > 0
    # Greedy decoding gives n equal answers, so it runs once per request and is repeated.
    num_return = first.n if sample else 1
    kwargs = dict(max_new_tokens=first.max_new_tokens, do_sample=sample,
                  num_return_sequences=num_return, pad_token_id=self._pad_id)
    if sample:
      kwargs.update(temperature=float(first.temperature), top_p=self.top_p, top_k=self.top_k)
      if self.seed is not None:
        torch.manual_seed(_batch_seed(self.seed, self.name, self._sampled_batches))
      self._sampled_batches += 1
    else:
      kwargs.update(temperature=None, top_p=None, top_k=None)
    out = self.model.generate(**inputs, **kwargs)
    new = out[:, inputs["input_ids"].shape[1]:]
    decoded = self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    per_request = [decoded[i * num_return:(i + 1) * num_return] for i in range(len(batch))]
    return [d if sample else d * first.n for d in per_request]

  def close(self) -> None:
    on_cuda = self.model is not None and self.model.device.type == "cuda"
    self.model = None
    if on_cuda:
      torch.cuda.empty_cache()
