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

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zwz_jax import aot  # noqa: E402

aot.compile_only_env()  # before anything starts a JAX backend

from zwz_jax.config import ConfigError, load_config, parse_argv  # noqa: E402
from zwz_jax.sharding import ShardingError  # noqa: E402


def default_functions(config) -> tuple[str, ...]:
  out = ("grpo_update", "rollout") if config.trainer == "grpo" else ("sft",)
  return out + (("eval",) if "eval" in config else ())


def _shape(report) -> str:
  return " x ".join(f"{k}={v}" for k, v in report.shape.items())


def main(argv) -> int:
  config_path, overrides, rest = parse_argv(argv, default_config="configs/tiny.py")
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", required=True, help="a TPU slice, e.g. v5p:4x4x4, v5e:2x2, v6e:4x4, v4:2x2x1")
  parser.add_argument("--functions", default="", help=f"comma-separated of {aot.FUNCTIONS}, or 'all'")
  parser.add_argument("--json", action="store_true", help="one JSON object per program instead of the table")
  parser.add_argument("--cost", default="unrolled", choices=aot.COSTS,
                      help="FLOPs and cost-model time of a program that scans over layers: from a second "
                           "compile with every layer unrolled; extrapolated from two unrolled compiles with "
                           "the fewest text layers and one more (for deep models: exact FLOPs, a time on the "
                           "high side); or none (memory figures only)")
  args = parser.parse_args(rest)
  try:
    config = load_config(config_path, overrides)
    functions = (aot.FUNCTIONS if args.functions == "all" else
                 tuple(f for f in args.functions.split(",") if f) or default_functions(config))
    reports = aot.compile_config(config, args.topology, functions, args.cost)
  except (ConfigError, ShardingError, aot.TopologyError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    for r in reports:
      print(json.dumps(r.to_dict()))
  else:
    kind = reports[0].device_kind if reports else ""
    print(f"{config_path} on {args.topology} ({kind}, {len(reports)} programs), per chip:")
    print(aot.format_table(reports))
  for r in reports:
    if r.cost_error:
      print(f"\n{r.function} ({_shape(r)}): no FLOPs or time, {r.cost_error}", file=sys.stderr)
  failed = [r for r in reports if not r.fits]
  for r in failed:
    print(f"\n{r.function} ({_shape(r)}) does not fit {args.topology}: "
          f"{r.error or f'{r.total / aot.GiB:.2f} GiB > {r.hbm / aot.GiB:.2f} GiB of HBM'}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
