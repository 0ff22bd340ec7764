#!/usr/bin/env bash
# The test command (README): the whole suite, offline, on 2 cores, torch capped at 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && . .venv/bin/activate
export STACKWISE_THREADS="${STACKWISE_THREADS:-2}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$#" -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
# The container tests run in a process of their own: the async clients they drive in-process (adlfs,
# gcsfs, the Azure and Google SDKs) can leave this thread's event loop in a state that Pulumi's engine,
# which the infra tests run under mocks in the same thread, then trips over ("pop from an empty deque").
python -m pytest -q --ignore=tests/containers
exec python -m pytest -q tests/containers
