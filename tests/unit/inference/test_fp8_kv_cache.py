"""The fp8 K/V cache with per-(layer, kv head) scales: attention over it stays within fp8's rounding of
transformers' float attention where an unscaled e4m3 cache clips large heads and flushes small ones, and the
runtime calibrates the scales once at load and reads back what it wrote."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import eager_attention_forward

from worker.inference.kv_cache import KVCache
from worker.inference.llama_runtime import LlamaRuntime, calibration_tokens, forward
from worker.kernels import FP8_MAX
from worker.kernels.kv_quant import FP8, FP8_HEADROOM
from worker.model.loader import load_model

E4M3_STEP = 2.0**-3  # e4m3 keeps 3 mantissa bits: neighbours differ by at most 1/8 of the value
E4M3_SMALLEST = 2.0**-9  # its smallest subnormal, in units of the scale


def relative_error(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Per head: |got - want| / |want| over [B, H, T, D] -> [H]."""
    def norm(t):
        return t.float().square().sum(dim=(0, 2, 3)).sqrt()

    return norm(got - want) / norm(want)


def attention_through(cache: KVCache, q, k, v, scaling):
    """q attends to k/v written into ``cache`` (slot 0, positions 0..T-1) and read back as attention reads them."""
    length = k.shape[2]
    cache.write(0, 0, torch.arange(length).view(1, length), k, v)
    keys, values = cache.read(0, 0, 1, length, q.dtype)
    return F.scaled_dot_product_attention(q, keys, values, scale=scaling, enable_gqa=True)


def test_scaled_fp8_attention_stays_within_fp8_rounding_of_transformers_float_attention():
    gen = torch.Generator().manual_seed(5)
    kv_heads, q_heads, length, dim, scaling = 2, 4, 48, 16, 0.25
    magnitude = torch.tensor([600.0, 1e-3]).view(1, kv_heads, 1, 1)  # above e4m3's 448; in its subnormals
    k = torch.randn(1, kv_heads, length, dim, generator=gen) * magnitude
    v = torch.randn(1, kv_heads, length, dim, generator=gen) * magnitude
    q = torch.randn(1, q_heads, 1, dim, generator=gen) / magnitude.repeat_interleave(2, dim=1)  # scores ~ 1
    module = SimpleNamespace(num_key_value_groups=q_heads // kv_heads, training=False)
    want, _ = eager_attention_forward(module, q, k, v, None, scaling)
    want = want.transpose(1, 2)  # [B, H, 1, D]

    unscaled = KVCache(1, 1, kv_heads, length, dim, "cpu", FP8)
    scaled = KVCache(1, 1, kv_heads, length, dim, "cpu", FP8)
    scaled.set_scales(torch.stack([k.abs().amax(dim=(0, 2, 3)), v.abs().amax(dim=(0, 2, 3))])[None])

    scaled_error = relative_error(attention_through(scaled, q, k, v, scaling), want)
    unscaled_error = relative_error(attention_through(unscaled, q, k, v, scaling), want)
    assert (scaled_error < 0.06).all(), scaled_error  # a few % per head: fp8's 3-bit mantissa, nothing more
    assert (unscaled_error > 0.2).all(), unscaled_error  # clipped at 448 / rounded to a few subnormal steps


def test_the_runtime_calibrates_fp8_scales_at_load_and_reads_back_what_it_wrote(gptq_checkpoint):
    loaded = load_model(gptq_checkpoint(bits=4, group_size=32, seed=4).path, device="cpu", dtype=torch.float32)
    config = loaded.config
    prompt = torch.randint(3, config.vocab_size, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    full, fp8 = (LlamaRuntime(loaded.model, 256, kv_dtype=dtype) for dtype in (None, FP8))

    # The scales: the calibration prompt's largest |K| and |V| per (layer, head), with the headroom.
    tokens = calibration_tokens(config)
    with torch.inference_mode():
        forward(loaded.model, full.cache, tokens, torch.arange(tokens.shape[1]), 256, last_only=True)
    amax = torch.stack([t[:, 0].abs().amax(dim=(-1, -2)) for t in (full.cache.keys, full.cache.values)], dim=1)
    torch.testing.assert_close(fp8.cache.scales, amax * FP8_HEADROOM / FP8_MAX)
    assert torch.equal(full.cache.scales, torch.ones_like(full.cache.scales))  # a full-precision cache: unscaled
    assert torch.equal(LlamaRuntime(loaded.model, 64, kv_dtype=FP8).cache.scales, fp8.cache.scales)  # every load

    # The round trip: what a prompt wrote comes back within one e4m3 step (or one subnormal step) of full precision.
    for runtime in (full, fp8):
        runtime.prefill_chunk(0, prompt, 0)
    # Layer 0's K/V come from the embeddings alone (later layers' inputs already went through fp8 attention).
    read = fp8.cache.read(0, 0, 1, len(prompt), torch.float32)
    want = full.cache.read(0, 0, 1, len(prompt), torch.float32)
    for got, ref, scale in zip(read, want, fp8.cache.scales[0]):
        bound = E4M3_STEP / 2 * ref.abs() + E4M3_SMALLEST / 2 * scale.view(1, -1, 1, 1)
        assert ((got - ref).abs() <= bound * 1.001).all()
        assert not torch.equal(got, ref)  # it was rounded: the cache really holds fp8
