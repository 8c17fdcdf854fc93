#!/usr/bin/env bash
# The lent GPU's one run (DEVELOPERS.md, "When a GPU is lent"), prepared so a 15-minute window goes to the benchmark:
#
#   bash scripts/gpu_device.sh --prepare      # here, once: the wheels the device image lacks -> .whl/ (git-ignored)
#   device run:  command "bash scripts/gpu_device.sh"   carry [".whl"]   timeout_s 560
#
# On the device (no network): installs the carried wheels under /tmp/site, makes this checkout importable as
# `comfyui_flux2` whatever its folder is called, and runs `comfyui-flux2 benchmark gpu` with its report, its log and
# nvidia-smi's view written to $OUT (what comes back). Copy $OUT's benchmarks-gpu.md to docs/ here and commit it.
# Extra arguments go to the benchmark (`--sections parity`); `--tiny --device cpu` rehearses all of this on a CPU.
# The device image (KINDS.md, 2026-11): Python 3.12, torch 2.11, transformers, tokenizers, safetensors, httpx, pillow,
# numpy, tqdm; no diffusers (the peer of every row), which is the one wheel carried.
set -euo pipefail
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    grep -qsx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1
    ls -l .whl
    exit 0
fi

out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
site=/tmp/flux2-site
rm -rf "$site" && mkdir -p "$site"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
fi
ln -sfn "$PWD" "$site/comfyui_flux2"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
(nvidia-smi || echo "nvidia-smi: not here") > "$out/nvidia-smi.txt" 2>&1
"$PY" -c "import comfyui_flux2, diffusers, torch; print('comfyui_flux2 from', comfyui_flux2.__path__[0], \
'| diffusers', diffusers.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())" \
    | tee "$out/versions.txt"
set -o pipefail
"$PY" -m comfyui_flux2 benchmark gpu --out "$out/benchmarks-gpu.md" "$@" 2>&1 | tee "$out/benchmark-gpu.log"
