"""The OpenAI-compatible HTTP adapter (``xwinbot api``): ``POST /v1/chat/completions``, ``GET /v1/models`` and
``/healthz``. Each request becomes a job on the same queue as chat questions (same caps, same worker)."""
