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
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="
  cd ~/zwz-jax && .venv/bin/python launch/train.py --multihost --config=$CONFIG --workdir=$WORKDIR$ARGS \
    2>&1 | tee -a ~/train.log"
