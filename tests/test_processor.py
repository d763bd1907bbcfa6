"""Host preprocessing equals transformers' Qwen2.5-VL processing (CPU, offline, tiny config).

The reference image processor is the PIL one: the default needs torchvision, which is not installed.
"""
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageDraw
import pytest
import torch
import transformers
from transformers import vision_utils
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_qwen2_vl

from tests.tiny_hf_vlm import QWEN2_VL_CHAT_TEMPLATE
from zwz_jax.config import load_config
from zwz_jax.data import processor as proc
from zwz_jax.data import tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tiny_config():
  """A fresh copy that a test may modify."""
  return load_config(os.path.join(REPO, "configs", "tiny.py"))


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg():
  return load_tiny_config()


@pytest.fixture(scope="module")
def tok(cfg):
  return proc.load_tokenizer("", cfg)


@pytest.fixture(scope="module")
def tok_dir(tok, tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tiny_tokenizer"))
  tiny_tokenizer.save(tok, d)
  return d


@pytest.fixture(scope="module")
def ours(cfg, tok):
  return proc.Processor.from_config(cfg, tok)


@pytest.fixture(scope="module")
def hf_image_processor(cfg):
  v, p = cfg.model.vision, cfg.processor
  return hf_qwen2_vl.Qwen2VLImageProcessorPil(
      min_pixels=p.min_pixels, max_pixels=p.max_pixels, patch_size=v.patch_size,
      temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
      image_mean=list(p.image_mean), image_std=list(p.image_std))


class _ImageOnlyProcessor(transformers.Qwen2_5_VLProcessor):
  """Qwen2_5_VLProcessor without a video processor (that one needs torchvision)."""

  def check_argument_for_proper_class(self, argument_name, argument):
    if argument_name == "video_processor" and argument is None:
      return None
    return super().check_argument_for_proper_class(argument_name, argument)


def make_hf_processor(tok_dir, image_processor, padding_side="left"):
  tokenizer = transformers.Qwen2TokenizerFast.from_pretrained(tok_dir)
  tokenizer.padding_side = padding_side
  return _ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=None)


@pytest.fixture(scope="module")
def hf_processor(tok_dir, hf_image_processor):
  return make_hf_processor(tok_dir, hf_image_processor)


@pytest.fixture(scope="module")
def hf_model(cfg):
  v, t = cfg.model.vision, cfg.model.text
  config = transformers.Qwen2_5_VLConfig(
      text_config=dict(
          vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
          num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
          num_key_value_heads=t.num_kv_heads, rms_norm_eps=t.rms_norm_eps,
          rope_parameters={"rope_type": "default", "mrope_section": list(t.mrope_section),
                           "rope_theta": t.rope_theta}),
      vision_config=dict(
          depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
          num_heads=v.num_heads, out_hidden_size=v.out_hidden_size,
          fullatt_block_indexes=list(v.fullatt_block_indexes), window_size=v.window_size,
          tokens_per_second=v.tokens_per_second, patch_size=v.patch_size,
          spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size),
      image_token_id=cfg.model.image_token_id, video_token_id=cfg.model.video_token_id,
      vision_start_token_id=cfg.model.vision_start_token_id,
      vision_end_token_id=cfg.model.vision_end_token_id)
  torch.manual_seed(0)
  return transformers.Qwen2_5_VLForConditionalGeneration(config).eval()


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def noise_image(h, w, seed=0, mode="RGB"):
  rng = np.random.default_rng(seed)
  if mode == "L":
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
  if mode == "RGBA":
    return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
  return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def shapes_image(h, w, seed=0):
  """Flat colours with hard edges: the case where bicubic overshoot and clipping matter."""
  rng = np.random.default_rng(seed)
  image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
  draw = ImageDraw.Draw(image)
  for _ in range(6):
    x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
    y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if rng.random() < 0.5:
      draw.rectangle([x0, y0, x1, y1], fill=colour)
    else:
      draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=colour, outline=(0, 0, 0))
  return image


def palette_with_transparency(h, w):
  image = shapes_image(h, w, seed=3).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
  image.info["transparency"] = 0
  return image


IMAGES = {
    "noise_100x150": lambda: noise_image(100, 150),
    "noise_57x83": lambda: noise_image(57, 83, seed=1),  # not multiples of 28
    "tiny_30x20_upscaled": lambda: noise_image(30, 20, seed=2),  # below min_pixels
    "tiny_7x9_upscaled": lambda: shapes_image(7, 9, seed=4),
    "tall_400x90": lambda: shapes_image(400, 90, seed=5),
    "wide_60x500": lambda: noise_image(60, 500, seed=6),
    "big_1000x800_downscaled": lambda: shapes_image(1000, 800, seed=7),  # above max_pixels
    "exact_max_224x224": lambda: noise_image(224, 224, seed=8),
    "extreme_aspect_3x500": lambda: noise_image(3, 500, seed=9),
    "gray_123x77": lambda: noise_image(123, 77, seed=10, mode="L"),
    "rgba_90x110": lambda: noise_image(90, 110, seed=11, mode="RGBA"),
    "palette_transparency_64x96": lambda: palette_with_transparency(64, 96),
}


def preprocess(image, cfg):
  v, p = cfg.model.vision, cfg.processor
  return proc.preprocess_image(
      image, patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
      merge_size=v.spatial_merge_size, min_pixels=p.min_pixels, max_pixels=p.max_pixels,
      image_mean=p.image_mean, image_std=p.image_std)


def test_smart_resize_matches_hf_on_many_sizes(cfg):
  p, factor = cfg.processor, 28
  rng = np.random.default_rng(0)
  sizes = [(int(h), int(w)) for h, w in rng.integers(1, 2000, (3000, 2))]
  sizes += [(28 * i + d, 28 * j - d) for i in range(1, 12) for j in range(1, 12) for d in (0, 14)]
  checked = 0
  for h, w in sizes:
    if max(h, w) / min(h, w) > 200 or min(h, w) == 0:
      continue
    for lo, hi in ((p.min_pixels, p.max_pixels), (56 * 56, 28 * 28 * 1280)):
      assert proc.smart_resize(h, w, factor, lo, hi) == hf_qwen2_vl.smart_resize(
          h, w, factor=factor, min_pixels=lo, max_pixels=hi), (h, w, lo, hi)
      checked += 1
  assert checked > 5000


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_patches_match_hf(name, cfg, hf_image_processor):
  image = IMAGES[name]()
  patches, grid = preprocess(image, cfg)
  ref = hf_image_processor(images=[image], return_tensors="np")
  assert grid.dtype == np.int64 and grid.shape == (3,)
  np.testing.assert_array_equal(grid, ref["image_grid_thw"][0])
  assert patches.dtype == np.float32
  assert patches.shape == ref["pixel_values"].shape
  assert np.abs(patches - ref["pixel_values"]).max() <= 1e-5


def test_grid_sizes_cover_resize_branches(cfg):
  grids = {name: preprocess(make(), cfg)[1] for name, make in IMAGES.items()}
  p = cfg.processor
  area = {name: g[1] * g[2] * 14 * 14 for name, g in grids.items()}
  assert area["tiny_30x20_upscaled"] >= p.min_pixels
  assert area["big_1000x800_downscaled"] <= p.max_pixels
  assert tuple(grids["exact_max_224x224"]) == (1, 16, 16)
  assert all(g[1] % 2 == 0 and g[2] % 2 == 0 for g in grids.values())


def test_patch_layout_is_merge_block_major(cfg):
  """Each row is one 14x14 patch (repeated over time), rows grouped by 2x2 merge blocks."""
  image = noise_image(56, 84, seed=12)
  patches, grid = preprocess(image, cfg)
  assert tuple(grid) == (1, 4, 6)
  p = cfg.processor
  x = (np.asarray(image, np.float64) * (1 / 255)).astype(np.float32)
  x = (x - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)
  rows = patches.reshape(-1, 3, 2, 14, 14)
  np.testing.assert_array_equal(rows[:, :, 0], rows[:, :, 1])
  pos = proc.vision_rope_positions(grid, 2)
  for row, (ph, pw) in zip(rows, pos):
    want = x[ph * 14:(ph + 1) * 14, pw * 14:(pw + 1) * 14].transpose(2, 0, 1)
    np.testing.assert_array_equal(row[:, 0], want)


# ----------------------------------------------------------------------------------------------
# Vision indices
# ----------------------------------------------------------------------------------------------

WINDOW_GRIDS = [(1, 2, 2), (1, 4, 4), (1, 8, 8), (1, 8, 6), (1, 6, 10), (1, 10, 14), (1, 16, 16),
                (1, 2, 30), (1, 12, 4), (2, 8, 4), (1, 64, 36)]


@pytest.mark.parametrize("window_size", [56, 112, 84])
@pytest.mark.parametrize("grid", WINDOW_GRIDS)
def test_window_index_matches_hf(grid, window_size):
  index, window_ids = proc.window_index(grid, merge_size=2, window_size=window_size, patch_size=14)
  ref_index, ref_cu = vision_utils.get_vision_window_index(
      torch.tensor([grid]), spatial_merge_size=2, window_size=window_size, patch_size=14)
  assert index.dtype == np.int64 and window_ids.dtype == np.int32
  np.testing.assert_array_equal(index, ref_index.numpy())
  # Window ids count up window by window; their run lengths rebuild cu_window_seqlens.
  assert window_ids[0] == 0
  assert set(np.diff(window_ids).tolist()) <= {0, 1}
  cu = np.concatenate([[0], np.cumsum(np.bincount(window_ids) * 4)])
  np.testing.assert_array_equal(cu, ref_cu.numpy())


def test_window_index_concatenates_like_hf_for_several_images():
  grids = [(1, 8, 6), (1, 4, 4), (1, 10, 14)]
  ref_index, ref_cu = vision_utils.get_vision_window_index(
      torch.tensor(grids), spatial_merge_size=2, window_size=56, patch_size=14)
  parts, ids, offset, num_windows = [], [], 0, 0
  for g in grids:
    index, window_ids = proc.window_index(g, merge_size=2, window_size=56, patch_size=14)
    parts.append(index + offset)
    ids.append(window_ids + num_windows)
    offset += len(index)
    num_windows += window_ids.max() + 1
  np.testing.assert_array_equal(np.concatenate(parts), ref_index.numpy())
  cu = np.concatenate([[0], np.cumsum(np.bincount(np.concatenate(ids)) * 4)])
  np.testing.assert_array_equal(cu, ref_cu.numpy())


def test_vision_rope_positions_match_hf():
  grids = [(1, 4, 6), (1, 2, 2), (2, 6, 4), (1, 16, 10)]
  for g in grids:
    ours = proc.vision_rope_positions(np.array(g), 2)
    ref = vision_utils.get_vision_position_ids(torch.tensor([g]), 2).numpy()
    assert ours.dtype == np.int32
    np.testing.assert_array_equal(ours, ref)
  ref = vision_utils.get_vision_position_ids(torch.tensor(grids), 2).numpy()
  np.testing.assert_array_equal(proc.vision_rope_positions(np.array(grids), 2), ref)


# ----------------------------------------------------------------------------------------------
# Text: chat template, image-token expansion, input ids
# ----------------------------------------------------------------------------------------------


def test_tiny_tokenizer_ids_determinism_and_speed(cfg, tok):
  ids = tiny_tokenizer.tiny_special_ids(cfg)
  assert ids == {"<|endoftext|>": 500, "<|im_start|>": 501, "<|im_end|>": 502,
                 "<|vision_start|>": 503, "<|vision_end|>": 504, "<|image_pad|>": 505,
                 "<|video_pad|>": 506}
  for token, i in ids.items():
    assert tok.token_to_id(token) == i and tok.id_to_token(i) == token
  assert tok.get_vocab_size() == 507
  start = time.perf_counter()
  again = tiny_tokenizer.build_tiny_tokenizer(512, ids)
  assert time.perf_counter() - start < 2.0
  assert again.to_str() == tok.to_str()
  text = "What colour is the 3rd circle? It is #FF00AA, ünïcode ✓.\n"
  enc = tok.encode(text)
  assert max(enc.ids) < 500  # learned ids stay below the specials
  assert tok.decode(enc.ids) == text


def test_tiny_tokenizer_pads_vocab_and_fills_gaps():
  """More ids below the specials than the corpus can learn, and a gap between specials."""
  ids = {"<|endoftext|>": 1500, "<|im_start|>": 1501, "<|im_end|>": 1502,
         "<|vision_start|>": 1503, "<|vision_end|>": 1504, "<|image_pad|>": 1506,
         "<|video_pad|>": 1507}
  tok = tiny_tokenizer.build_tiny_tokenizer(1600, ids)
  assert all(tok.token_to_id(t) == i for t, i in ids.items())
  assert tok.id_to_token(1505) == "<|reserved_1505|>"
  assert tok.get_vocab_size() == 1508
  assert max(tok.encode(tiny_tokenizer._CORPUS).ids) < 1000  # placeholders are never produced


def test_tiny_tokenizer_loads_in_transformers(tok, tok_dir):
  text = proc.chat_prompt("How many red squares?", num_images=2, answer="B")
  for cls in (transformers.PreTrainedTokenizerFast, transformers.Qwen2TokenizerFast):
    hf = cls.from_pretrained(tok_dir)
    assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.convert_tokens_to_ids("<|image_pad|>") == 505
    assert "<|im_end|>" in hf.all_special_tokens
    assert hf.decode(tok.encode(text).ids) == text
  loaded = proc.load_tokenizer(tok_dir, load_tiny_config())
  assert loaded.to_str() == tok.to_str()


@pytest.mark.parametrize("answer", [None, "B. The red one."])
@pytest.mark.parametrize("system", [proc.DEFAULT_SYSTEM_PROMPT, "Answer briefly."])
def test_chat_prompt_matches_qwen2_vl_template(hf_processor, answer, system):
  question = "What colour is the box? Options: A. red B. blue"
  user = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": question}]
  messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
  if system == proc.DEFAULT_SYSTEM_PROMPT:
    messages = messages[1:]  # the template adds the default system turn itself
  if answer is not None:
    messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
  ref = hf_processor.tokenizer.apply_chat_template(
      messages, chat_template=QWEN2_VL_CHAT_TEMPLATE, tokenize=False,
      add_generation_prompt=answer is None)
  assert proc.chat_prompt(question, num_images=2, system_prompt=system, answer=answer) == ref


def test_expand_image_tokens():
  text = "a<|image_pad|>b<|image_pad|>c"
  out = proc.expand_image_tokens(text, [np.array([1, 4, 6]), np.array([1, 2, 2])], 2)
  assert out == "a" + "<|image_pad|>" * 6 + "b" + "<|image_pad|>" + "c"


QUESTIONS = ["How many circles are inside the red box?",
             "Read the text on the sign. Options: A. OPEN B. SHUT C. EXIT D. STOP"]
PAIRS = [("noise_57x83", "tall_400x90"), ("big_1000x800_downscaled", "tiny_30x20_upscaled")]


def test_processor_matches_hf_processor(ours, hf_processor):
  for (a, b), question in zip(PAIRS, QUESTIONS):
    images = [IMAGES[a](), IMAGES[b]()]
    out = ours(images, question)
    ref = hf_processor(images=images, text=[proc.chat_prompt(question, num_images=2)],
                       return_tensors="np")
    assert out["input_ids"].dtype == np.int32 and out["input_ids"].ndim == 1
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"][0])
    np.testing.assert_array_equal(out["grid_thw"], ref["image_grid_thw"])
    assert out["grid_thw"].dtype == np.int64
    assert out["pixel_values"].dtype == np.float32
    assert np.abs(out["pixel_values"] - ref["pixel_values"]).max() <= 1e-5
    assert not out["labels_mask"].any()


# ----------------------------------------------------------------------------------------------
# M-RoPE positions
# ----------------------------------------------------------------------------------------------


def hf_rope_index(hf_model, batch):
  with torch.no_grad():
    pos, delta = hf_model.model.get_rope_index(
        torch.as_tensor(batch["input_ids"]), torch.as_tensor(batch["mm_token_type_ids"]),
        image_grid_thw=torch.as_tensor(batch["image_grid_thw"]),
        attention_mask=torch.as_tensor(batch["attention_mask"]))
  return pos.numpy(), delta.numpy()[:, 0]


def test_positions_match_get_rope_index_unpadded(ours, hf_processor, hf_model, cfg):
  for (a, b), question in zip(PAIRS, QUESTIONS):
    images = [IMAGES[a](), IMAGES[b]()]
    out = ours(images, question)
    batch = hf_processor(images=images, text=[proc.chat_prompt(question, num_images=2)],
                         return_tensors="np")
    ref_pos, ref_delta = hf_rope_index(hf_model, batch)
    assert out["positions"].dtype == np.int32 and out["positions"].shape == (3, len(
        out["input_ids"]))
    np.testing.assert_array_equal(out["positions"], ref_pos[:, 0])
    _, delta = proc.mrope_positions(out["input_ids"], list(out["grid_thw"]),
                                    image_token_id=cfg.model.image_token_id, merge_size=2)
    assert delta == ref_delta[0]
    assert delta < 0  # images take fewer positions than tokens


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_positions_match_get_rope_index_padded_batch(padding_side, tok_dir, hf_image_processor,
                                                     hf_model, cfg):
  hf_processor = make_hf_processor(tok_dir, hf_image_processor, padding_side)
  images = [IMAGES[n]() for pair in PAIRS for n in pair]
  texts = [proc.chat_prompt(q, num_images=2) for q in QUESTIONS]
  batch = hf_processor(images=images, text=texts, padding=True, return_tensors="np")
  mask = batch["attention_mask"]
  assert (mask == 0).any()  # the two prompts differ in length, so one row is padded
  ref_pos, ref_delta = hf_rope_index(hf_model, batch)
  grids = batch["image_grid_thw"]
  for row in range(2):
    pos, delta = proc.mrope_positions(
        batch["input_ids"][row], list(grids[2 * row:2 * row + 2]),
        image_token_id=cfg.model.image_token_id, merge_size=2, attention_mask=mask[row])
    np.testing.assert_array_equal(pos, ref_pos[:, row])
    assert delta == ref_delta[row]


def test_positions_text_only_and_image_layout(cfg):
  pos, delta = proc.mrope_positions(np.arange(7), [], image_token_id=505, merge_size=2)
  np.testing.assert_array_equal(pos, np.tile(np.arange(7), (3, 1)))
  assert delta == 0
  # 2 text tokens, one image with a 2x3 merged grid, 1 text token.
  ids = np.array([1, 2] + [505] * 6 + [3])
  pos, delta = proc.mrope_positions(ids, [np.array([1, 4, 6])], image_token_id=505, merge_size=2)
  np.testing.assert_array_equal(pos[0], [0, 1, 2, 2, 2, 2, 2, 2, 5])
  np.testing.assert_array_equal(pos[1], [0, 1, 2, 2, 2, 3, 3, 3, 5])
  np.testing.assert_array_equal(pos[2], [0, 1, 2, 3, 4, 2, 3, 4, 5])
  assert delta == 6 - 9


def test_answer_labels_mask(ours, tok):
  images = [IMAGES["noise_100x150"]()]
  prompt = ours(images, QUESTIONS[0])
  full = ours(images, QUESTIONS[0], answer="C")
  n = len(prompt["input_ids"])
  np.testing.assert_array_equal(full["input_ids"][:n], prompt["input_ids"])
  np.testing.assert_array_equal(full["positions"][:, :n], prompt["positions"])
  mask = full["labels_mask"]
  assert mask.dtype == np.bool_ and mask.shape == full["input_ids"].shape
  assert not mask[:n].any()
  assert tok.decode(full["input_ids"][mask].tolist(), skip_special_tokens=False) == "C<|im_end|>"
  assert tok.decode(full["input_ids"][n:].tolist(), skip_special_tokens=False) == "C<|im_end|>\n"


# ----------------------------------------------------------------------------------------------
# Errors and module hygiene
# ----------------------------------------------------------------------------------------------


def test_error_paths(cfg, ours, tok):
  with pytest.raises(ValueError, match="aspect ratio"):
    preprocess(noise_image(1, 250), cfg)
  with pytest.raises(ValueError, match="aspect ratio"):
    hf_qwen2_vl.smart_resize(1, 250)  # transformers rejects it too
  with pytest.raises(ValueError, match="image 1: .*aspect ratio"):
    ours([noise_image(50, 50), noise_image(250, 1)], "q")
  with pytest.raises(ValueError, match="empty"):
    proc.smart_resize(0, 10, 28, 56 * 56, 28 * 28 * 64)
  with pytest.raises(ValueError, match="too small"):
    proc.smart_resize(5, 5, 28, 0, 28 * 28 * 64)
  with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders but 1 images"):
    proc.expand_image_tokens("<|image_pad|><|image_pad|>", [np.array([1, 2, 2])], 2)
  with pytest.raises(ValueError, match="placeholders"):
    ours([noise_image(50, 50)], "what is <|image_pad|>?")
  ids = np.array([1] + [505] * 5 + [2])
  with pytest.raises(ValueError, match="needs 6 image tokens"):
    proc.mrope_positions(ids, [np.array([1, 4, 6])], image_token_id=505, merge_size=2)
  with pytest.raises(ValueError, match="2 images given but the image tokens cover only 1"):
    proc.mrope_positions(ids, [np.array([1, 2, 10])] * 2, image_token_id=505, merge_size=2)
  with pytest.raises(ValueError, match="more image tokens"):
    proc.mrope_positions(ids, [np.array([1, 2, 2])], image_token_id=505, merge_size=2)
  with pytest.raises(ValueError, match="masks out every token"):
    proc.mrope_positions(ids, [], image_token_id=505, merge_size=2,
                         attention_mask=np.zeros(len(ids)))
  with pytest.raises(ValueError, match="one image"):
    proc.window_index(np.array([[1, 4, 4], [1, 2, 2]]), merge_size=2, window_size=56,
                      patch_size=14)
  with pytest.raises(ValueError, match="not divisible by spatial_merge_size"):
    proc.vision_rope_positions(np.array([1, 3, 4]), 2)


def test_tokenizer_errors(cfg, tok, tmp_path):
  bad = load_tiny_config()
  bad.model.image_token_id = 506
  with pytest.raises(ValueError, match="<\\|image_pad\\|> has id 505 but the config expects 506"):
    proc.Processor.from_config(bad, tok)
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    proc.load_tokenizer(str(tmp_path / "missing"), cfg)
  big = load_tiny_config()
  big.model.text.vocab_size = 152064
  with pytest.raises(ValueError, match="processor.tokenizer is empty but model.text.vocab_size=152064"):
    proc.load_tokenizer("", big)
  ids = tiny_tokenizer.tiny_special_ids(cfg)
  with pytest.raises(ValueError, match="collide"):
    tiny_tokenizer.build_tiny_tokenizer(512, {**ids, "<|video_pad|>": 505})
  with pytest.raises(ValueError, match="does not fit vocab_size"):
    tiny_tokenizer.build_tiny_tokenizer(505, ids)


def test_processor_imports_no_frameworks():
  code = ("import sys; import zwz_jax.data.processor, zwz_jax.data.tiny_tokenizer; "
          "bad = [m for m in ('jax', 'torch', 'transformers') if m in sys.modules]; "
          "assert not bad, bad")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stderr
