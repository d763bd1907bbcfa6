"""How well data.buckets fits your records, and a table that fits them better, before a pod trains on it.

  python launch/buckets.py --config=configs/student_7b.py --config.data.train="('/data/zwz_records',)" \
      --config.processor.tokenizer=/models/Qwen2.5-VL-7B-Instruct [--max_records=20000] [--propose=6]

Processes every record as training does (the config's grounding, view, target and processor, on one
CPU, no model) and prints, per bucket of data.buckets: the records it takes, its share of the FLOPs
the buckets compute, the share of its token and patch slots that hold data (a step's text_fill and
vision_fill) and the records' own FLOPs over what their bucket computes. With --propose=N it adds
buckets greedily to the table's largest one, each time the bucket that saves the most computed
FLOPs, up to N: a bucket is one more compiled train step, so check a new table's buckets with
launch/compile.py before training on it.
"""
from __future__ import annotations

from absl import app, flags

from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag("configs/tiny.py")
flags.DEFINE_integer("max_records", 0, "measure N records spread evenly over data.train (0: all)")
flags.DEFINE_integer("propose", 0, "also propose a table of at most N buckets (0: none)")
FLAGS = flags.FLAGS


def table(rows) -> str:
  out = ["| bucket | records | share of computed FLOPs | token fill | patch fill | own / computed FLOPs |",
         "| --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    if "token_fill" not in r:
      out.append(f"| {r['bucket']} | {r['records']:,} | | | | |")
      continue
    out.append(f"| {r['bucket']} | {r['records']:,} | {r['flops_share']:.1%} | {r['token_fill']:.1%} | "
               f"{r['patch_fill']:.1%} | {r['flop_fill']:.1%} |")
  return "\n".join(out)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from zwz_jax.data import batch as batch_lib
  from zwz_jax.data import buckets, pipeline, processor
  config = CONFIG.value
  layout = batch_lib.VisionLayout.from_config(config.model)
  current = pipeline.check_buckets(config.data.buckets, layout)
  need = buckets.needs(config, processor.load_tokenizer(config.processor.tokenizer, config), FLAGS.max_records)
  skipped = ", ".join(f"{k} {v}" for k, v in sorted(need.skipped.items()))
  print(f"{len(need.ids):,} records of {config.data.train} (grounding {config.data.grounding}, view "
        f"{config.data.view})" + (f"; unusable: {skipped}" if skipped else ""))
  cost = buckets.bucket_cost(config)
  print(f"\ndata.buckets = {current}\n\n{table(buckets.fit(need, current, cost))}")
  if FLAGS.propose:
    proposal = buckets.propose(need, FLAGS.propose, current[-1], cost, layout.window_patches)
    saved = 1 - buckets.computed_flops(need, proposal, cost) / buckets.computed_flops(need, current, cost)
    print(f"\nproposed: --config.data.buckets=\"{proposal}\" ({saved:.1%} fewer computed FLOPs)\n\n"
          f"{table(buckets.fit(need, proposal, cost))}")


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
