#!/usr/bin/env bash
# Provision (download + install, cached) the real ComfyUI 0.3.75 server used by the slow tests.
# Idempotent: a second run returns in well under a second.  Unattended (no prompts).
#   scripts/provision_comfyui.sh                 # into <repo>/.cache/comfyui (or $COMFYUI_FLUX2_CACHE_DIR)
#   scripts/provision_comfyui.sh --cache-dir D   # somewhere else
# Run it with the project's interpreter (the server's venv layers on top of its site-packages):
# $PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" tests/comfy_server.py provision "$@"
