"""Generate distilled region-grounded records (the "first zooming") into ArrayRecord shards.

  python launch/gen_data.py --config=configs/datagen_tiny.py [--config.out_dir=DIR]
  # many workers (each writes its own shards; resumable), then one merge:
  python launch/gen_data.py --config=... --shard_index=3 --num_shards=16
  python launch/gen_data.py --config=... --merge --num_shards=16

Without --shard_index/--num_shards, torch.distributed's RANK/WORLD_SIZE are used when set.
A killed worker restarted with the same arguments continues where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_gen import pipeline, scenes, writer  # noqa: E402
from data_gen.teachers import registry  # noqa: E402
from zwz_jax.config import load_config, parse_argv  # noqa: E402


def main(argv):
  config_path, overrides, rest = parse_argv(argv, default_config="configs/datagen_tiny.py")
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shard_index", type=int, default=int(os.environ.get("RANK", 0)))
  parser.add_argument("--num_shards", type=int, default=int(os.environ.get("WORLD_SIZE", 1)))
  parser.add_argument("--merge", action="store_true", help="only write the global manifest")
  args = parser.parse_args(rest)
  if not 0 <= args.shard_index < args.num_shards:
    parser.error(f"--shard_index {args.shard_index} must be in [0, --num_shards={args.num_shards})")
  cfg = load_config(config_path, overrides)

  try:
    scenes.resolve_pool(cfg)
    teachers = {} if args.merge else registry.build_teachers(cfg)
  except ValueError as e:
    raise SystemExit(str(e)) from None

  if args.merge:
    manifest = writer.merge(cfg.out_dir, cfg.to_dict(), expected_workers=range(args.num_shards))
  else:
    try:
      pipeline.run_worker(cfg, teachers, shard_index=args.shard_index, num_shards=args.num_shards)
    finally:
      for t in teachers.values():
        t.close()
    if args.num_shards > 1:
      print(f"worker {args.shard_index} done; merge with --merge --num_shards={args.num_shards}")
      return
    manifest = writer.merge(cfg.out_dir, cfg.to_dict(), expected_workers=[0])
  print(f"{manifest['num_records']} records in {len(manifest['shards'])} shards from "
        f"{manifest['num_images']} images -> {cfg.out_dir}")
  print("stages: " + ", ".join(f"{k}={v}" for k, v in manifest["stages"].items()))
  print("dimensions: " + ", ".join(f"{k}={v}" for k, v in manifest["dimensions"].items()))


if __name__ == "__main__":
  main(sys.argv[1:])
