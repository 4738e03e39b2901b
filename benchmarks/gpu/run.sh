#!/usr/bin/env bash
# Run on the lent GPU machine, from the repository root, after benchmarks/gpu/prepare.sh here:
#   bash benchmarks/gpu/run.sh [check.py options]      (the results land in $OUT, else out/gpu)
set -euo pipefail
cd "$(dirname "$0")/../.."
site=/tmp/lora-bridge-gpu-site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/whl/*.whl
mkdir -p /tmp/lora-bridge-gpu-pkgs && ln -sfn "$PWD" /tmp/lora-bridge-gpu-pkgs/comfyui_lora_bridge
tar -xzf .gpu/ComfyUI-0.33.0.tar.gz -C /tmp
export PYTHONPATH="$site:/tmp/lora-bridge-gpu-pkgs" COMFYUI_DIR=/tmp/ComfyUI-0.33.0 PYTHONUNBUFFERED=1
# one work folder per machine: a second call on the same machine reuses the models the first one drew
exec python3 benchmarks/gpu/check.py --out "${OUT:-out/gpu}" --work /tmp/lora-bridge-gpu-work "$@"
