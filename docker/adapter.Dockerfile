# The chat adapters: `xwinbot slack` and `xwinbot discord` (one image for both; compose picks the command).
#
#   docker compose --profile slack build      (or: docker build -f docker/adapter.Dockerfile -t xwinbot-adapter .)
#
# The adapters only put questions on the queue and talk to Slack/Discord: no torch, transformers or model here.
# `pip install .` would pull torch through pyproject.toml's dependencies, so xwinbot goes in with --no-deps and
# the adapters' runtime dependencies are listed below, with the same version ranges as pyproject.toml
# (tests/system/test_deploy_files.py checks that they agree).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# 1. Runtime dependencies, in their own layer.
RUN pip install \
      "pydantic-settings>=2.4" \
      "redis>=5" \
      "rq>=3.0,<4" \
      "slack-bolt>=1.21" \
      "slack-sdk>=3.33" \
      "waitress>=3.0" \
      "discord.py>=2.4" \
      "requests>=2.31" \
      "prometheus-client>=0.20" \
      "pypdf>=5" \
      "pyyaml>=6" \
      "starlette>=0.40" \
      "uvicorn>=0.30"

# 2. xwinbot itself, without its model-side dependencies.
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY bot ./bot
RUN pip install --no-deps . \
 && python -c "import bot.slack.app, bot.discord.client, bot.api.app" \
 && ! python -c "import torch" 2>/dev/null \
 && xwinbot --help >/dev/null

RUN useradd --create-home --uid 10001 xwinbot
USER xwinbot

# /metrics and /healthz (XWINBOT_METRICS_PORT: 9401 for Slack, 9402 for Discord in docker-compose.yml);
# the Slack HTTP-mode endpoint (XWINBOT_SLACK_HTTP_PORT); the HTTP API (XWINBOT_API_PORT).
EXPOSE 9401 9402 3000 8000
CMD ["xwinbot", "--help"]
