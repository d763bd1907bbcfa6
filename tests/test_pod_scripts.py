"""launch/tpu/*.sh with a stand-in for gcloud that records its calls: what reaches the pod's hosts."""
import json
import os
import subprocess
import sys
import tarfile

import pytest

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


def _run(tmp_path, script, *args, **env_vars):
  """Runs launch/tpu/`script` against the recorder; returns gcloud's calls (argument lists)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(RECORDER)
  gcloud.chmod(0o755)
  log = tmp_path / "gcloud.jsonl"
  env = dict(_clean_env(), PATH=f"{bin_dir}:{os.environ['PATH']}", TPU="pod", ZONE="zone", GCLOUD_LOG=str(log),
             ARCHIVE_COPY=str(tmp_path / "archive.tar.gz"), **env_vars)
  proc = subprocess.run(["bash", os.path.join(LAUNCH, "tpu", script), *args], env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  return [json.loads(line) for line in log.read_text().splitlines()]


def _clean_env():
  """This environment without the suite's own compilation cache setting."""
  return {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}


def _remote_command(call):
  assert call[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in call
  return next(a for a in call if a.startswith("--command=")).removeprefix("--command=")


@pytest.mark.parametrize("workdir,env,cache", [
    ("/shared/runs/zwz", {}, "/shared/runs/zwz/compilation_cache"),  # a mount every host sees
    ("gs://bucket/run", {}, None),  # JAX reads and writes its cache through a file system
    ("gs://bucket/run", {"JAX_COMPILATION_CACHE_DIR": "/mnt/jax cache"}, "/mnt/jax cache"),
])
def test_train_pod_runs_train_py_on_every_host_with_a_shared_compilation_cache(tmp_path, workdir, env, cache):
  """The command each host runs, executed here in a stand-in home: train.py gets the config, the
  workdir and the overrides as typed (quoting kept). JAX's persistent compilation cache goes where
  every host sees it (process 0 writes it, all read it), so a re-run after a preemption loads the
  programs the first launch compiled: the workdir when it is a mount, else what the caller names."""
  overrides = ["--config.data.train=('/data/a b',)", "--config.train.steps=3"]
  calls = _run(tmp_path, "train_pod.sh", "configs/student_7b.py", workdir, *overrides, **env)
  assert len(calls) == 1
  home = tmp_path / "home"
  python = home / "zwz-jax" / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    f"json.dump({{'argv': sys.argv[1:], 'cache': os.environ.get('JAX_COMPILATION_CACHE_DIR'),"
                    f" 'cwd': os.getcwd()}}, open({str(tmp_path / 'ran.json')!r}, 'w'))\n")
  python.chmod(0o755)
  proc = subprocess.run(["bash", "-c", _remote_command(calls[0])], env=dict(_clean_env(), HOME=str(home)),
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  ran = json.loads((tmp_path / "ran.json").read_text())
  assert ran["argv"] == ["launch/train.py", "--multihost", "--config=configs/student_7b.py",
                         f"--workdir={workdir}", *overrides]
  assert ran["cwd"] == str(home / "zwz-jax")
  assert ran["cache"] == cache
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
