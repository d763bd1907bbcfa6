"""Convert between Hugging Face Qwen2.5-VL / Qwen3-VL safetensors and our orbax parameter checkpoints.

  # HF -> orbax, streamed straight into the config's mesh:
  python launch/convert.py --config=configs/student_7b.py --hf_dir=/models/Qwen2.5-VL-7B-Instruct \
      --out=/ckpts/qwen2_5_vl_7b
  # orbax -> HF (safetensors shards + config.json that `transformers` loads):
  python launch/convert.py --config=configs/student_7b.py --orbax=/ckpts/run/params --to_hf=/exports/zwz-7b

The model section of --config must describe the checkpoint; a mismatch is reported field by field.
"""
from __future__ import annotations

from absl import app, flags

from zwz_jax.config import ConfigFlag

CONFIG = ConfigFlag(None)
flags.DEFINE_string("hf_dir", None, "HF checkpoint folder (safetensors) to import")
flags.DEFINE_string("out", None, "orbax parameter checkpoint to write (with --hf_dir)")
flags.DEFINE_string("orbax", None, "orbax parameter checkpoint to export")
flags.DEFINE_string("to_hf", None, "HF folder to write (with --orbax)")
flags.DEFINE_string("dtype", None, "dtype of exported tensors (default: param dtype)")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  from zwz_jax.models import convert, registry
  from zwz_jax.params import ParamSpace, flatten, load_params, save_params
  from zwz_jax.sharding import make_mesh
  model_cfg = registry.model_config(CONFIG.value.model)
  mesh = make_mesh(CONFIG.value.mesh)
  if FLAGS.hf_dir and FLAGS.out:
    try:
      convert.check_config_matches(model_cfg, FLAGS.hf_dir)
    except ValueError as e:
      raise SystemExit(str(e)) from None
    model = convert.load_hf_state(model_cfg, FLAGS.hf_dir, mesh)
    save_params(FLAGS.out, flatten(model))
    print(f"wrote {FLAGS.out} from {FLAGS.hf_dir} on mesh {dict(mesh.shape)}")
  elif FLAGS.orbax and FLAGS.to_hf:
    space = ParamSpace(model_cfg, mesh)
    convert.save_hf(space.model(load_params(FLAGS.orbax, space)[0]), FLAGS.to_hf, dtype=FLAGS.dtype)
    print(f"wrote {FLAGS.to_hf} from {FLAGS.orbax}")
  else:
    raise app.UsageError("give --hf_dir with --out, or --orbax with --to_hf")


if __name__ == "__main__":
  app.run(main, flags_parser=CONFIG.parse_or_exit)
