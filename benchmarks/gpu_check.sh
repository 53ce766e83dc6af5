#!/usr/bin/env bash
# `make gpu-check`: the CUDA execution provider and CPU-vs-CUDA parity on the shipped model(s), on a machine with an
# NVIDIA GPU. Builds its own venv (.venv-gpu) with onnxruntime-gpu instead of onnxruntime - the two wheels provide
# the same `onnxruntime` module and must not share a venv - plus the service's other dependencies, then runs
# benchmarks/gpu_check.py. Usage: bash benchmarks/gpu_check.sh [MODEL_ROOT]   (default: exported/)
#
# Offline, on a GPU host with no package index whose Python already has CUDA 13 / cuDNN 9 as nvidia-* wheels (as
# PyTorch images do): GPU_WHEELS=DIR GPU_SITE=DIR2 installs DIR's wheels (onnxruntime-gpu and whatever else that
# Python lacks) with --no-deps into DIR2, which goes first on PYTHONPATH instead of a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${GPU_VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi missing or failing); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi -L

# onnxruntime-gpu is published a step behind onnxruntime (no 1.32.0 on PyPI); 1.31.1 is the newest, built for CUDA 13
# and cuDNN 9, as in the Dockerfile's gpu target. Its model format and API are the ones the service uses.
ORT_GPU_VERSION="${ORT_GPU_VERSION:-1.31.1}"

if [ -n "${GPU_SITE:-}" ]; then
    : "${GPU_WHEELS:?GPU_SITE needs GPU_WHEELS, a folder of wheels}"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$GPU_SITE" "$GPU_WHEELS"/*.whl
    # onnxruntime.preload_dlls() looks for nvidia/cu13/lib and nvidia/cudnn/lib beside the onnxruntime package, so
    # the interpreter's own nvidia/ folder is linked in there.
    NVIDIA=$("$PYTHON" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
    if [ -n "$NVIDIA" ] && [ ! -e "$GPU_SITE/nvidia" ]; then ln -s "$NVIDIA" "$GPU_SITE/nvidia"; fi
    PYTHONPATH="$GPU_SITE${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m benchmarks.gpu_check "$@"
fi

test -d "$VENV" || "$PYTHON" -m venv "$VENV"
# The service's pinned dependencies with onnxruntime swapped for onnxruntime-gpu (ORT_GPU_VERSION); its
# [cuda,cudnn] extras bring the CUDA and cuDNN libraries as wheels, so the host needs only the driver.
DEPS_SCRIPT='
import os, re
gpu = os.environ["ORT_GPU_VERSION"]
text = open("pyproject.toml").read()
for dep in re.findall(r"\"([^\"]+)\"", text.split("dependencies = [", 1)[1].split("]", 1)[0]):
    name, _, version = dep.partition("==")
    print(f"onnxruntime-gpu[cuda,cudnn]=={gpu}" if name == "onnxruntime" else dep)
print(re.search(r"\"(httpx==[^\"]+)\"", text).group(1))
'
mapfile -t DEPS < <(ORT_GPU_VERSION="$ORT_GPU_VERSION" "$VENV/bin/python" -c "$DEPS_SCRIPT")
"$VENV/bin/pip" install -q "${DEPS[@]}"
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/python" -m benchmarks.gpu_check "$@"
