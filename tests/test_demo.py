"""`make demo`'s script runs end to end, here on an (fsdp=4, tensor=2) mesh of 8 CPU devices."""
import subprocess
import sys


def test_demo_runs_on_a_sharded_mesh():
  out = subprocess.run([sys.executable, "launch/demo.py", "--config=configs/tiny.py", "--config.mesh.fsdp=4",
                        "--config.mesh.tensor=2"], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 2}" in out.stdout
  assert "logits (1, 128, 512)" in out.stdout


def test_demo_rejects_unknown_config_key():
  out = subprocess.run([sys.executable, "launch/demo.py", "--config=configs/tiny.py", "--config.model.text.hiden=3"],
                       capture_output=True, text=True, check=False)
  assert out.returncode != 0
  assert "unknown config key 'model.text.hiden'" in out.stderr
