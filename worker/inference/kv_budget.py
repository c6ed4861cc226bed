"""How many tokens of conversation each KV cache slot holds, from a memory budget.

The cache is ``max_batch`` slots of ``context`` tokens each, every token costing
``layers * 2 * kv_heads * (head_dim * bytes + scale bytes)`` (819 KB for a 13B Llama in bf16, 410 KB in fp8,
422 KB in int8 with its fp32 scale per token and head). On a GPU the budget is
``XWINBOT_KV_CACHE_GB`` or, unset, most of the memory still free once the model is loaded; the context per
slot is then the configured one or less, so that ``max_batch`` conversations always fit.
"""

from __future__ import annotations

import logging

import torch

from worker.kernels.kv_quant import token_scale_bytes
from worker.model.loader import head_dim_of

log = logging.getLogger(__name__)

FREE_FRACTION = 0.9  # of the free GPU memory, when no budget is set
WORKING_ROOM = 2 * 1024**3  # left for activations, prompt chunks and CUDA graphs
CONTEXT_STEP = 256
SMALLEST_CONTEXT = 256


class KVCacheTooSmall(RuntimeError):
    """Not even SMALLEST_CONTEXT tokens per conversation fit in the budget."""


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """K and V of one token in every layer and kv head, with an int8 cache's per-token scales."""
    element = torch.empty((), dtype=dtype).element_size()
    per_head = head_dim_of(config) * element + token_scale_bytes(dtype)
    return config.num_hidden_layers * 2 * config.num_key_value_heads * per_head


def free_memory_budget(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return max(0, int(free * FREE_FRACTION) - WORKING_ROOM)


def context_for_budget(context: int, max_batch: int, per_token: int, budget_bytes: int) -> int:
    """The configured context, or the largest multiple of CONTEXT_STEP that fits max_batch times."""
    if context * max_batch * per_token <= budget_bytes:
        return context
    fitting = budget_bytes // (max_batch * per_token) // CONTEXT_STEP * CONTEXT_STEP
    if fitting < SMALLEST_CONTEXT:
        raise KVCacheTooSmall(
            f"{budget_bytes / 1e9:.1f} GB of KV cache holds {budget_bytes // per_token} tokens: not "
            f"{SMALLEST_CONTEXT} for each of {max_batch} conversations. Lower XWINBOT_MAX_BATCH or raise "
            "XWINBOT_KV_CACHE_GB (or free GPU memory)."
        )
    log.warning("KV cache: %d conversations of %d tokens fit in %.1f GB (asked for %d tokens each)",
                max_batch, fitting, budget_bytes / 1e9, context)
    return fitting


def sized_context(context: int, max_batch: int, config, dtype, device: torch.device, kv_cache_gb: float | None) -> int:
    """The per-conversation context to build the cache with on ``device``."""
    if kv_cache_gb is None and device.type != "cuda":
        return context  # CPU: no budget unless one is set
    budget = int(kv_cache_gb * 1e9) if kv_cache_gb is not None else free_memory_budget(device)
    return context_for_budget(context, max_batch, bytes_per_token(config, dtype), budget)
