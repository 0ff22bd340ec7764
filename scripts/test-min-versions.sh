#!/usr/bin/env bash
# The adapters' contract suites on the lowest client versions pyproject.toml admits
# (constraints-min.txt), in a venv of their own: build/venv-min (build/ is git-ignored), kept
# between runs; STACKWISE_MIN_FRESH=1 rebuilds it. The project's own .venv is left alone.
#
#   bash scripts/test-min-versions.sh            # vector stores: Pinecone, Weaviate, Milvus
#   STACKWISE_MIN_CLOUDS=1 bash scripts/test-min-versions.sh   # and SageMaker, Vertex, Azure ML
#
# torch is installed first, pinned (the CPU wheel): an unpinned torch, pulled in by
# sentence-transformers, is a multi-GB CUDA build; the script fails if any nvidia package came in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STACKWISE_MIN_VENV:-build/venv-min}"
EXTRAS="local,dev,pinecone,weaviate,milvus"
SUITES=(tests/contract/test_pinecone_store.py tests/contract/test_pinecone_filters.py
        tests/contract/test_pinecone_cli.py tests/contract/test_pinecone_query_limits.py
        tests/contract/test_weaviate_store.py
        tests/contract/test_milvus_store.py tests/contract/test_milvus_filters.py
        tests/contract/test_embedded_graph.py)
if [ "${STACKWISE_MIN_CLOUDS:-0}" = 1 ]; then
  EXTRAS="${EXTRAS},aws,gcp,azure,runtime"
  SUITES+=(tests/contract/test_compute_sagemaker.py tests/contract/test_deploy_sagemaker.py
           tests/contract/test_compute_vertex.py tests/contract/test_deploy_vertex.py
           tests/contract/test_compute_azureml.py tests/contract/test_deploy_azureml.py
           tests/contract/test_request_schemas.py)
fi
[ "${STACKWISE_MIN_FRESH:-0}" = 1 ] && rm -rf "$VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet -c constraints-min.txt 'torch==2.13.0'
"$PY" -m pip install --quiet -c constraints-min.txt -e ".[${EXTRAS}]"
if "$PY" -m pip list 2>/dev/null | grep -qi '^nvidia'; then
  echo "error: CUDA packages were installed: something asked for an unpinned torch" >&2
  exit 1
fi
# Each pinned client must be what the venv really holds (a resolver may not go below a floor).
"$PY" - <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
bad = []
for line in open("constraints-min.txt"):
    m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
    if not m:
        continue
    try:
        have = version(m.group(1))
    except PackageNotFoundError:
        continue  # an extra this run does not install
    if have.split("+")[0] != m.group(2):
        bad.append(f"{m.group(1)} {have} (wanted {m.group(2)})")
    else:
        print(f"  {m.group(1)}=={have}")
sys.exit(f"not at the floor: {', '.join(bad)}" if bad else 0)
PY
export STACKWISE_THREADS="${STACKWISE_THREADS:-2}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m pytest -q -p no:cacheprovider "${SUITES[@]}" "$@"
