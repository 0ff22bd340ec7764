#!/usr/bin/env bash
# The test command (README): the whole suite, offline, on 2 cores, torch capped at 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export STACKWISE_THREADS="${STACKWISE_THREADS:-2}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python -m pytest -q "$@"
