#!/usr/bin/env bash
# Mutation testing of the modules that carry stackwise's promises (cosmic-ray), outside CI.
#   bash scripts/mutation.sh                 # every target (long: an hour or more on 2 cores)
#   bash scripts/mutation.sh filters gate    # some targets; report in build/mutation/report.md
# cosmic-ray lives in its own venv (build/mutation/venv); the tests run with the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "mutation: run 'STACKWISE_EXTRAS=test bash scripts/install.sh' first" >&2; exit 2; }
tools=build/mutation/venv
if [ ! -x "$tools/bin/cosmic-ray" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet "cosmic-ray==8.7.0"
fi
exec "$tools/bin/python" scripts/mutation.py "$@"
