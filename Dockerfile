# syntax=docker/dockerfile:1.7
# tsumugi images. Two targets from one file so both share the code copy and the pins:
#   serve (default): the official vLLM 0.32.0 CUDA image + our FastAPI service as the entrypoint.
#   train:           CUDA torch + the training module (peft, bitsandbytes, llm-compressor) for QLoRA jobs.
# No weights are baked in: models and adapters come from a volume mounted at /models.
# Build and run commands for a GPU host: deploy/README.md.

ARG VLLM_IMAGE=vllm/vllm-openai
ARG VLLM_VERSION=v0.32.0
ARG TRAIN_BASE_IMAGE=python
ARG TRAIN_BASE_TAG=3.11.14-slim-bookworm

# ---- train: QLoRA / LoRA fine-tuning and AWQ quantisation (python -m training) --------------------------
FROM ${TRAIN_BASE_IMAGE}:${TRAIN_BASE_TAG} AS train
# requirements/train.txt pins the CPU wheel of torch for laptops and CI; on a GPU image the same torch
# version comes from the CUDA wheel index first, so the later `pip install -r` finds it already satisfied
# (torch==X matches X+cu128). Change the index to match the cluster's driver (cu126, cu128, ...).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/tsumugi \
    HF_HOME=/models/hf \
    XDG_CACHE_HOME=/var/cache/tsumugi \
    TRITON_CACHE_DIR=/var/cache/tsumugi/triton \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/tsumugi/inductor \
    MPLCONFIGDIR=/var/cache/tsumugi/matplotlib
WORKDIR /opt/tsumugi
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY requirements/train.txt requirements/train.txt
RUN pip install --no-cache-dir -r requirements/train.txt
COPY pyproject.toml ./
COPY tsumugi/ tsumugi/
COPY training/ training/
COPY data/ data/
RUN useradd --uid "${UID}" --user-group --create-home --home-dir /home/tsumugi --shell /usr/sbin/nologin tsumugi \
    && install -d -o tsumugi -g tsumugi /models /var/cache/tsumugi
USER ${UID}:${UID}
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---- serve: the default target ----------------------------------------------------------------------------
FROM ${VLLM_IMAGE}:${VLLM_VERSION} AS serve
ARG UID=10001
ARG PYDANTIC_SETTINGS_VERSION=2.16.3
# Every cache vLLM, torch.compile, Triton and Hugging Face write goes under /var/cache/tsumugi (an emptyDir
# in Kubernetes) so the root filesystem, and the model volume, can be read-only. Usage stats off: clusters are often air-gapped.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/tsumugi \
    HOME=/home/tsumugi \
    HF_HOME=/var/cache/tsumugi/hf \
    XDG_CACHE_HOME=/var/cache/tsumugi \
    XDG_CONFIG_HOME=/var/cache/tsumugi/config \
    VLLM_CACHE_ROOT=/var/cache/tsumugi/vllm \
    VLLM_CONFIG_ROOT=/var/cache/tsumugi/vllm-config \
    TRITON_CACHE_DIR=/var/cache/tsumugi/triton \
    TORCHINDUCTOR_CACHE_DIR=/var/cache/tsumugi/inductor \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    TSUMUGI_HOST=0.0.0.0 \
    TSUMUGI_PORT=8000 \
    TSUMUGI_MODEL=/models/model
WORKDIR /opt/tsumugi
# The base image already carries vllm, torch, fastapi, uvicorn, prometheus_client and openai at the versions
# vLLM 0.32.0 was released with; only what the service adds on top is installed here.
RUN python3 -m pip install --no-cache-dir "pydantic-settings==${PYDANTIC_SETTINGS_VERSION}"
# tsumugi/ (the default tool-calling prompt format, a model's weight hash, the process launcher): standard-library
# modules shared with training.
COPY pyproject.toml ./
COPY tsumugi/ tsumugi/
COPY service/ service/
RUN useradd --uid "${UID}" --user-group --create-home --home-dir /home/tsumugi --shell /usr/sbin/nologin tsumugi \
    && install -d -o tsumugi -g tsumugi /models /var/cache/tsumugi
USER ${UID}:${UID}
EXPOSE 8000
# Liveness only: /health answers while the engine loads; readiness (/ready) is for the load balancer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TSUMUGI_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python3", "-m", "service"]
CMD []
