"""Generate distilled region-grounded records (the "first zooming") into ArrayRecord shards.

  python launch/gen_data.py --config=configs/datagen_tiny.py [--config.out_dir=DIR]
  # many workers (each writes its own shards; resumable), then one merge:
  python launch/gen_data.py --config=... --shard_index=3 --num_shards=16
  python launch/gen_data.py --config=... --merge --num_shards=16

Without --shard_index/--num_shards, torch.distributed's RANK/WORLD_SIZE are used when set.
A killed worker restarted with the same arguments continues where it stopped.
"""
from __future__ import annotations

import os

from absl import app, flags

from data_gen import detectors, pipeline, scenes, writer
from data_gen.teachers import registry
from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag("configs/datagen_tiny.py")
flags.DEFINE_integer("shard_index", int(os.environ.get("RANK", 0)), "this worker's index")
flags.DEFINE_integer("num_shards", int(os.environ.get("WORLD_SIZE", 1)), "workers in the job")
flags.DEFINE_bool("merge", False, "only write the global manifest")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not 0 <= FLAGS.shard_index < FLAGS.num_shards:
    raise app.UsageError(f"--shard_index={FLAGS.shard_index} must be in [0, --num_shards={FLAGS.num_shards})")
  cfg = CONFIG.value

  try:
    scenes.resolve_pool(cfg)
    teachers = {} if FLAGS.merge else registry.build_teachers(cfg)
    detector = None if FLAGS.merge else detectors.build(cfg)
  except ValueError as e:
    raise SystemExit(str(e)) from None

  if FLAGS.merge:
    manifest = writer.merge(cfg.out_dir, cfg.to_dict(), expected_workers=range(FLAGS.num_shards))
  else:
    try:
      pipeline.run_worker(cfg, teachers, shard_index=FLAGS.shard_index, num_shards=FLAGS.num_shards,
                          detector=detector)
    finally:
      for t in [*teachers.values(), *([detector] if detector else [])]:
        t.close()
    if FLAGS.num_shards > 1:
      print(f"worker {FLAGS.shard_index} done; merge with --merge --num_shards={FLAGS.num_shards}")
      return
    manifest = writer.merge(cfg.out_dir, cfg.to_dict(), expected_workers=[0])
  print(f"{manifest['num_records']} records in {len(manifest['shards'])} shards from "
        f"{manifest['num_images']} images -> {cfg.out_dir}")
  print("stages: " + ", ".join(f"{k}={v}" for k, v in manifest["stages"].items()))
  print("dimensions: " + ", ".join(f"{k}={v}" for k, v in manifest["dimensions"].items()))


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
