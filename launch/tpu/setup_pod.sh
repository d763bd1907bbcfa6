#!/usr/bin/env bash
# Copy this repository to every host of a TPU pod slice and install it with the TPU jax build.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ARCHIVE=$(mktemp --suffix=.tar.gz)
tar -C "$REPO_DIR" --exclude=.venv --exclude=.git --exclude=out --exclude=.cache -czf "$ARCHIVE" .
gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU":~/zwz-jax.tar.gz --worker=all --zone="$ZONE" $PROJECT_FLAG
gcloud compute tpus tpu-vm ssh "$TPU" --worker=all --zone="$ZONE" $PROJECT_FLAG --command='
  set -e
  mkdir -p ~/zwz-jax && tar -C ~/zwz-jax -xzf ~/zwz-jax.tar.gz
  cd ~/zwz-jax && python3 -m venv .venv && .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e ".[tpu]"'
rm -f "$ARCHIVE"
