"""Our jitted train step vs a `transformers` PyTorch train step, and the input pipeline vs the step.

  python -m bench.train_step [--steps=7]

For each config (tiny, small) both sides start from the same weights and take the same batch, drawn
from our data pipeline over synthetic records: AdamW with global-norm clipping, the answer-token
cross-entropy as the loss. Prints median step times, their ratio (torch / ours: >1 means we are
faster), the training FLOPs (3x the analytic forward of the batch's real images at its padded text
length, the work both sides must do) and the fraction of this machine's measured matmul peak each
side achieves. The losses before and after one update are compared, so the figures time the same
math. Then the input pipeline's batches/s against our steps/s: above 1 the step never waits on data.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import grain
import jax
import numpy as np
import torch
import transformers

from bench import timing
from bench.forward import CASES as FORWARD_CASES
from tests.record_fixtures import write_records
from zwz_jax import records
from zwz_jax.config import load_config
from zwz_jax.data import pipeline
from zwz_jax.data import processor
from zwz_jax.models import convert
from zwz_jax.sharding import make_mesh
from zwz_jax.train.trainer import Trainer
from zwz_jax.train.metrics import forward_flops

# A constant learning rate: step 0 of a warmup has lr 0, which would hide a wrong update.
COMMON = ["train.warmup_steps=0", "train.end_lr_frac=1.0"]
# name -> overrides of configs/tiny.py (small: bench/forward.py's small model, fewer rows per batch
# so a step stays near a second on a laptop CPU).
CASES = {
    "tiny": COMMON,
    "small": COMMON + FORWARD_CASES["small"][0] + ["data.global_batch_size=2"],
}


def examples_by_id(config, tokenizer, record_dir) -> dict:
  """The processor's per-record outputs (HF's raster patch order), keyed by record id."""
  pre = pipeline.Preprocessor(config, tokenizer)
  source = grain.sources.ArrayRecordDataSource(records.shard_paths(record_dir))
  out = {}
  for i in range(len(source)):
    ex = pre(source[i])
    if not isinstance(ex, pipeline.Skipped):
      out[ex["id"]] = ex
  return out


def hf_inputs(batch, examples, image_token_id) -> dict:
  """The batch as HF takes it: the same padded token arrays, images concatenated unpadded."""
  for row, ex in zip(batch["input_ids"], examples):
    if not np.array_equal(row[:len(ex["input_ids"])], ex["input_ids"]):
      raise RuntimeError("pipeline batch rows do not match the records' processor outputs")
  ids = torch.as_tensor(batch["input_ids"]).long()
  return dict(input_ids=ids, attention_mask=torch.as_tensor(batch["attention_mask"]).long(),
              pixel_values=torch.as_tensor(np.concatenate([ex["pixel_values"] for ex in examples])),
              image_grid_thw=torch.as_tensor(np.concatenate([ex["grid_thw"] for ex in examples])),
              mm_token_type_ids=(ids == image_token_id).int())


def torch_loss(logits, input_ids, labels_mask):
  """answer_loss_sums in torch: next-token cross-entropy summed over answer tokens, / their count."""
  logits = logits[:, :-1].float()
  targets = input_ids[:, 1:]
  mask = labels_mask[:, 1:].float()
  nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets[..., None])[..., 0]
  return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def run_case(name, overrides, record_dir, args, peak) -> dict:
  config = load_config("configs/tiny.py", overrides)
  config.data.train = (record_dir,)
  tr = config.train
  tokenizer = processor.load_tokenizer(config.processor.tokenizer, config)
  trainer = Trainer(config, make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  cfg = trainer.model_cfg
  torch.manual_seed(0)
  hf = transformers.Qwen2_5_VLForConditionalGeneration(
      transformers.Qwen2_5_VLConfig(**convert.hf_config_dict(cfg)))
  with tempfile.TemporaryDirectory() as d:
    hf.save_pretrained(d)
    config.train.init_from = d
    state = trainer.init_state()
  device = timing.torch_device()
  hf.to(device).train()

  it = pipeline.make_train_iterator(config, tokenizer)
  batch = next(it)
  it.close()
  by_id = examples_by_id(config, tokenizer, record_dir)
  examples = [by_id[i] for i in batch["ids"]]
  hf_in = {k: t.to(device) for k, t in hf_inputs(batch, examples, cfg.image_token_id).items()}
  input_ids = hf_in["input_ids"]
  labels_mask = torch.as_tensor(batch["labels_mask"]).to(device)
  opt = torch.optim.AdamW(hf.parameters(), lr=tr.learning_rate, betas=(tr.b1, tr.b2), eps=tr.eps,
                          weight_decay=tr.weight_decay)

  def torch_step():
    opt.zero_grad(set_to_none=True)
    loss = torch_loss(hf(**hf_in).logits, input_ids, labels_mask)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), tr.grad_clip)
    opt.step()
    return loss.item()

  def our_step():  # as the training loop calls it: host batch in, so the transfer is timed too
    nonlocal state
    state, m = trainer.update(state, batch)
    jax.block_until_ready((state, m))
    return float(m["loss"])

  # Two steps on the batch: the first loss checks the forward, the second the update between them.
  ours_losses = [our_step(), our_step()]
  torch_losses = [torch_step(), torch_step()]
  rel = [abs(a - b) / abs(b) for a, b in zip(ours_losses, torch_losses)]
  ours_t, torch_t = timing.paired(our_step, torch_step, args.steps, args.warmup)

  flops = 3 * sum(forward_flops(cfg, [tuple(g) for g in ex["grid_thw"]], batch["input_ids"].shape[1])
                  for ex in examples)
  b, seq = batch["input_ids"].shape
  patches = sum(int(np.prod(ex["grid_thw"], axis=1).sum()) for ex in examples)
  n_params = sum(p.numel() for p in hf.parameters())
  print(f"{name:6s} {n_params / 1e6:6.2f}M  batch {b}x{seq} tokens, {patches:5d} patches | "
        f"ours {ours_t * 1e3:8.1f} ms  torch {torch_t * 1e3:8.1f} ms  torch/ours {torch_t / ours_t:5.2f}x | "
        f"{flops / 1e9:7.2f} GFLOP  ours {flops / ours_t / peak:6.1%}  torch {flops / torch_t / peak:6.1%} "
        f"of peak | loss {ours_losses[0]:.4f} rel diff {rel[0]:.1e}, after 1 update {rel[1]:.1e}",
        flush=True)
  timing.emit(args.json, bench="train_step", case=name, what=f"SFT train step, batch {b}x{seq}",
              ours=f"{ours_t * 1e3:.0f} ms ({flops / ours_t / peak:.0%} of peak)",
              reference=f"{torch_t * 1e3:.0f} ms ({flops / torch_t / peak:.0%} of peak)", ratio=torch_t / ours_t,
              meaning="torch / ours time", check=f"loss rel diff {rel[0]:.0e}, after 1 update {rel[1]:.0e}")
  return {"config": config, "tokenizer": tokenizer, "step_s": ours_t}


def pipeline_rate(config, tokenizer, workers, batches) -> float:
  config = config.copy_and_resolve_references()
  config.data.num_workers = workers
  it = pipeline.make_train_iterator(config, tokenizer)
  try:
    return pipeline.measure_throughput(it, batches)
  finally:
    it.close()


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=7, help="timed steps per side and config")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the two checked ones")
  parser.add_argument("--records", type=int, default=48)
  parser.add_argument("--pipeline_batches", type=int, default=8)
  timing.add_json_flag(parser)
  args = parser.parse_args()
  jax.config.update("jax_default_matmul_precision", "highest")
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  torch.set_num_threads(os.cpu_count() or 1)
  peak = timing.matmul_peak()
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); measured fp32 matmul peak "
        f"{peak / 1e9:.1f} GFLOP/s", flush=True)
  with tempfile.TemporaryDirectory() as record_dir:
    write_records(record_dir, args.records, seed=0)
    results = {name: run_case(name, overrides, record_dir, args, peak) for name, overrides in CASES.items()}
    print("input pipeline (batches/s) vs our train step (steps/s); ratio > 1: data never the bottleneck")
    for name, r in results.items():
      steps = 1 / r["step_s"]
      for workers in (0, 2):
        rate = pipeline_rate(r["config"], r["tokenizer"], workers, args.pipeline_batches)
        print(f"{name:6s} batch {r['config'].data.global_batch_size}, num_workers={workers}: "
              f"{rate:7.2f} batches/s vs {steps:6.2f} steps/s -> ratio {rate / steps:6.2f}", flush=True)
        timing.emit(args.json, bench="train_step", case=name, what=f"input pipeline, num_workers={workers}",
                    ours=f"{rate:.1f} batches/s", reference=f"{steps:.2f} train steps/s", ratio=rate / steps,
                    meaning="batches / steps per second (>1: data never waits)")


if __name__ == "__main__":
  main()
