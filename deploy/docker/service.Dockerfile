# syntax=docker/dockerfile:1
# The online service: FastAPI + ONNX Runtime + FAISS + the Redis client.  No torch in this image:
# it installs the `serve` extra only, and the build fails if torch slipped in.
#
#   docker build -f deploy/docker/service.Dockerfile -t sku-recognition-service .
#   docker build -f deploy/docker/service.Dockerfile --build-arg VARIANT=gpu \
#       -t sku-recognition-service:gpu .
#
# Build context: the repository root.  Runs as uid 10001; reads the artifacts and the index from
# /data (a volume written by the jobs image) and Redis from REDIS_URL.  See deploy/README.md.

# The base of both stages: the official image by default; an air-gapped site substitutes its own
# (deploy/local-images.sh makes one from Debian packages: Debian's python3 with python-is-python3).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
# cpu: onnxruntime + faiss-cpu.  gpu: onnxruntime-gpu (with its pip CUDA/cuDNN libraries) and
# faiss-gpu-cu12 instead; the host needs the NVIDIA container toolkit.
ARG VARIANT=cpu
# The versions CI tested (constraints.txt, written by `make lock`); CONSTRAINTS="" resolves the
# newest ones instead, as `make setup CONSTRAINTS=` does.
ARG CONSTRAINTS=constraints.txt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only the inference core: the service never imports training/ or index_builder/.
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY service ./service
# The CPU builds are uninstalled before the GPU ones go in: both ship the same `onnxruntime`
# package folder, and removing one after the other would delete the other's files.
RUN set -eu; \
    case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1;; esac; \
    pip install --upgrade pip; \
    pip install ".[serve]" ${CONSTRAINTS:+--constraint "$CONSTRAINTS"}; \
    if [ "$VARIANT" = "gpu" ]; then \
        pip uninstall -y onnxruntime faiss-cpu; \
        pip install ".[gpu]" "onnxruntime-gpu[cuda,cudnn]"; \
    fi; \
    pip check; \
    python -c "import importlib.util as u, sys; sys.exit('torch must not be in the service image' if u.find_spec('torch') else 0)"; \
    python -c "import onnxruntime, faiss, redis, fastapi, uvicorn, service.api.app"

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="sku-recognition-service" \
      org.opencontainers.image.description="SKU recognition HTTP service (POST /recognize)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      sku-recognition.variant="${VARIANT}"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SKU_SERVICE_MODEL_DIR=/data/artifacts/sicot \
    SKU_SERVICE_INDEX_DIR=/data/index
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app \
 && mkdir -p /data && chown app:app /data
COPY --from=build /opt/venv /opt/venv
# gpu: make the CUDA/cuDNN libraries that pip installed (site-packages/nvidia/*/lib) visible to
# the dynamic loader, so ONNX Runtime's CUDA provider finds them without LD_LIBRARY_PATH.
RUN if [ "$VARIANT" = "gpu" ]; then \
        find /opt/venv -type d -path '*/site-packages/nvidia/*/lib' > /etc/ld.so.conf.d/pip-nvidia.conf \
        && ldconfig; \
    fi
USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
# Liveness only (the process answers); Kubernetes uses its own probes (/readyz for traffic).
# python, not curl: the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["sku-serve", "--host", "0.0.0.0", "--port", "8000"]
