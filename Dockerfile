# Sentiment service image: the serving install (onnxruntime, no torch, no compilers) and the exported/ artifacts.
#
#   podman build --network host --format docker -t imdb-sentiment .                 # CPU (default target)
#   podman build --network host --format docker --target gpu -t imdb-sentiment:gpu .  # onnxruntime-gpu on CUDA
#   docker build -t imdb-sentiment .                                                 # the same with Docker
#   podman run --rm --read-only --tmpfs /tmp -p 8000:8000 imdb-sentiment
#
# `--format docker` matters for podman only: its default OCI format has no HEALTHCHECK field and drops it.
# Build args: EXTRAS=parquet adds pyarrow for Parquet batch files (+~170 MB); MODEL_DIR picks the artifacts folder
# inside the build context (default exported/, every artifact in it is served).

ARG PYTHON_IMAGE=python:3.11-slim
# onnxruntime-gpu 1.31 wheels on PyPI are built against CUDA 13 and cuDNN 9.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# ---- build: wheels for the project and every dependency, installed into a venv the runtime stage copies ----------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change rebuilds only the small layers below.
# Same base image in both stages, so the venv's interpreter symlink resolves in the runtime stage too.
# Left out of the venv (~30 MB): test suites and onnxruntime's offline tooling (quantization, transformers, tools).
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in os.environ['EXTRAS'].split(',') if e for d in p['optional-dependencies'][e]]))" \
    > requirements.txt \
 && python -m pip wheel --quiet --wheel-dir /wheels -r requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet --no-index --find-links /wheels -r requirements.txt \
 && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
 && find /opt/venv/lib -depth -type d -path '*/site-packages/*' -name tests -exec rm -rf {} + \
 && cd /opt/venv/lib/python3*/site-packages/onnxruntime && rm -rf transformers quantization tools \
 && rm -f /opt/venv/bin/onnxruntime_test
# Only the service package: the training package (torch) stays out of the image, and so do sentiment-train and
# sentiment-export, which point at it; pip and setuptools go once the last install is done.
COPY README.md ./
COPY service/ service/
RUN python -m pip wheel --quiet --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --quiet --no-index --no-deps /wheels/imdb_sentiment-*.whl \
 && /opt/venv/bin/pip uninstall --quiet -y pip setuptools \
 && rm -f /opt/venv/bin/sentiment-train /opt/venv/bin/sentiment-export

# ---- gpu: onnxruntime-gpu on a CUDA + cuDNN runtime base (its Python differs, so the venv is built here) ---------
FROM ${CUDA_IMAGE} AS gpu
ARG ORT_GPU_VERSION=1.31.1
ARG MODEL_DIR=exported
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The CUDA images already carry ca-certificates; Python comes from the distribution (3.12 on Ubuntu 24.04).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The build stage's dependency list with onnxruntime swapped for onnxruntime-gpu (both ship the `onnxruntime`
# module, so they must not be installed together), then the project wheel (pure Python) without its dependencies.
COPY --from=build /src/requirements.txt /wheels/imdb_sentiment-*.whl /wheels/
RUN sed "s/^onnxruntime==.*/onnxruntime-gpu==${ORT_GPU_VERSION}/" /wheels/requirements.txt > /wheels/requirements-gpu.txt \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet -r /wheels/requirements-gpu.txt \
 && /opt/venv/bin/pip install --quiet --no-deps /wheels/imdb_sentiment-*.whl \
 && /opt/venv/bin/pip uninstall --quiet -y pip setuptools \
 && rm -rf /wheels /opt/venv/bin/sentiment-train /opt/venv/bin/sentiment-export
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app
COPY ${MODEL_DIR}/ /app/exported/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SENTIMENT_MODEL_ROOT=/app/exported \
    SENTIMENT_PROVIDERS=cuda,cpu
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8000/readyz'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["sentiment-serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- runtime (default): CPU image ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG MODEL_DIR=exported
RUN groupadd --gid 10001 app \
 && useradd --uid 10001 --gid app --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# Owned by root and not writable by the service user; the service writes nothing (read-only root fs, tmpfs /tmp).
COPY ${MODEL_DIR}/ /app/exported/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SENTIMENT_MODEL_ROOT=/app/exported
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Readiness runs a real inference. Python's stdlib, not curl: the image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8000/readyz'), timeout=4)"]
# Exec form: sentiment-serve is PID 1 and gets SIGTERM directly; every worker stops accepting, finishes in-flight
# requests and exits, then it exits 0. Workers: one per CPU the container may use (its cgroup quota, e.g.
# `docker run --cpus 2`), or SENTIMENT_WORKERS; /tmp (a tmpfs when the root is read-only) holds their metrics files.
STOPSIGNAL SIGTERM
CMD ["sentiment-serve", "--host", "0.0.0.0", "--port", "8000"]
