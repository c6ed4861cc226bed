"""From settings to a ready generator: the kernel, KV cache and context settings reach the model."""

from __future__ import annotations

import pytest
import torch

from worker.inference.kv_budget import bytes_per_token
from worker.inference.model_setup import load_generator
from worker.inference.prompt import Turn
from worker.inference.sampling import GenerationParams
from worker.model.tinygemm_linear import TinygemmInt4Linear
from worker.settings import Settings


def int4_layers(generator) -> set[type]:
    return {type(m) for m in generator.loaded.model.modules() if hasattr(m, "group_size")}


def test_cpu_defaults_to_pytorch_int4_and_a_whole_context(gptq_checkpoint):
    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=21)
    generator = load_generator(Settings(_env_file=None, model=str(ckpt.path), device="cpu", max_context_tokens=128))

    assert int4_layers(generator) == {TinygemmInt4Linear}
    assert generator.runtime.max_seq_len == 128 and generator.runtime.cache.keys.dtype == torch.bfloat16


def test_triton_kernels_fp8_cache_and_budget_from_settings(gptq_checkpoint):
    pytest.importorskip("triton")
    from worker.model.triton_linear import TritonInt4Linear

    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=22)
    settings = Settings(_env_file=None, model=str(ckpt.path), device="cpu", max_context_tokens=256, max_batch=2,
                        int4_kernel="triton", kv_cache_dtype="fp8", kv_cache_gb=1e-9)  # far too small
    generator = load_generator(settings)
    assert int4_layers(generator) == {TritonInt4Linear}

    from worker.inference.kv_budget import KVCacheTooSmall

    with pytest.raises(KVCacheTooSmall):
        generator.build_runtime(max_batch=2)
    per_token = bytes_per_token(generator.loaded.config, torch.float8_e4m3fn)
    generator.kv_cache_gb = 2 * 256 * per_token / 1e9
    runtime = generator.build_runtime(max_batch=2)
    assert runtime.max_seq_len == 256 and runtime.cache.keys.dtype == torch.float8_e4m3fn
    generator.answer([Turn("user", "Hi")], GenerationParams(temperature=0.0, max_new_tokens=4))
    assert generator.runtime.cache.keys.view(torch.uint8)[:, 0].any()  # the conversation went through the fp8 cache


@pytest.mark.parametrize("env, mixing", [({}, False), ({"XWINBOT_MIX_PREFILL": "true"}, True)])
def test_mixed_prefill_is_off_unless_the_setting_turns_it_on(gptq_checkpoint, monkeypatch, env, mixing):
    """The worker's engine prefills inside decode steps only when XWINBOT_MIX_PREFILL says so."""
    from worker.backends import build_backend

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=23)
    engine = build_backend(Settings(_env_file=None, model=str(ckpt.path), device="cpu", max_context_tokens=128))
    assert engine.mix_prefill is mixing


def test_fp8_prefill_from_settings_takes_a_long_prompt_through_fp8_gemms(gptq_checkpoint, monkeypatch):
    pytest.importorskip("triton")
    from worker.kernels import w4a16
    from worker.model.triton_linear import TritonInt4Linear

    monkeypatch.setattr(w4a16, "_scratch", {})
    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=24)
    settings = Settings(_env_file=None, model=str(ckpt.path), device="cpu", max_context_tokens=256, max_batch=1,
                        int4_kernel="triton", prefill_dtype="fp8")
    generator = load_generator(settings)
    layers = [m for m in generator.loaded.model.modules() if isinstance(m, TritonInt4Linear)]
    assert layers and all(layer.column_scales is not None for layer in layers)

    answer = generator.answer([Turn("user", "tell me more " * 12)], GenerationParams(temperature=0.0, max_new_tokens=4))

    assert answer.strip()
    assert (torch.device("cpu"), torch.float8_e4m3fn) in w4a16._scratch  # the prompt's rows went through fp8 GEMMs
    assert (torch.device("cpu"), torch.bfloat16) not in w4a16._scratch  # and none through bf16's


def test_fp8_prefill_without_the_triton_layers_says_so_and_changes_nothing(gptq_checkpoint, caplog, monkeypatch):
    monkeypatch.setenv("XWINBOT_PREFILL_DTYPE", "fp8")
    ckpt = gptq_checkpoint(bits=4, group_size=32, seed=25)
    generator = load_generator(Settings(_env_file=None, model=str(ckpt.path), device="cpu", max_context_tokens=128))

    assert int4_layers(generator) == {TinygemmInt4Linear}
    assert "XWINBOT_PREFILL_DTYPE=fp8 needs the Triton int4 kernels" in caplog.text


def test_an_unknown_prefill_dtype_is_refused_at_startup():
    with pytest.raises(ValueError, match="prefill_dtype"):
        Settings(_env_file=None, prefill_dtype="int4")
