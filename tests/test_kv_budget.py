"""The KV cache is sized from a memory budget: every configured conversation slot fits, context shrinks first."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from worker.generate import Generator
from worker.kv_budget import KVCacheTooSmall, bytes_per_token, context_for_budget
from worker.prompt import make_template

XWIN_13B = LlamaConfig(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40)


def test_a_13b_token_costs_819_kb_in_bf16():
    assert bytes_per_token(XWIN_13B, torch.bfloat16) == 819_200


def test_32_conversations_on_a_24_gb_card():
    # 24 GB card: 7.4 GB of 4-bit weights, 2 GB working room -> ~14 GB for the cache
    context = context_for_budget(4096, 32, bytes_per_token(XWIN_13B, torch.bfloat16), int(14e9))
    assert context == 512  # 32 x 512 tokens x 819 KB = 13.4 GB
    assert context_for_budget(4096, 1, 819_200, int(14e9)) == 4096  # one conversation keeps the whole context


def test_a_budget_too_small_for_the_batch_says_what_to_change():
    with pytest.raises(KVCacheTooSmall, match="XWINBOT_MAX_BATCH"):
        context_for_budget(4096, 64, 819_200, int(5e9))


def test_generator_fits_prompts_to_the_sized_cache(gptq_checkpoint):
    from worker.loader import load_model

    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=1)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    per_token = bytes_per_token(loaded.config, loaded.dtype)
    generator = Generator(loaded, make_template("vicuna", loaded.tokenizer), max_context_tokens=256,
                          kv_cache_gb=4 * 256 * per_token / 1e9)

    runtime = generator.build_runtime(max_batch=4)
    assert generator.context_tokens == 256 and runtime.max_seq_len == 256
    with pytest.raises(KVCacheTooSmall):
        generator.build_runtime(max_batch=8)  # 8 x 256 tokens do not fit, and 128 is below the smallest context
