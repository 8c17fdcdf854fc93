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

if [ -f scripts/test_setup_extra.sh ]; then
    bash scripts/test_setup_extra.sh
fi

set +e
.venv/bin/python -m pytest --run-slow "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
exit "$code"
