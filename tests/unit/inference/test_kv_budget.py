"""The KV cache is sized from a memory budget: every configured conversation slot fits, context shrinks first."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from worker.inference.generate import Generator
from worker.inference.kv_budget import KVCacheTooSmall, bytes_per_token, context_for_budget
from worker.inference.prompt import Turn, make_template
from worker.inference.sampling import GenerationParams

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
    from worker.model.loader import load_model

    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=1)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    per_token = bytes_per_token(loaded.config, loaded.dtype)
    generator = Generator(loaded, make_template("vicuna", loaded.tokenizer), max_context_tokens=256,
                          kv_cache_gb=4 * 256 * per_token / 1e9)

    runtime = generator.build_runtime(max_batch=4)
    assert generator.context_tokens == 256 and runtime.max_seq_len == 256
    with pytest.raises(KVCacheTooSmall):
        generator.build_runtime(max_batch=8)  # 8 x 256 tokens do not fit, and 128 is below the smallest context


def test_fp8_cache_fits_32_conversations_of_1k_tokens_on_a_24_gb_card():
    from worker.kernels.kv_quant import FP8

    assert bytes_per_token(XWIN_13B, FP8) == 409_600
    assert context_for_budget(4096, 32, bytes_per_token(XWIN_13B, FP8), int(14e9)) == 1024


def test_an_int8_token_adds_its_fp32_scales_and_still_fits_32_conversations_of_1k_tokens_on_a_24_gb_card():
    assert bytes_per_token(XWIN_13B, torch.int8) == 40 * 2 * 40 * (128 + 4)  # 422 KB: codes and a scale a head
    assert context_for_budget(4096, 32, bytes_per_token(XWIN_13B, torch.int8), int(14e9)) == 1024


def test_fp8_cache_answers_close_to_the_full_precision_one(gptq_checkpoint):
    from worker.inference.llama_runtime import LlamaRuntime, forward
    from worker.kernels.kv_quant import FP8
    from worker.model.loader import load_model

    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=4)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    prompt = torch.randint(3, loaded.config.vocab_size, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    logits = {}
    for name, kv_dtype in (("full", None), ("fp8", FP8)):
        runtime = LlamaRuntime(loaded.model, 128, kv_dtype=kv_dtype)
        assert runtime.cache.keys.dtype == (kv_dtype or torch.float32)
        runtime.prefill_chunk(0, prompt[:30], 0)  # the first 30 tokens go through the cache...
        with torch.inference_mode():  # ...and the last 10 attend to them
            logits[name] = forward(loaded.model, runtime.cache, torch.tensor([prompt[30:]]), torch.arange(30, 40),
                                   runtime.window_for(40), last_only=False)
    assert runtime.cache.keys.element_size() == 1
    rel = float((logits["fp8"] - logits["full"]).norm() / logits["full"].norm())
    assert 0 < rel < 0.05  # the cache really is coarser, and attention still reads the same conversation
    same_choice = (logits["fp8"].argmax(-1) == logits["full"].argmax(-1)).float().mean()
    assert same_choice >= 0.8  # a random tiny model has near ties; most next-token choices must not move


def test_generator_answers_with_an_fp8_cache(gptq_checkpoint):
    from worker.model.loader import load_model

    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=6)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    generator = Generator(loaded, make_template("vicuna", loaded.tokenizer), max_context_tokens=256,
                          kv_cache_dtype="fp8")

    answer = generator.answer([Turn("user", "Hello there")], GenerationParams(temperature=0.0, max_new_tokens=12))
    assert generator.runtime.cache.keys.dtype == torch.float8_e4m3fn
    assert answer.strip()
