"""A tiny random Qwen2.5-VL checkpoint on disk, as a real teacher would be: model weights, the tiny
tokenizer with Qwen2-VL's chat template, and a PIL image-processor config. Built offline in seconds.
"""
import json
import os

import torch
import transformers

from zwz_jax.config import load_config
from zwz_jax.data import tiny_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Qwen2-VL's published chat template (as used in transformers' own processor tests).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Qwen3-VL-Instruct's published chat template without its tool-calling branches: a system turn only
# when the messages start with one (no default), images inline in the user turn.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content_item in message.content %}{%- if 'text' in content_item %}{{- content_item.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def special_ids():
  """The tiny tokenizer's special-token ids, placed by configs/tiny.py."""
  return tiny_tokenizer.tiny_special_ids(load_config(os.path.join(REPO, "configs", "tiny.py")))


def tiny_qwen2_5_vl_config():
  ids = special_ids()
  eot, im_end = ids[tiny_tokenizer.ENDOFTEXT], ids[tiny_tokenizer.IM_END]
  return transformers.Qwen2_5_VLConfig(
      text_config=dict(
          vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
          bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot,
          rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}),
      vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                         out_hidden_size=64, fullatt_block_indexes=[1], window_size=56),
      image_token_id=ids[tiny_tokenizer.IMAGE_PAD], video_token_id=ids[tiny_tokenizer.VIDEO_PAD],
      vision_start_token_id=ids[tiny_tokenizer.VISION_START],
      vision_end_token_id=ids[tiny_tokenizer.VISION_END],
      bos_token_id=eot, eos_token_id=im_end, pad_token_id=eot)


def save_tiny_qwen2_5_vl(directory, *, seed=0, max_pixels=28 * 28 * 16, chat_template=True):
  """Writes the checkpoint to `directory` and returns it."""
  os.makedirs(directory, exist_ok=True)
  torch.manual_seed(seed)
  model = transformers.Qwen2_5_VLForConditionalGeneration(tiny_qwen2_5_vl_config())
  model.save_pretrained(directory)
  tok = tiny_tokenizer.build_tiny_tokenizer(512, special_ids())
  tiny_tokenizer.save(tok, directory)
  if chat_template:
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    config["chat_template"] = QWEN2_VL_CHAT_TEMPLATE
    with open(path, "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
  preprocessor = {
      "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
      "min_pixels": 56 * 56, "max_pixels": max_pixels, "patch_size": 14, "temporal_patch_size": 2,
      "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711]}
  with open(os.path.join(directory, "preprocessor_config.json"), "w", encoding="utf-8") as f:
    json.dump(preprocessor, f, indent=2)
  return directory
