#!/usr/bin/env bash
# garak (NVIDIA's LLM vulnerability scanner) in its OWN virtual environment, for `stackwise redteam`.
#
# garak pins openai 2.x and protobuf 7, which would break stackwise's own venv, so it never goes there:
# stackwise runs it as a subprocess from this venv. Where: $STACKWISE_GARAK_VENV, default
# ~/.cache/stackwise/garak. Idempotent: a venv that already has these versions returns at once.
#
#   scripts/install_garak.sh            # create or check
#   STACKWISE_GARAK_VENV=/opt/garak scripts/install_garak.sh
set -euo pipefail

GARAK_VERSION="0.17.1"
TORCH_VERSION="2.13.0"   # the CPU wheel, pinned first: an unpinned torch pulled in by garak is a multi-GB CUDA build
VENV="${STACKWISE_GARAK_VENV:-$HOME/.cache/stackwise/garak}"
PYTHON="${PYTHON:-python3}"

installed() {
  [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/garak" ] && "$VENV/bin/python" - "$GARAK_VERSION" "$TORCH_VERSION" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = version("garak") == sys.argv[1] and version("torch").split("+")[0] == sys.argv[2]
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

if installed; then
  echo "garak $GARAK_VERSION is installed in $VENV"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "torch==$TORCH_VERSION"
# Keep that torch while garak resolves its own dependencies.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" "garak==$GARAK_VERSION"
# Build garak's plugin cache now (offline), so the first red-team run does not.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m garak --list_probes >/dev/null
installed || { echo "garak $GARAK_VERSION did not install into $VENV" >&2; exit 1; }
echo "garak $GARAK_VERSION installed in $VENV"
