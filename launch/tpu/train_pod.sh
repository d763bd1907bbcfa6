#!/usr/bin/env bash
# Start (or resume) training on every host of a TPU pod slice.
#   launch/tpu/train_pod.sh CONFIG WORKDIR [--config.key=value ...]
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
CONFIG=${1:?config file, e.g. configs/student_7b.py}
WORKDIR=${2:?workdir, e.g. gs://bucket/runs/name}
shift 2
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ARGS=$(printf ' %q' "$@")
# Each host keeps the programs it compiles (JAX's persistent compilation cache, on its own disk): a
# re-run after a preemption loads its train steps instead of compiling them again (minutes each at 7B).
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="
  cd ~/zwz-jax && JAX_COMPILATION_CACHE_DIR=\$HOME/.cache/zwz-jax/jax \
    .venv/bin/python launch/train.py --multihost --config=$CONFIG --workdir=$WORKDIR$ARGS \
    2>&1 | tee -a ~/train.log"
