#!/usr/bin/env bash
# Run here (with registry access) before the GPU check: fills .gpu/ (ignored by git) with what the lent
# GPU machine lacks for ComfyUI 0.33 and this pack. That machine has Python 3.12, torch 2.11 (CUDA 13),
# aiohttp, safetensors, numpy, transformers, jinja2 … and no registry, and a call carries 64 MiB at most.
#   .gpu/ComfyUI-0.33.0.tar.gz   the ComfyUI source (from ../shared/comfyui)
#   .gpu/whl/*.whl               the wheels ComfyUI 0.33 still needs there, for CPython 3.12 on x86-64
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.gpu
rm -rf "$dest" && mkdir -p "$dest/whl"
cp ../shared/comfyui/ComfyUI-0.33.0.tar.gz "$dest/"
download() {
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform any -d "$dest/whl" "$@"
}
# ComfyUI 0.33's requirements that image lacks (pinned where ComfyUI pins), without their own dependencies
# (torch, numpy and scipy are there already); pydantic with its exact pydantic-core.
download --no-deps comfy-aimdo==0.4.13 comfy-kitchen==0.2.31 torchsde trampoline simpleeval blake3 \
  alembic mako sqlalchemy greenlet "av>=16"
download pydantic
rm -f "$dest"/whl/typing_extensions-*.whl  # the image's own is used
# comfy-kitchen ships 230 MB of compiled CUDA and ROCm kernels: too large to carry. Without them it runs on
# its eager and Triton back ends (it loads the kernels only if present); its kernels serve quantized (fp8,
# nvfp4, int8) weights, which this check does not use.
kitchen=$(ls "$dest"/whl/comfy_kitchen-*.whl)
python3 - "$kitchen" <<'PY'
import sys, zipfile, os
src = sys.argv[1]; tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.endswith("_C.abi3.so"):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(line for line in data.split(b"\n") if b"_C.abi3.so" not in line)
        zout.writestr(item, data)
os.replace(tmp, src)
PY
du -sh "$dest" && ls "$dest/whl"
