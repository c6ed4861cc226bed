"""From settings to a ready Generator: which model, which device, which template."""

from __future__ import annotations

import logging
import time

import torch

from worker.inference.generate import Generator
from worker.inference.prompt import make_template
from worker.inference.sampling import GenerationParams
from worker.model.loader import load_model, pick_device
from worker.settings import XWIN_MODEL, Settings

log = logging.getLogger(__name__)


def choose_model_source(settings: Settings, device: torch.device) -> str:
    """The configured model; unset: Xwin-LM-13B on a GPU, the offline demo model (built on first use) on CPU."""
    if settings.model:
        return settings.model
    if device.type == "cuda":
        return XWIN_MODEL
    from worker.model.demo_model import default_demo_dir, ensure_demo_model

    log.warning("no model configured and no GPU: answering with the offline demo model in %s", default_demo_dir())
    return str(ensure_demo_model())


def generation_defaults(settings: Settings) -> GenerationParams:
    """The sampling settings every answer starts from (a job's overrides replace some of them)."""
    return GenerationParams(settings.temperature, settings.top_p, settings.top_k, settings.max_new_tokens)


def use_fp8_prefill(model: torch.nn.Module, device: torch.device) -> int:
    """Prompts' int4 matmuls on fp8 tensor cores (XWINBOT_PREFILL_DTYPE=fp8) where the layers and the GPU allow;
    a warning where they do not. Returns how many layers will."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        log.warning("XWINBOT_PREFILL_DTYPE=fp8 needs fp8 tensor cores (compute capability 8.9+): prompts stay in "
                    "the model's dtype")
        return 0
    layers = [m for m in model.modules() if callable(getattr(m, "use_fp8", None))]  # the Triton int4 layers
    count = sum(layer.use_fp8() for layer in layers)
    if count == 0:
        log.warning("XWINBOT_PREFILL_DTYPE=fp8 needs the Triton int4 kernels (XWINBOT_INT4_KERNEL): prompts stay in "
                    "the model's dtype")
    else:
        log.info("prompts multiplied in fp8 in %d of %d int4 layers", count, len(layers))
    return count


def load_generator(settings: Settings) -> Generator:
    device = pick_device(settings.device)
    source = choose_model_source(settings, device)
    started = time.perf_counter()
    loaded = load_model(source, revision=settings.model_revision, device=device, int4_kernel=settings.int4_kernel)
    log.info("loaded %s on %s in %.1f s", source, device, time.perf_counter() - started)
    if settings.prefill_dtype == "fp8":
        use_fp8_prefill(loaded.model, device)
    return Generator(
        loaded,
        make_template(settings.template, loaded.tokenizer),
        system_prompt=settings.system_prompt,
        max_context_tokens=settings.max_context_tokens,
        defaults=generation_defaults(settings),
        cuda_graphs=settings.cuda_graphs,
        kv_cache_gb=settings.kv_cache_gb,
        kv_cache_dtype=settings.kv_cache_dtype,
    )
