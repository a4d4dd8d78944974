# syntax=docker/dockerfile:1
# The offline jobs: SICoT training (sku-train), the localizer (sku-train-localizer), the demo
# catalog (sku-demo-catalog), the index builder (sku-index) and the whole demo (sku-demo).
#
#   docker build -f deploy/docker/jobs.Dockerfile -t sku-recognition-jobs .
#   docker build -f deploy/docker/jobs.Dockerfile --build-arg VARIANT=gpu \
#       -t sku-recognition-jobs:gpu .
#
# CPU by default: torch comes from the PyTorch CPU index (TORCH_INDEX_URL), because the default
# PyPI torch wheel pulls several GB of CUDA libraries.  TORCH_INDEX_URL="" takes torch from pip's
# configured indexes instead (an air-gapped site's mirror or a find-links folder holding the CPU
# wheel, given to the build as in deploy/README.md).  VARIANT=gpu takes that CUDA wheel from
# PyPI instead, plus onnxruntime-gpu and faiss-gpu-cu12.  Build context: the repository root.
# Runs as uid 10001 (the service image's uid, so it can read what this image writes to /data).

# The base of both stages: the official image by default; an air-gapped site substitutes its own
# (deploy/local-images.sh makes one from Debian packages: Debian's python3 with python-is-python3).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The versions CI tested (constraints.txt, written by `make lock`); CONSTRAINTS="" resolves the
# newest ones instead, as `make setup CONSTRAINTS=` does.  torch itself is pinned by the extra.
ARG CONSTRAINTS=constraints.txt
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY service ./service
COPY training ./training
COPY index_builder ./index_builder
COPY demo ./demo
# torch first, pinned to the `train` extra's requirement (read from pyproject.toml, so the two
# never drift); the CPU index's "2.13.0+cpu" satisfies "==2.13.0", so the second install keeps it.
# The constraints apply from the second install on (the CPU index need not carry every pinned
# version of torch's own dependencies); that install moves those to the pinned versions.
RUN set -eu; \
    case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1;; esac; \
    pip install --upgrade pip; \
    torch_req="$(python -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["train"]; print(next(d for d in deps if re.split(r"[<>=!~ ;\[]", d)[0] == "torch"))')"; \
    if [ "$VARIANT" = "gpu" ] || [ -z "$TORCH_INDEX_URL" ]; then \
        pip install "$torch_req"; \
    else \
        pip install "$torch_req" --index-url "$TORCH_INDEX_URL"; \
    fi; \
    pip install ".[serve,train]" ${CONSTRAINTS:+--constraint "$CONSTRAINTS"}; \
    if [ "$VARIANT" = "gpu" ]; then \
        pip uninstall -y onnxruntime faiss-cpu; \
        pip install ".[gpu]" "onnxruntime-gpu[cuda,cudnn]"; \
    fi; \
    pip check; \
    python -c "import torch, onnxruntime, faiss, redis, gensim, kornia, training, index_builder, demo; print('torch', torch.__version__)"

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="sku-recognition-jobs" \
      org.opencontainers.image.description="SKU recognition offline jobs: training, index builder, demo" \
      org.opencontainers.image.licenses="Apache-2.0" \
      sku-recognition.variant="${VARIANT}"
# tini as PID 1: a Python process that is PID 1 ignores SIGTERM (no default handler), so
# `docker stop` and a CronJob deadline would otherwise wait for SIGKILL.  redis-cli: the index
# builder writes the SKU hashes through `redis-cli --pipe` (mass insertion) when it exists.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini redis-tools \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    SKU_INDEX_ARTIFACT_DIR=/data/artifacts/sicot \
    SKU_INDEX_INDEX_DIR=/data/index
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
# /data is owned by the app user in the image, so a fresh named volume mounted there is too.
WORKDIR /data
ENTRYPOINT ["tini", "--"]
CMD ["sku-demo", "--help"]
