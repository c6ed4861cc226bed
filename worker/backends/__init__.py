"""What generates the answers, chosen by XWINBOT_BACKEND: ``own`` (the model loaded here, ``worker.inference``'s
continuous-batching ``Engine``) or ``openai`` (an external OpenAI-compatible server, ``openai_backend``).

Both offer what the worker uses: ``submit(turns, params, system_prompt)`` → a stream (``batches``, ``cancel``,
``tokens``, ``first_token_at``, ``cancelled``, ``finished``, ``error``), ``start()``, ``stop()``, ``running``,
``stats`` and ``max_batch``; ``describe`` says the rest (``BackendInfo``) so that the worker process, /healthz and
/metrics never reach into either one.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.settings import XWIN_MODEL, Settings


@dataclass(frozen=True)
class BackendInfo:
    name: str  # own | openai
    model: str | None  # what answers: the checkpoint, or the external server's model name
    device: str  # cuda:0, cpu, or the external server's URL
    context_tokens: int | None  # per conversation (None: the external server's business)
    defaults: object  # GenerationParams: the job's overrides replace these
    gpu: object | None = None  # the torch.device whose memory /metrics reports (own engine on a GPU only)
    template: str | None = None  # the prompt template's name (vicuna, alpaca, chat); None: the external server's


def build_backend(settings: Settings):
    """The backend XWINBOT_BACKEND names, not started; ``own`` loads the model (minutes for a large one)."""
    if settings.backend == "openai":
        from worker.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(settings)
    from worker.inference.engine import Engine
    from worker.inference.model_setup import load_generator

    return Engine(load_generator(settings), max_batch=settings.max_batch, mix_prefill=settings.mix_prefill)


def describe(backend, settings: Settings) -> BackendInfo:
    if getattr(backend, "name", None) == "openai":
        return BackendInfo("openai", backend.model, backend.url, None, backend.defaults)
    device = backend.runtime.device  # our own Engine
    # No model configured: what ``choose_model_source`` picked (Xwin on a GPU, else the demo model).
    model = settings.model or (XWIN_MODEL if device.type == "cuda" else str(backend.generator.loaded.path))
    return BackendInfo("own", model, str(device), backend.generator.context_tokens, backend.generator.defaults,
                       gpu=device if device.type == "cuda" else None, template=backend.generator.template.name)
