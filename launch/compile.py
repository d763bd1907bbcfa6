"""Compile the real jitted steps for a TPU slice on this machine (no TPU needed): does a config fit?

  python launch/compile.py --config=configs/student_7b.py --topology=v5p:4x4x4
  python launch/compile.py --config=configs/student_7b_grpo.py --topology=v5p:4x4x4 --functions=grpo_update,rollout
  python launch/compile.py --config=configs/eval_zoombench.py --topology=v5p:2x2x1 --functions=eval --json

Lays the config's mesh over the topology's chips, lowers each function with abstract inputs (no
weights, no data) and compiles it with the TPU compiler (libtpu: `pip install -e '.[tpu]'`). Prints
per chip: parameter, optimizer-state and batch bytes, XLA temporaries, the total against HBM, FLOPs,
the compiler's cost-model time and the MFU it implies. Functions (comma-separated, or "all"): sft
(every bucket of data.buckets), grpo_update, rollout, eval; the default is sft for trainer=sft and
grpo_update,rollout for trainer=grpo, plus eval when the config has an eval section.
Exit status: 0 if everything fits, 1 if a program does not fit (its compiler message follows the
table), 2 for a bad topology, function or config key.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

from zwz_jax import aot
from zwz_jax.config import ConfigError, ConfigFlag
from zwz_jax.sharding import ShardingError

CONFIG = ConfigFlag("configs/tiny.py")
flags.DEFINE_string("topology", None, "a TPU slice, e.g. v5p:4x4x4, v5e:2x2, v6e:4x4, v4:2x2x1", required=True)
flags.DEFINE_string("functions", "", f"comma-separated of {aot.FUNCTIONS}, or 'all'")
flags.DEFINE_bool("json", False, "one JSON object per program instead of the table")
flags.DEFINE_enum("cost", "unrolled", aot.COSTS,
                  "FLOPs and cost-model time of a program that scans over layers: from a second compile with "
                  "every layer unrolled; extrapolated from two unrolled compiles with the fewest text layers "
                  "and one more (for deep models: exact FLOPs, a time on the high side); or none (memory "
                  "figures only)")
FLAGS = flags.FLAGS


def default_functions(config) -> tuple[str, ...]:
  out = ("grpo_update", "rollout") if config.trainer == "grpo" else ("sft",)
  return out + (("eval",) if "eval" in config else ())


def _shape(report) -> str:
  return " x ".join(f"{k}={v}" for k, v in report.shape.items())


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  aot.compile_only_env()  # before anything starts a JAX backend
  config = CONFIG.value
  try:
    functions = (aot.FUNCTIONS if FLAGS.functions == "all" else
                 tuple(f for f in FLAGS.functions.split(",") if f) or default_functions(config))
    reports = aot.compile_config(config, FLAGS.topology, functions, FLAGS.cost)
  except (ConfigError, ShardingError, aot.TopologyError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.json:
    for r in reports:
      print(json.dumps(r.to_dict()))
  else:
    kind = reports[0].device_kind if reports else ""
    print(f"{CONFIG.path} on {FLAGS.topology} ({kind}, {len(reports)} programs), per chip:")
    print(aot.format_table(reports))
  for r in reports:
    if r.cost_error:
      print(f"\n{r.function} ({_shape(r)}): no FLOPs or time, {r.cost_error}", file=sys.stderr)
  failed = [r for r in reports if not r.fits]
  for r in failed:
    print(f"\n{r.function} ({_shape(r)}) does not fit {FLAGS.topology}: "
          f"{r.error or f'{r.total / aot.GiB:.2f} GiB > {r.hbm / aot.GiB:.2f} GiB of HBM'}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
