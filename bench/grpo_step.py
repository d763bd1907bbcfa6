"""One GRPO step: rollout vs update time, and rollout sampling vs the plain sampler, one run.

  python -m bench.grpo_step [--steps=3] [--new_tokens=16]

For each config (tiny, small; the model overrides of bench/forward.py) the GRPO trainer of
configs/tiny_grpo.py takes RL steps on synthetic records exactly as `launch/train.py` does
(`Trainer.step` with the rollout collector: rollout with rewards, old log-probs once, the PPO
updates), with dynamic sampling off so every step is one rollout round. Prints the median rollout and update time per step
and their ratio. Then the rollout's sampling alone (one prefill per prompt shared by its
`num_generations` samples, log-probs returned) against the plain sampler generating the same rows
from a batch with every prompt repeated: tokens/s of both and their ratio (>1: sharing the prefill
pays). Every row decodes `new_tokens` steps on both sides (the scan runs to the end), so the rates
count the same work.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import jax
import numpy as np

from bench import timing
from bench.forward import CASES as FORWARD_CASES
from tests.record_fixtures import write_records
from zwz_jax.config import load_config
from zwz_jax.data import batch as batching
from zwz_jax.data import pipeline
from zwz_jax.data import processor
from zwz_jax.generate import sampler
from zwz_jax.sharding import make_mesh
from zwz_jax.train import loop

COMMON = ["grpo.dynamic_sampling=false", "train.warmup_steps=0", "train.end_lr_frac=1.0"]
# name -> overrides of configs/tiny_grpo.py (small: fewer prompts so a step stays near seconds).
CASES = {
    "tiny": COMMON,
    "small": COMMON + FORWARD_CASES["small"][0] + ["data.global_batch_size=4"],
}


def repeat_prompts(prompts: dict, n: int) -> dict:
  """The prompt batch with every row repeated n times (the plain sampler's view of a rollout)."""
  return batching.repeat_rows({k: prompts[k] for k in batching.MODEL_INPUTS}, n)


def run_case(name, overrides, record_dir, args):
  config = load_config("configs/tiny_grpo.py", overrides + [f"data.train={record_dir}",
                                                            f"grpo.max_new_tokens={args.new_tokens}"])
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  tokenizer = processor.load_tokenizer(config.processor.tokenizer, config)
  trainer = loop.build(config, mesh, tokenizer)
  collector = trainer.source
  state = trainer.init_state()
  it = pipeline.make_train_iterator(config, tokenizer, prompts_only=True)
  n = int(config.grpo.num_generations)

  steps = []
  for i in range(1 + args.steps):  # the first step compiles
    state, m, _ = trainer.step(state, it, i)
    steps.append(m)
  rollout = float(np.median([m["rollout_time_s"] for m in steps[1:]]))
  update = float(np.median([m["update_time_s"] for m in steps[1:]]))

  prompts = next(it)
  params = state["params"]
  key = jax.random.key(0)
  shared = timing.median(lambda: collector.sample(trainer, params, prompts, key), args.steps, warmup=1)
  model = trainer.model(params)
  plain_batch = repeat_prompts(prompts, n)
  with jax.set_mesh(mesh):
    plain = timing.median(lambda: sampler.generate(model, plain_batch, collector.sampling, key), args.steps, warmup=1)
  rows = len(prompts["input_ids"]) * n
  tokens = rows * args.new_tokens
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"{name:6s} {n_params / 1e6:6.2f}M  {len(prompts['input_ids'])} prompts x {n} samples x "
        f"{args.new_tokens} tokens, {config.grpo.num_minibatches} updates/step | rollout {rollout * 1e3:7.0f} ms  "
        f"update {update * 1e3:7.0f} ms  rollout/update {rollout / update:5.2f}x | rollout sampling "
        f"{tokens / shared:7.1f} tok/s vs plain sampler {tokens / plain:7.1f} tok/s -> {plain / shared:5.2f}x | "
        f"reward {np.mean([m['reward_mean'] for m in steps]):.2f}, sampler/trainer log-prob gap "
        f"{max(m['logp_gap_max'] for m in steps):.1e}", flush=True)
  gap = f"sampler/trainer log-prob gap {max(m['logp_gap_max'] for m in steps):.0e}"
  timing.emit(args.json, bench="grpo_step", case=name, what=f"RL step: rollout vs update ({len(prompts['input_ids'])}x{n} samples)",
              ours=f"rollout {rollout * 1e3:.0f} ms", reference=f"update {update * 1e3:.0f} ms", ratio=rollout / update,
              meaning="rollout / update time", check=gap)
  timing.emit(args.json, bench="grpo_step", case=name, what="rollout sampling vs plain sampler",
              ours=f"{tokens / shared:.0f} tok/s (shared prefill)", reference=f"{tokens / plain:.0f} tok/s (prompts repeated)",
              ratio=plain / shared, meaning="rollout / plain tokens/s")
  it.close()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=3, help="timed RL steps (after one compiling step)")
  parser.add_argument("--new_tokens", type=int, default=16)
  parser.add_argument("--records", type=int, default=32)
  timing.add_json_flag(parser)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} cores; times are medians "
        f"of {args.steps} RL steps", flush=True)
  with tempfile.TemporaryDirectory() as record_dir:
    write_records(record_dir, args.records, seed=0, sizes=(200, 400))
    for name, overrides in CASES.items():
      run_case(name, overrides, record_dir, args)


if __name__ == "__main__":
  main()
