"""End-to-end demo on the CPU default: build the student, process a generated image, run it.

  python launch/demo.py --config=configs/tiny.py [--hf_dir=/path/to/hf/checkpoint]

Draws a high-resolution scene with one tiny object, builds the chat prompt, and runs the sharded
student forward on the config's mesh.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from zwz_jax.config import load_config, parse_argv  # noqa: E402
from zwz_jax.data import batch as batching  # noqa: E402
from zwz_jax.data import processor  # noqa: E402
from zwz_jax.models import convert  # noqa: E402
from zwz_jax.models.qwen2_5_vl import ModelConfig, Qwen2_5_VL  # noqa: E402
from zwz_jax.sharding import create_sharded_model, make_mesh  # noqa: E402


def scene(width=1344, height=896, seed=0) -> tuple[Image.Image, tuple[int, int, int, int]]:
  """A busy background with one small blue square; returns the image and the square's box."""
  rng = np.random.default_rng(seed)
  img = Image.fromarray(rng.integers(90, 160, (height, width, 3), dtype=np.uint8))
  draw = ImageDraw.Draw(img)
  x0, y0 = int(width * 0.71), int(height * 0.23)
  box = (x0, y0, x0 + 24, y0 + 24)
  draw.rectangle(box, fill=(30, 60, 220))
  return img, box


def main(argv):
  config_path, overrides, rest = parse_argv(argv, default_config="configs/tiny.py")
  parser = argparse.ArgumentParser()
  parser.add_argument("--hf_dir", default="", help="load weights from a HF checkpoint instead of random init")
  parser.add_argument("--workdir", default="", help="load the latest trained weights of launch/train.py")
  args = parser.parse_args(rest)
  config = load_config(config_path, overrides)
  model_cfg = ModelConfig.from_config(config.model)
  mesh = make_mesh(config.mesh)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mesh {dict(mesh.shape)}")

  t0 = time.perf_counter()
  if args.hf_dir:
    model = convert.load_hf_state(model_cfg, args.hf_dir, mesh)
  elif args.workdir:
    from zwz_jax.train.checkpoint import load_model
    model, what = load_model(config, args.workdir, mesh)
    print(f"weights: {what}")
  else:
    model = create_sharded_model(lambda: Qwen2_5_VL(model_cfg, rngs=nnx.Rngs(config.seed)), mesh)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  print(f"student: {n_params:,} parameters ({time.perf_counter() - t0:.1f}s)")

  tok = processor.load_tokenizer(config.processor.tokenizer, config)
  proc = processor.Processor.from_config(config, tok)
  image, box = scene()
  question = "What colour is the small square?"
  ex = proc([image], question)
  v = model_cfg.vision
  win = (v.window_size // v.patch_size // v.spatial_merge_size * v.spatial_merge_size) ** 2
  lay = batching.layout_vision(ex["pixel_values"], ex["grid_thw"], patch_size=v.patch_size,
                               merge_size=v.spatial_merge_size, window_size=v.window_size)
  batch = batching.build_batch([ex], vision_cfg=v, image_token_id=model_cfg.image_token_id,
                               max_tokens=-(-len(ex["input_ids"]) // 64) * 64,
                               max_patches=-(-len(lay["patches"]) // win) * win)
  print(f"image {image.size[0]}x{image.size[1]}, box {box} -> grid_thw {ex['grid_thw'].tolist()}, "
        f"{len(ex['pixel_values'])} patches, {len(ex['input_ids'])} tokens")

  keys = ("input_ids", "positions", "attention_mask", "pixel_values", "vision_positions",
          "vision_segment_ids", "image_token_index")
  replicated = NamedSharding(mesh, PartitionSpec())
  inputs = {k: jax.device_put(jnp.asarray(batch[k]), replicated) for k in keys}
  forward = jax.jit(lambda m, b: m(**b))
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    logits = forward(model, inputs).block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = forward(model, inputs).block_until_ready()
    step_s = time.perf_counter() - t0
  last = np.asarray(logits[0, len(ex["input_ids"]) - 1])
  top = np.argsort(-last)[:5]
  print(f"forward: logits {tuple(logits.shape)}, first call {compile_s:.2f}s, then {step_s * 1e3:.1f} ms")
  print("next-token top-5:", ", ".join(f"{tok.id_to_token(int(i))!r} {last[i]:.3f}" for i in top))
  if not np.isfinite(last).all():
    raise SystemExit("non-finite logits")


if __name__ == "__main__":
  main(sys.argv[1:])
