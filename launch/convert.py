"""Convert between Hugging Face Qwen2.5-VL / Qwen3-VL safetensors and our orbax parameter checkpoints.

  # HF -> orbax, streamed straight into the config's mesh:
  python launch/convert.py --config=configs/student_7b.py --hf_dir=/models/Qwen2.5-VL-7B-Instruct \
      --out=/ckpts/qwen2_5_vl_7b
  # orbax -> HF (safetensors shards + config.json that `transformers` loads):
  python launch/convert.py --config=configs/student_7b.py --orbax=/ckpts/run/params --to_hf=/exports/zwz-7b

The model section of --config must describe the checkpoint; a mismatch is reported field by field.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zwz_jax.config import load_config, parse_argv  # noqa: E402
from zwz_jax.models import convert, registry  # noqa: E402
from zwz_jax.params import ParamSpace, flatten, load_params, save_params  # noqa: E402
from zwz_jax.sharding import make_mesh  # noqa: E402


def main(argv):
  config_path, overrides, rest = parse_argv(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hf_dir", help="HF checkpoint folder (safetensors) to import")
  parser.add_argument("--out", help="orbax parameter checkpoint to write (with --hf_dir)")
  parser.add_argument("--orbax", help="orbax parameter checkpoint to export")
  parser.add_argument("--to_hf", help="HF folder to write (with --orbax)")
  parser.add_argument("--dtype", default=None, help="dtype of exported tensors (default: param dtype)")
  args = parser.parse_args(rest)
  config = load_config(config_path, overrides)
  model_cfg = registry.model_config(config.model)
  mesh = make_mesh(config.mesh)
  if args.hf_dir and args.out:
    try:
      convert.check_config_matches(model_cfg, args.hf_dir)
    except ValueError as e:
      raise SystemExit(str(e)) from None
    model = convert.load_hf_state(model_cfg, args.hf_dir, mesh)
    save_params(args.out, flatten(model))
    print(f"wrote {args.out} from {args.hf_dir} on mesh {dict(mesh.shape)}")
  elif args.orbax and args.to_hf:
    space = ParamSpace(model_cfg, mesh)
    model = space.model(load_params(args.orbax, space)[0])
    convert.save_hf(model, args.to_hf, dtype=args.dtype)
    print(f"wrote {args.to_hf} from {args.orbax}")
  else:
    parser.error("give --hf_dir with --out, or --orbax with --to_hf")


if __name__ == "__main__":
  main(sys.argv[1:])
