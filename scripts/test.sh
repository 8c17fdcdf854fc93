#!/usr/bin/env bash
# The whole test suite, from a fresh clone: sets up .venv with the test extras, then runs pytest
# including the slow tests (real ComfyUI server, browser, full parity). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# torch==2.13.0 is pinned so pip does not pull a multi-GB CUDA build where a CPU one is enough.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 -e '.[test]'

# The browser test drives Debian's chromium (playwright's own browser download cannot work offline).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the browser test will report it" >&2
fi
# A real ComfyUI 0.3.75 for the server tests, cached in .cache/comfyui (about 1-2 min the first time).
PYTHON=.venv/bin/python bash scripts/provision_comfyui.sh

set +e
.venv/bin/python -m pytest --run-slow "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
exit "$code"
