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
# JAX's persistent compilation cache in the workdir: a re-run after a preemption loads its programs
# instead of compiling them again (minutes each at 7B). Process 0 writes it and every host reads it,
# so it must be a path all hosts share: a mounted workdir. For a gs:// one, pass
# JAX_COMPILATION_CACHE_DIR=<a shared mount> in the environment of this script.
case "$WORKDIR" in
  *://*) CACHE=${JAX_COMPILATION_CACHE_DIR:-} ;;
  *) CACHE=${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/compilation_cache} ;;
esac
CACHE_ENV=${CACHE:+JAX_COMPILATION_CACHE_DIR=$(printf %q "$CACHE") }
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $PROJECT_FLAG --command="
  cd ~/zwz-jax && $CACHE_ENV.venv/bin/python launch/train.py --multihost --config=$CONFIG --workdir=$WORKDIR$ARGS \
    2>&1 | tee -a ~/train.log"
