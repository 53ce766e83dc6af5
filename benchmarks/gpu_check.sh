#!/usr/bin/env bash
# `make gpu-check`: the CUDA execution provider and CPU-vs-CUDA parity on the shipped model(s), on a machine with an
# NVIDIA GPU. Builds its own venv (.venv-gpu) with onnxruntime-gpu instead of onnxruntime - the two wheels provide
# the same `onnxruntime` module and must not share a venv - plus the service's other dependencies, then runs
# benchmarks/gpu_check.py. Usage: bash benchmarks/gpu_check.sh [MODEL_ROOT]   (default: exported/)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${GPU_VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi missing or failing); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi -L

test -d "$VENV" || "$PYTHON" -m venv "$VENV"
# The service's pinned dependencies with onnxruntime swapped for onnxruntime-gpu of the same version; its
# [cuda,cudnn] extras bring the CUDA and cuDNN libraries as wheels, so the host needs only the driver.
DEPS_SCRIPT='
import re
text = open("pyproject.toml").read()
for dep in re.findall(r"\"([^\"]+)\"", text.split("dependencies = [", 1)[1].split("]", 1)[0]):
    name, _, version = dep.partition("==")
    print(f"onnxruntime-gpu[cuda,cudnn]=={version}" if name == "onnxruntime" else dep)
print(re.search(r"\"(httpx==[^\"]+)\"", text).group(1))
'
mapfile -t DEPS < <("$VENV/bin/python" -c "$DEPS_SCRIPT")
"$VENV/bin/pip" install -q "${DEPS[@]}"
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -m benchmarks.gpu_check "$@"
