"""A tiny, deterministic Qwen2-style tokenizer for tests and CPU demos.

Byte-level BPE with Qwen2's pre-tokenizer, trained in well under a second on a built-in English
corpus, with Qwen's special tokens at fixed ids taken from the config. Nothing is downloaded.
"""
import json
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

# Qwen2's split pattern: contractions, letter runs, single digits, punctuation runs, whitespace.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# 256 byte symbols must fit below the first special id.
_NUM_BYTES = 256

_CORPUS = """\
system: You are a helpful assistant. user: Look at the image and answer the question.
assistant: The answer is C. user: What is the shape of the sign? assistant: It is a circle.

The picture shows a busy street corner on a bright afternoon. A red car is parked next to a blue
van, and two people wait at the green traffic light. On the left there is a small yellow sign with
the number 42 written in black letters. Behind it, a grey building has 12 windows on each floor.

How many circles are in the image? There are three circles: one red, one orange and one purple.
The square in the top right corner is white with a thin black border. A triangle sits below it,
and a large brown rectangle fills the bottom of the frame. The star is gold and the heart is pink.

Question: What colour is the umbrella held by the woman in the red box? Options: A. blue B. green
C. yellow D. red. Answer: A. Only focus on the objects inside the red bounding box and answer with
the letter of the correct option. The answer is B, because the umbrella is green with white dots.

The kitchen table is made of wood and glass. On it are 5 cups, 3 plates, 2 metal spoons and 1 bottle
of water. The label on the bottle reads "SPRING 2024" in small capital letters. A cat is sleeping
under the chair, and a dog is looking out of the window at 7 birds on a wire.

Read the text on the sign: "OPEN 9 AM - 6 PM, MONDAY TO FRIDAY". The shop sells books, maps, pens,
paper and paint in many colours: cyan, magenta, violet, indigo, teal, olive, navy and silver.
Each shelf holds 10 to 20 items, and the price tags show 0.99, 1.50, 3.75 and 8.00 dollars.

A zoomed view of the region reveals fine details that are hard to see in the full image: the shape
of a logo, the number on a jersey, the texture of a stone wall or the material of a chair. The model
should count objects, read text, name colours, describe structure and identify what each object is.
"""


def tiny_special_ids(config):
  """Fixed ids of Qwen's special tokens for `config`.

  vision_start/vision_end/image_pad/video_pad come from the model config; endoftext, im_start and
  im_end sit directly below vision_start, as in the tiny config (500..506).
  """
  m = config.model
  vs = int(m.vision_start_token_id)
  return {
      ENDOFTEXT: vs - 3,
      IM_START: vs - 2,
      IM_END: vs - 1,
      VISION_START: vs,
      VISION_END: int(m.vision_end_token_id),
      IMAGE_PAD: int(m.image_token_id),
      VIDEO_PAD: int(m.video_token_id),
  }


def _check_special_ids(vocab_size, special_ids):
  missing = [t for t in SPECIAL_TOKENS if t not in special_ids]
  if missing:
    raise ValueError(f"special_ids is missing {missing}")
  ids = sorted(special_ids.values())
  if len(set(ids)) != len(ids):
    raise ValueError(f"special token ids collide: {special_ids}")
  if ids[0] < _NUM_BYTES + 1:
    raise ValueError(f"special ids must leave room for {_NUM_BYTES} byte tokens below them, "
                     f"got smallest id {ids[0]}")
  if ids[-1] >= vocab_size:
    raise ValueError(f"special id {ids[-1]} does not fit vocab_size {vocab_size}")


def _empty_tokenizer():
  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  return tok


def _pad_vocab(tok, size):
  """Fills the learned vocab up to exactly `size` ids with unreachable placeholder tokens.

  A small corpus can yield fewer merges than asked for; padding keeps the specials at their ids.
  """
  state = json.loads(tok.to_str())
  vocab = state["model"]["vocab"]
  for i in range(len(vocab), size):
    vocab[f"<|unused_{i}|>"] = i
  return Tokenizer.from_str(json.dumps(state))


def build_tiny_tokenizer(vocab_size, special_ids):
  """Byte-level BPE whose learned vocab fills ids below the specials; specials at `special_ids`."""
  _check_special_ids(vocab_size, special_ids)
  num_learned = min(special_ids.values())
  tok = _empty_tokenizer()
  trainer = trainers.BpeTrainer(
      vocab_size=num_learned, min_frequency=1, show_progress=False, special_tokens=[],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([_CORPUS], trainer=trainer)
  if tok.get_vocab_size() < num_learned:
    tok = _pad_vocab(tok, num_learned)
  by_id = {i: t for t, i in special_ids.items()}
  # Specials get consecutive ids from the end of the vocab; reserved names fill gaps between them.
  for i in range(num_learned, max(by_id) + 1):
    content = by_id.get(i, f"<|reserved_{i}|>")
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])
    if tok.token_to_id(content) != i:
      raise RuntimeError(f"{content} got id {tok.token_to_id(content)}, expected {i}")
  return tok


def save(tokenizer, directory):
  """Writes tokenizer.json and a tokenizer_config.json that transformers' Qwen2 tokenizer loads."""
  os.makedirs(directory, exist_ok=True)
  tokenizer.save(os.path.join(directory, "tokenizer.json"))
  added = {
      str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False,
               "single_word": False, "special": True}
      for i, t in sorted(tokenizer.get_added_tokens_decoder().items())
  }
  config = {
      "tokenizer_class": "Qwen2Tokenizer",
      "added_tokens_decoder": added,
      "additional_special_tokens": [t for t in SPECIAL_TOKENS if t != ENDOFTEXT],
      "bos_token": None,
      "eos_token": IM_END,
      "pad_token": ENDOFTEXT,
      "unk_token": None,
      "clean_up_tokenization_spaces": False,
      "errors": "replace",
      "split_special_tokens": False,
      "model_max_length": 32768,
  }
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2, ensure_ascii=False)
