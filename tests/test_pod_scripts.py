"""launch/tpu/*.sh with a stand-in for gcloud that records its calls: what reaches the pod's hosts."""
import json
import os
import subprocess
import sys
import tarfile

from tests.shared import LAUNCH

RECORDER = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
for a in args:  # scp: keep the archive, which the script deletes once copied
  if a.endswith(".tar.gz") and os.path.exists(a):
    shutil.copy(a, os.environ["ARCHIVE_COPY"])
with open(os.environ["GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
"""


def _run(tmp_path, script, *args):
  """Runs launch/tpu/`script` against the recorder; returns gcloud's calls (argument lists)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(RECORDER)
  gcloud.chmod(0o755)
  log = tmp_path / "gcloud.jsonl"
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU="pod", ZONE="zone", GCLOUD_LOG=str(log),
             ARCHIVE_COPY=str(tmp_path / "archive.tar.gz"))
  proc = subprocess.run(["bash", os.path.join(LAUNCH, "tpu", script), *args], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return [json.loads(line) for line in log.read_text().splitlines()]


def _remote_command(call):
  assert call[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in call
  return next(a for a in call if a.startswith("--command=")).removeprefix("--command=")


def test_train_pod_runs_train_py_on_every_host_with_a_compilation_cache(tmp_path):
  """The command each host runs, executed here in a stand-in home: train.py gets the config, the
  workdir and the overrides as typed (quoting kept), and a persistent compilation cache on the
  host's disk, so a re-run after a preemption loads the programs the first launch compiled."""
  overrides = ["--config.data.train=('/data/a b',)", "--config.train.steps=3"]
  calls = _run(tmp_path, "train_pod.sh", "configs/student_7b.py", "gs://bucket/run", *overrides)
  assert len(calls) == 1
  home = tmp_path / "home"
  python = home / "zwz-jax" / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'cache': os.environ.get('JAX_COMPILATION_CACHE_DIR'),"
                    f" 'cwd': os.getcwd()}}, open({str(tmp_path / 'ran.json')!r}, 'w'))\n")
  python.chmod(0o755)
  proc = subprocess.run(["bash", "-c", _remote_command(calls[0])], env=dict(os.environ, HOME=str(home)),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  ran = json.loads((tmp_path / "ran.json").read_text())
  assert ran["argv"] == ["launch/train.py", "--multihost", "--config=configs/student_7b.py",
                         "--workdir=gs://bucket/run", *overrides]
  assert ran["cwd"] == str(home / "zwz-jax")
  assert ran["cache"] == str(home / ".cache" / "zwz-jax" / "jax")
  assert (home / "train.log").exists()


def test_setup_pod_ships_the_repository_without_local_state(tmp_path):
  """The archive copied to the hosts holds the code, not this checkout's environment, outputs or
  compilation cache (the tests' cache holds CPU programs)."""
  calls = _run(tmp_path, "setup_pod.sh")
  assert [c[:4] for c in calls] == [["compute", "tpus", "tpu-vm", "scp"], ["compute", "tpus", "tpu-vm", "ssh"]]
  assert "pip install" in _remote_command(calls[1])
  with tarfile.open(tmp_path / "archive.tar.gz") as tar:
    top = {name.split("/")[1] for name in tar.getnames() if name.count("/")}
  assert {"launch", "zwz_jax", "configs", "setup.py"} <= top
  assert not top & {".venv", ".git", "out", ".cache"}
