"""Qwen2.5-VL / Qwen3-VL preprocessing on the host: resize, patchify, chat prompt, M-RoPE and window ids.

The two families share every step; they differ in settings only (patch size 14 or 16, CLIP or 0.5
normalisation, a default system turn or none, pixel or 0-1000 box coordinates: `config.processor`).

Numpy and PIL only (no jax, torch or transformers), so it runs inside data-loader workers. Every
function reproduces the matching `transformers` code exactly (pixels to float32 rounding, token ids,
position ids, window permutation); tests/test_processor.py checks this against transformers.
"""
import dataclasses
import math
import os

import numpy as np
from PIL import Image
from tokenizers import Tokenizer

from zwz_jax.data import tiny_tokenizer
from zwz_jax.records import to_rgb

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
MAX_ASPECT_RATIO = 200


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def smart_resize(height, width, factor, min_pixels, max_pixels):
  """Target (h, w): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

  Same arithmetic as Qwen2-VL's (Python's round-half-even included), so grids match exactly.
  """
  if height <= 0 or width <= 0:
    raise ValueError(f"image is empty: height={height}, width={width}")
  ratio = max(height, width) / min(height, width)
  if ratio > MAX_ASPECT_RATIO:
    raise ValueError(f"image aspect ratio {ratio:.1f} ({height}x{width}) exceeds "
                     f"{MAX_ASPECT_RATIO}; crop or pad the image first")
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  if h_bar < factor or w_bar < factor:
    raise ValueError(f"image {height}x{width} is too small: resizes to {h_bar}x{w_bar}, below one "
                     f"{factor}x{factor} merged patch (min_pixels={min_pixels})")
  return h_bar, w_bar


def _normalize(pixels_uint8, image_mean, image_std):
  # Rescale in float64 then round to float32, normalize in float32: transformers' exact order.
  x = (pixels_uint8.astype(np.float64) * (1 / 255)).astype(np.float32)
  mean = np.asarray(image_mean, dtype=np.float32)
  std = np.asarray(image_std, dtype=np.float32)
  return (x - mean) / std


def patchify(image_chw, *, patch_size, temporal_patch_size, merge_size):
  """(C, H, W) -> (grid_h * grid_w, C * T * P * P), rows in merge-block order.

  Rows run over merge blocks (row-major), then over the merge_size^2 patches inside a block, so
  consecutive groups of merge_size^2 rows are what the patch merger concatenates. A still image is
  repeated over the temporal patch.
  """
  c, h, w = image_chw.shape
  gh, gw, m, p = h // patch_size, w // patch_size, merge_size, patch_size
  x = image_chw.reshape(c, gh // m, m, p, gw // m, m, p)
  x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, P, P)
  x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, p, p))
  return np.ascontiguousarray(x.reshape(gh * gw, c * temporal_patch_size * p * p))


def preprocess_image(image, *, patch_size, temporal_patch_size, merge_size, min_pixels, max_pixels,
                     image_mean, image_std):
  """PIL image -> (patches float32 (N, C*T*P*P), grid_thw int64 (3,)), equal to Qwen2-VL's."""
  image = to_rgb(image)
  factor = patch_size * merge_size
  h, w = smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
  # Bicubic on the uint8 image, like transformers' PIL backend (it never resizes floats).
  resized = np.asarray(image.resize((w, h), resample=Image.BICUBIC))
  pixels = _normalize(resized, image_mean, image_std).transpose(2, 0, 1)
  patches = patchify(pixels, patch_size=patch_size, temporal_patch_size=temporal_patch_size,
                     merge_size=merge_size)
  grid_thw = np.array([1, h // patch_size, w // patch_size], dtype=np.int64)
  return patches, grid_thw


# ----------------------------------------------------------------------------------------------
# Vision tower indices
# ----------------------------------------------------------------------------------------------


def _grid_rows(grid_thw):
  grids = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
  if (grids <= 0).any():
    raise ValueError(f"grid_thw must be positive, got {grids.tolist()}")
  return [tuple(int(v) for v in g) for g in grids]


def _check_mergeable(h, w, merge_size):
  if h % merge_size or w % merge_size:
    raise ValueError(f"grid {h}x{w} is not divisible by spatial_merge_size={merge_size}")


def vision_rope_positions(grid_thw, merge_size):
  """Per-patch (h, w) rotary ids, int32 (N, 2), in the patch (merge-block) order of `patchify`.

  `grid_thw` is one (3,) grid or a (num_images, 3) array; images are concatenated.
  """
  out = []
  for t, h, w in _grid_rows(grid_thw):
    _check_mergeable(h, w, merge_size)
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    blocks = (h // merge_size, merge_size, w // merge_size, merge_size)
    hpos = hpos.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
    wpos = wpos.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)
    out.append(np.tile(np.stack([hpos, wpos], axis=-1), (t, 1)))
  return np.concatenate(out, axis=0).astype(np.int32)


def window_index(grid_thw, *, merge_size, window_size, patch_size):
  """Window permutation of one image's merged tokens, and the window id of each permuted token.

  The merged-token grid is cut into windows of window_size // (merge_size * patch_size) merged
  tokens per side (the last row/column of windows may be partial). `index[k]` is the merged token
  placed at position k when tokens are grouped window by window (row-major windows, row-major inside
  each), exactly as transformers' get_vision_window_index; `window_ids[k]` numbers the non-empty
  windows 0..num_windows-1 and replaces cu_window_seqlens as attention segment ids.

  Returns (index int64 (N / merge_size^2,), window_ids int32 (N / merge_size^2,)).
  """
  rows = _grid_rows(grid_thw)
  if len(rows) != 1:
    raise ValueError(f"window_index takes one image's grid_thw, got {len(rows)}")
  t, h, w = rows[0]
  _check_mergeable(h, w, merge_size)
  win = window_size // merge_size // patch_size
  if win <= 0:
    raise ValueError(f"window_size={window_size} is smaller than one merged patch "
                     f"({merge_size * patch_size} pixels)")
  lh, lw = h // merge_size, w // merge_size
  nwh, nww = -(-lh // win), -(-lw // win)
  index = np.full((t, nwh * win, nww * win), -1, dtype=np.int64)
  index[:, :lh, :lw] = np.arange(t * lh * lw).reshape(t, lh, lw)
  index = index.reshape(t, nwh, win, nww, win).transpose(0, 1, 3, 2, 4).reshape(t * nwh * nww, -1)
  window_of = np.broadcast_to(np.arange(t * nwh * nww)[:, None], index.shape)
  valid = index >= 0
  # Every window holds at least one token: windows only cover ceil(l / win) per side.
  return index[valid], window_of[valid].astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------


def num_image_tokens(grid_thw, merge_size):
  """Placeholder tokens the LLM sees for one image: t * h * w / merge_size^2."""
  t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
  _check_mergeable(h, w, merge_size)
  return t * h * w // merge_size**2


def expand_image_tokens(text, grid_thws, merge_size, image_pad=IMAGE_PAD):
  """Replaces the i-th `image_pad` in `text` with one pad per merged token of image i."""
  pieces = text.split(image_pad)
  if len(pieces) - 1 != len(grid_thws):
    raise ValueError(f"text has {len(pieces) - 1} {image_pad} placeholders but "
                     f"{len(grid_thws)} images were given")
  out = [pieces[0]]
  for grid, piece in zip(grid_thws, pieces[1:]):
    out.append(image_pad * num_image_tokens(grid, merge_size))
    out.append(piece)
  return "".join(out)


def chat_prompt(question, *, num_images=1, system_prompt=DEFAULT_SYSTEM_PROMPT, answer=None):
  """Qwen2-VL / Qwen3-VL chat template for one user turn with images first, then the question.

  An empty system_prompt writes no system turn (Qwen3-VL's template adds none by default; Qwen2's
  adds "You are a helpful assistant."). Without `answer` it ends with the generation prompt; with
  it, the assistant turn is closed.
  """
  images = f"{VISION_START}{IMAGE_PAD}{VISION_END}" * num_images
  system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt else ""
  text = (f"{system}{IM_START}user\n{images}{question}{IM_END}\n"
          f"{IM_START}assistant\n")
  if answer is not None:
    text += f"{answer}{IM_END}\n"
  return text


def _runs(mask):
  """(start, end) of each run of True in a 1-d bool array."""
  edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
  return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def _image_positions(start, grid, merge_size):
  t, h, w = (int(v) for v in grid)
  lh, lw = h // merge_size, w // merge_size
  tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
  return np.stack([tt, hh, ww]).reshape(3, -1) + start, max(lh, lw)


def _mrope_unpadded(ids, grids, image_token_id, merge_size):
  """Positions (3, L) of a sequence with no padding; see `mrope_positions`."""
  parts, pos, cursor, g = [], 0, 0, 0
  for start, end in _runs(ids == image_token_id):
    parts.append(np.broadcast_to(np.arange(start - cursor) + pos, (3, start - cursor)))
    pos += start - cursor
    # A run may hold several images back to back; consume grids until it is covered.
    covered = start
    while covered < end:
      if g >= len(grids):
        raise ValueError(f"found more image tokens than the {len(grids)} images' grids account for")
      n = num_image_tokens(grids[g], merge_size)
      if covered + n > end:
        raise ValueError(f"image {g} (grid_thw {list(grids[g])}) needs {n} image tokens but "
                         f"its image-token run [{start}, {end}) has only {end - covered} left")
      block, advance = _image_positions(pos, grids[g], merge_size)
      parts.append(block)
      pos += advance
      covered += n
      g += 1
    cursor = end
  if g != len(grids):
    raise ValueError(f"{len(grids)} images given but the image tokens cover only {g}")
  parts.append(np.broadcast_to(np.arange(len(ids) - cursor) + pos, (3, len(ids) - cursor)))
  return np.concatenate(parts, axis=1)


def mrope_positions(input_ids, grid_thws, *, image_token_id, merge_size, attention_mask=None):
  """3-d M-RoPE position ids (t, h, w) for one sequence, as transformers' get_rope_index.

  Text tokens count up by one on all three axes. An image's tokens sit at the current position
  plus their (t, h, w) offsets in the merged grid; text after it resumes at that position plus
  max(h, w) / merge_size. Padding (attention_mask 0) is skipped and gets position 0.

  Returns (positions int32 (3, L), delta) where delta = max position + 1 - number of real tokens:
  decoding step s (0-based, after the prompt) uses position num_tokens + s + delta.
  """
  ids = np.asarray(input_ids).reshape(-1)
  grids = [np.asarray(g).reshape(3) for g in grid_thws]
  keep = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask) != 0
  if keep.shape != ids.shape:
    raise ValueError(f"attention_mask shape {keep.shape} != input_ids shape {ids.shape}")
  if not keep.any():
    raise ValueError("attention_mask masks out every token")
  valid = _mrope_unpadded(ids[keep], grids, image_token_id, merge_size)
  positions = np.zeros((3, ids.shape[0]), np.int32)
  positions[:, keep] = valid
  delta = int(valid.max()) + 1 - int(keep.sum())
  return positions, delta


# ----------------------------------------------------------------------------------------------
# Tokenizer and processor
# ----------------------------------------------------------------------------------------------


def _special_ids_from_config(config):
  m = config.model
  return {IMAGE_PAD: int(m.image_token_id), VISION_START: int(m.vision_start_token_id),
          VISION_END: int(m.vision_end_token_id)}


def check_tokenizer(tokenizer, config, where="tokenizer"):
  """Raises if the tokenizer's special token ids disagree with the model config."""
  for token, want in _special_ids_from_config(config).items():
    got = tokenizer.token_to_id(token)
    if got != want:
      raise ValueError(f"{where}: {token} has id {got} but the config expects {want}")
  for token in (IM_START, IM_END):
    if tokenizer.token_to_id(token) is None:
      raise ValueError(f"{where}: missing special token {token}")


TINY_VOCAB_LIMIT = 4096  # above this a config describes a real model, whose tokenizer must be given


def load_tokenizer(path, config):
  """A `tokenizers.Tokenizer` from tokenizer.json (file or folder); "" builds the tiny one."""
  if not path and int(config.model.text.vocab_size) > TINY_VOCAB_LIMIT:
    raise ValueError(
        f"processor.tokenizer is empty but model.text.vocab_size={config.model.text.vocab_size}: only "
        f"tiny configs (vocab <= {TINY_VOCAB_LIMIT}) build a tokenizer; set "
        "--config.processor.tokenizer=<checkpoint folder or tokenizer.json>")
  if not path:
    tok = tiny_tokenizer.build_tiny_tokenizer(int(config.model.text.vocab_size),
                                              tiny_tokenizer.tiny_special_ids(config))
  else:
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise FileNotFoundError(f"processor.tokenizer: no tokenizer.json at {path!r}")
    tok = Tokenizer.from_file(file)
  check_tokenizer(tok, config, where=f"processor.tokenizer={path!r}")
  return tok


BOX_COORDINATES = ("absolute", "relative")


def _checked_box_coordinates(value):
  if value not in BOX_COORDINATES:
    raise ValueError(f"processor.box_coordinates={value!r} is not one of {BOX_COORDINATES}")
  return value


@dataclasses.dataclass(frozen=True)
class Processor:
  """Turns (images, question[, answer]) into the student's host-side inputs."""
  tokenizer: Tokenizer
  patch_size: int
  temporal_patch_size: int
  merge_size: int
  min_pixels: int
  max_pixels: int
  image_mean: tuple
  image_std: tuple
  image_token_id: int
  system_prompt: str = DEFAULT_SYSTEM_PROMPT
  box_coordinates: str = "absolute"  # `coords` grounding: "absolute" (resized pixels) | "relative" (0-1000)

  @classmethod
  def from_config(cls, config, tokenizer):
    check_tokenizer(tokenizer, config)
    v, p = config.model.vision, config.processor
    return cls(
        tokenizer=tokenizer,
        patch_size=int(v.patch_size),
        temporal_patch_size=int(v.temporal_patch_size),
        merge_size=int(v.spatial_merge_size),
        min_pixels=int(p.min_pixels),
        max_pixels=int(p.max_pixels),
        image_mean=tuple(p.image_mean),
        image_std=tuple(p.image_std),
        image_token_id=int(config.model.image_token_id),
        system_prompt=p.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
        box_coordinates=_checked_box_coordinates(p.get("box_coordinates", "absolute")),
    )

  def resized_size(self, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the image the model sees."""
    h, w = smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)
    return w, h

  def box_frame(self, width: int, height: int) -> dict:
    """`records.ground` keywords for a width x height image: the frame `coords` boxes are given in."""
    if self.box_coordinates == "relative":
      return {"coord_size": (1000, 1000), "coord_unit": "relative"}
    return {"coord_size": self.resized_size(width, height), "coord_unit": "pixel"}

  @property
  def patch_dim(self):
    return 3 * self.temporal_patch_size * self.patch_size**2

  def images(self, images):
    """(pixel_values float32 (N_total, D), grid_thw int64 (num_images, 3))."""
    patches, grids = [], []
    for i, image in enumerate(images):
      try:
        x, g = preprocess_image(
            image, patch_size=self.patch_size, temporal_patch_size=self.temporal_patch_size,
            merge_size=self.merge_size, min_pixels=self.min_pixels, max_pixels=self.max_pixels,
            image_mean=self.image_mean, image_std=self.image_std)
      except ValueError as e:
        raise ValueError(f"image {i}: {e}") from e
      patches.append(x)
      grids.append(g)
    if not patches:
      return np.zeros((0, self.patch_dim), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate(patches), np.stack(grids)

  def encode(self, text):
    return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, np.int32)

  def _labels_mask(self, input_ids, prompt_len):
    """Marks answer tokens and the closing <|im_end|>, not the template newline after it."""
    im_end = self.tokenizer.token_to_id(IM_END)
    ends = np.flatnonzero(input_ids[prompt_len:] == im_end)
    if not len(ends):
      raise ValueError("answer turn has no closing <|im_end|> token")
    mask = np.zeros(input_ids.shape, bool)
    mask[prompt_len:prompt_len + ends[-1] + 1] = True
    return mask

  def __call__(self, images, question, answer=None):
    pixel_values, grid_thw = self.images(images)
    prompt = chat_prompt(question, num_images=len(images), system_prompt=self.system_prompt)
    prompt = expand_image_tokens(prompt, list(grid_thw), self.merge_size)
    input_ids = self.encode(prompt)
    want = sum(num_image_tokens(g, self.merge_size) for g in grid_thw)
    got = int((input_ids == self.image_token_id).sum())
    if got != want:
      raise ValueError(f"prompt has {got} image tokens (id {self.image_token_id}) but the images "
                       f"need {want}; the question must not contain {IMAGE_PAD} and the tokenizer "
                       f"must map {IMAGE_PAD} to image_token_id")
    labels_mask = np.zeros(input_ids.shape, bool)
    if answer is not None:
      prompt_ids = input_ids
      input_ids = self.encode(prompt + f"{answer}{IM_END}\n")
      # Encoding the whole text must keep the prompt's tokens, else the mask boundary is wrong.
      if not np.array_equal(input_ids[:len(prompt_ids)], prompt_ids):
        raise ValueError(f"answer {answer!r} merges with the prompt's last tokens when tokenized")
      labels_mask = self._labels_mask(input_ids, len(prompt_ids))
    positions, _ = mrope_positions(input_ids, list(grid_thw), image_token_id=self.image_token_id,
                                   merge_size=self.merge_size)
    return {
        "input_ids": input_ids,
        "positions": positions,
        "pixel_values": pixel_values,
        "grid_thw": grid_thw,
        "labels_mask": labels_mask,
    }
