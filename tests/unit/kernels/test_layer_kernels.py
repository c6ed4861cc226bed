"""The Triton kernels between a layer's matmuls (worker.kernels.layer_kernels) compute what transformers' Llama does,
op by op in PyTorch (worker.inference.layer_ops' CPU path), from split-K partial sums.

Without a GPU they run in Triton's interpreter (tests/conftest.py), the same kernel programs the GPU compiles.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

from worker.inference import layer_ops  # noqa: E402
from worker.inference.kv_cache import KVCache  # noqa: E402
from worker.kernels import layer_kernels  # noqa: E402
from worker.kernels.w4a16 import INTERPRETING  # noqa: E402
from worker.model.loader import load_model  # noqa: E402

GEN = torch.Generator().manual_seed(21)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=GEN).to(dtype)


def tolerance(dtype):
    """bf16: a few rounding steps apart (the kernels round once, PyTorch after every op, and Triton's interpreter
    rounds fp32 -> bf16 its own way)."""
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)


class Norm(nn.Module):
    def __init__(self, width, dtype):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.2 * randn(width, dtype=dtype))
        self.variance_epsilon = 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [0, 1, 3])
@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("rows", [6, 80], ids=["column-blocks", "a-program-a-row"])  # decode steps; prefills
def test_add_rms_norm_adds_the_partials_and_hands_x_over_in_the_next_layers_order(dtype, split, ordered, rows):
    h = randn(rows // 2, 2, 320, dtype=dtype)
    delta = randn(split, rows, 320, dtype=torch.float32 if split > 1 else dtype) if split else None
    norm = Norm(320, dtype)
    order = torch.randperm(320, generator=GEN) if ordered else None

    h_out, x_out = layer_kernels.add_rms_norm(h, delta, norm.weight, 1e-5, order)
    want_h, want_x = layer_ops.add_rms_norm(h, delta, norm, order)

    torch.testing.assert_close(h_out, want_h, **tolerance(dtype))
    torch.testing.assert_close(x_out, want_x, **tolerance(dtype))
    if delta is None:
        assert h_out is h or torch.equal(h_out, h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_silu_mul_of_gate_up_partials(dtype):
    partials = randn(2, 5, 2 * 700)  # fp32 partial sums of a fused gate/up layer, 2 splits

    got = layer_kernels.silu_mul(partials, dtype)

    assert got.shape == (5, 700) and got.dtype == dtype
    torch.testing.assert_close(got, layer_ops.silu_mul(partials, nn.SiLU(), dtype), **tolerance(dtype))


def test_the_silu_kernel_serves_the_activation_a_loaded_llama_has(gptq_checkpoint):
    """transformers 5 builds its own SiLU module (not an nn.SiLU): the kernel must still take the step."""
    ckpt = gptq_checkpoint(bits=4, group_size=32, desc_act=False, sym=True, seed=3)
    act_fn = load_model(ckpt.path, device="cpu", dtype=torch.float32).model.model.layers[0].mlp.act_fn

    assert layer_ops.is_silu(act_fn)
    assert not layer_ops.is_silu(nn.GELU())


def test_other_activations_take_pytorchs_path():
    partials = randn(1, 2, 8)
    gelu = layer_ops.silu_mul(partials, nn.GELU(), torch.float32)
    torch.testing.assert_close(gelu, nn.functional.gelu(partials[0, :, :4]) * partials[0, :, 4:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("length", [3, 40], ids=["decode-rows", "prefill-rows"])  # 80 rows: 8 heads a program
def test_rotary_into_cache_rotates_q_and_k_and_writes_each_row_at_its_own_position(dtype, split, length):
    q_heads, kv_heads, dim, batch = 6, 2, 16, 2  # 10 heads: the last 8-head block is part-empty
    partials = randn(split, batch * length, (q_heads + 2 * kv_heads) * dim,
                     dtype=torch.float32 if split > 1 else dtype)
    angles = randn(batch, length, dim // 2)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(dtype) for f in (torch.cos, torch.sin))
    positions = torch.stack([torch.arange(5, 5 + length), torch.arange(length)])  # different places in their talks
    caches = [KVCache(2, 4, kv_heads, 64, dim, "cpu", dtype) for _ in range(2)]
    before = randn(*caches[0].keys.shape, dtype=dtype)  # entries nobody writes must stay as they were
    for cache in caches:
        cache.keys.copy_(before)
        cache.values.copy_(before * 2)

    q = layer_kernels.rotary_into_cache(partials, cos.reshape(-1, dim), sin.reshape(-1, dim), positions.reshape(-1),
                                        caches[0].keys[1], caches[0].values[1], 1, length, q_heads, kv_heads, dtype)
    want_q = layer_ops.rotary_into_cache(partials, cos, sin, positions, caches[1], 1, 1, q_heads, kv_heads, dtype)

    torch.testing.assert_close(q.view(batch, length, q_heads, dim).transpose(1, 2), want_q, **tolerance(dtype))
    torch.testing.assert_close(caches[0].keys, caches[1].keys, **tolerance(dtype))
    torch.testing.assert_close(caches[0].values, caches[1].values, **tolerance(dtype))
    assert not torch.equal(caches[0].keys[1, 1, :, 5], before[1, 1, :, 5])  # layer 1, slot 1 (first_row), position 5
    assert torch.equal(caches[0].keys[1, 1, :, 5 + length:], before[1, 1, :, 5 + length:])  # after its last: untouched


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8], ids=["bf16", "int8"])
def test_rotary_into_cache_takes_each_rows_slot_from_a_tensor_and_writes_nothing_for_minus_one(cache_dtype):
    """A captured prefill's K/V write: sequence b goes to slots[b] (here 3 and 0, not consecutive), and a padding
    sequence (-1) leaves every slot as it was; the same bytes as the write at first_slot, sequence by sequence."""
    q_heads, kv_heads, dim, length = 4, 2, 16, 40  # 120 rows: 8 heads a program, as a prefill's
    partials = randn(1, 3 * length, (q_heads + 2 * kv_heads) * dim, dtype=torch.bfloat16)
    angles = randn(3 * length, dim // 2)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    positions = torch.arange(length).repeat(3)
    caches = [KVCache(1, 4, kv_heads, 64, dim, "cpu", cache_dtype) for _ in range(2)]
    int8 = cache_dtype == torch.int8

    def write(cache, part, first_slot, slots=None):
        rows = slice(None) if slots is not None else slice(part * length, (part + 1) * length)
        return layer_kernels.rotary_into_cache(
            partials[:, rows], cos[rows], sin[rows], positions[rows], cache.keys[0], cache.values[0], first_slot,
            length, q_heads, kv_heads, torch.bfloat16, token_scales=cache.token_scales[0] if int8 else None,
            key_channel_scales=cache.key_channel_scales[0] if int8 else None, slots=slots)

    q = write(caches[0], None, 0, slots=torch.tensor([3, 0, -1]))
    want_q = torch.cat([write(caches[1], 0, 3), write(caches[1], 1, 0), write(caches[1], 2, 1)])
    assert torch.equal(q[: 2 * length], want_q[: 2 * length])  # q of every row, padding sequence's included
    for slot in (3, 0):
        assert torch.equal(caches[0].keys[0, slot], caches[1].keys[0, slot])
        assert torch.equal(caches[0].values[0, slot], caches[1].values[0, slot])
        assert caches[0].keys[0, slot].float().abs().sum() > 0
    assert not caches[0].keys[0, 1:3].any() and not caches[0].values[0, 1:3].any()  # -1 wrote nothing
    if int8:
        assert torch.equal(caches[0].token_scales[0][:, [0, 3]], caches[1].token_scales[0][:, [0, 3]])
        assert not caches[0].token_scales[0][:, 1:3].any()


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8], ids=["bf16", "int8"])
def test_rotary_into_cache_hands_whole_prompts_their_keys_and_values_as_computed(cache_dtype):
    """Whole prompts attend to their own keys and values without reading the cache back (``all_heads``): the kernel
    returns k rotated and v as the PyTorch path computes them, in the model dtype even where the cache holds int8
    codes, and still writes the cache as it does without them."""
    q_heads, kv_heads, dim, batch, length = 4, 2, 16, 2, 40  # 80 rows: 8 heads a program, as a prefill's
    partials = randn(1, batch * length, (q_heads + 2 * kv_heads) * dim, dtype=torch.bfloat16)
    angles = randn(batch, length, dim // 2)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    positions = torch.arange(length).repeat(batch, 1)
    caches = [KVCache(1, 4, kv_heads, 64, dim, "cpu", cache_dtype) for _ in range(3)]
    int8 = cache_dtype == torch.int8

    def kernel(cache, all_heads):
        return layer_kernels.rotary_into_cache(
            partials, cos.reshape(-1, dim), sin.reshape(-1, dim), positions.reshape(-1), cache.keys[0],
            cache.values[0], 1, length, q_heads, kv_heads, torch.bfloat16,
            token_scales=cache.token_scales[0] if int8 else None, all_heads=all_heads)

    heads = kernel(caches[0], all_heads=True).view(batch, length, -1, dim).transpose(1, 2)
    q_alone = kernel(caches[1], all_heads=False)
    want_q, want_k, want_v = layer_ops.rotary_into_cache(partials, cos, sin, positions, caches[2], 0, 1, q_heads,
                                                         kv_heads, torch.bfloat16, with_kv=True)

    assert heads.shape == (batch, q_heads + 2 * kv_heads, length, dim) and heads.dtype == torch.bfloat16
    for got, want in ((heads[:, :q_heads], want_q), (heads[:, q_heads : q_heads + kv_heads], want_k),
                      (heads[:, q_heads + kv_heads :], want_v)):
        torch.testing.assert_close(got, want, **tolerance(torch.bfloat16))
    assert torch.equal(heads[:, :q_heads], q_alone.view(batch, length, q_heads, dim).transpose(1, 2))
    assert torch.equal(caches[0].keys, caches[1].keys) and torch.equal(caches[0].values, caches[1].values)
    if int8:
        assert torch.equal(caches[0].token_scales, caches[1].token_scales)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [1, 2])
def test_qwen3_q_k_norms_come_before_the_rotary_kernel(dtype, split):
    """Qwen3: q and k heads each through their RMSNorm over head_dim before the rotary. On the GPU ``normed_qk``
    (the model's own norm modules, plain PyTorch) hands the rotary kernel one split in the model dtype; here the
    kernel's result is compared with the CPU path and with transformers' Qwen3 math written out."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb

    q_heads, kv_heads, dim, batch, length = 4, 2, 16, 2, 5
    norms = [Qwen3RMSNorm(dim, eps=1e-6).to(dtype) for _ in range(2)]
    for norm in norms:
        norm.weight.data.copy_(1 + 0.3 * randn(dim, dtype=dtype))
    partials = randn(split, batch * length, (q_heads + 2 * kv_heads) * dim, dtype=torch.float32 if split > 1 else dtype)
    angles = randn(batch, length, dim // 2)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(dtype) for f in (torch.cos, torch.sin))
    positions = torch.stack([torch.arange(3, 3 + length), torch.arange(length)])
    caches = [KVCache(1, 2, kv_heads, 16, dim, "cpu", dtype) for _ in range(2)]

    normed = layer_ops.normed_qk(partials, norms[0], norms[1], q_heads, kv_heads, dim, dtype)
    q = layer_kernels.rotary_into_cache(normed, cos.reshape(-1, dim), sin.reshape(-1, dim), positions.reshape(-1),
                                        caches[0].keys[0], caches[0].values[0], 0, length, q_heads, kv_heads, dtype)
    cpu_q = layer_ops.rotary_into_cache(partials, cos, sin, positions, caches[1], 0, 0, q_heads, kv_heads, dtype,
                                        norms[0], norms[1])

    qkv = layer_ops.summed(partials, dtype).view(batch, length, -1, dim).transpose(1, 2)  # [B, heads, T, D]
    want_q, want_k = apply_rotary_pos_emb(norms[0](qkv[:, :q_heads]), norms[1](qkv[:, q_heads : q_heads + kv_heads]),
                                          cos, sin)
    got_q = q.view(batch, length, q_heads, dim).transpose(1, 2)
    torch.testing.assert_close(got_q, want_q, **tolerance(dtype))
    torch.testing.assert_close(cpu_q, want_q, **tolerance(dtype))
    for cache in caches:
        for b in range(batch):
            written = cache.keys[0, b][:, positions[b]]  # [kv_heads, T, D]
            torch.testing.assert_close(written, want_k[b], **tolerance(dtype))


@pytest.mark.parametrize("length", [3, 32], ids=["decode-rows", "prefill-rows"])  # 64 rows: 8 heads a program
def test_rotary_into_cache_writes_fp8_k_and_v_divided_by_each_heads_scale(length):
    """An fp8 cache (KVCache.scales): the kernel stores what the PyTorch path (KVCache.write) stores, k and v of
    each head divided by its own scale, here heads ~100x apart, one of them past e4m3's 448 unscaled."""
    q_heads, kv_heads, dim, batch = 6, 2, 16, 2
    partials = randn(1, batch * length, (q_heads + 2 * kv_heads) * dim)
    partials[..., q_heads * dim :] *= torch.tensor([1000.0, 10.0] * 2).repeat_interleave(dim)  # k0 k1 v0 v1
    angles = randn(batch, length, dim // 2)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1) for f in (torch.cos, torch.sin))
    positions = torch.stack([torch.arange(5, 5 + length), torch.arange(length)])
    caches = [KVCache(2, 4, kv_heads, 64, dim, "cpu", torch.float8_e4m3fn) for _ in range(2)]
    for cache in caches:
        cache.set_scales(torch.tensor([[[4000.0, 40.0]] * 2] * 2))  # [layers, K/V, heads]: amax ~4x the entries

    layer_kernels.rotary_into_cache(partials, cos.reshape(-1, dim), sin.reshape(-1, dim), positions.reshape(-1),
                                    caches[0].keys[1], caches[0].values[1], 1, length, q_heads, kv_heads,
                                    torch.float32, caches[0].scales[1])
    layer_ops.rotary_into_cache(partials, cos, sin, positions, caches[1], 1, 1, q_heads, kv_heads, torch.float32)

    kernel, pytorch = (cache.read(1, 1, batch, 64, torch.float32) for cache in caches)
    for got, want, scale in zip(kernel, pytorch, caches[0].scales[1].view(2, 1, kv_heads, 1, 1)):
        # fp32 rounding may differ by one e4m3 step (2^-3 of the value, or 2^-9 of the scale among subnormals)
        same = (got - want).abs() <= 2.0**-3 * want.abs() + 2.0**-9 * scale
        if INTERPRETING:  # Triton 3.9's interpreter rounds fp32 -> e4m3 wrongly where the mantissa carries into
            same |= got * 2 == want  # the exponent (31.9 -> 16, not 32); the GPU converts in hardware, as PyTorch
        assert same.all()
        assert got.abs().amax() > 448  # the large head kept its size: scaled, not clamped


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [3, 32], ids=["decode-rows", "prefill-rows"])  # 64 rows: 8 heads a program
def test_rotary_into_cache_writes_int8_codes_and_each_vectors_scale(dtype, length):
    """An int8 cache (KVCache.token_scales): the kernel stores the codes and per-(token, kv head) scales the
    PyTorch path (KVCache.write, kv_quant.quantize_per_token) stores, here heads ~100x apart, K divided by
    calibrated-looking channel scales first, and one k vector all zeros (scale tiny, codes 0); positions nobody
    writes keep their codes and scales."""
    q_heads, kv_heads, dim, batch = 6, 2, 16, 2
    partials = randn(1, batch * length, (q_heads + 2 * kv_heads) * dim, dtype=dtype)
    partials[..., q_heads * dim :] *= torch.tensor([100.0, 1.0] * 2).repeat_interleave(dim).to(dtype)  # k0 k1 v0 v1
    partials[0, 0, q_heads * dim : (q_heads + 1) * dim] = 0  # row 0's k head 0
    angles = randn(batch, length, dim // 2)
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).to(dtype) for f in (torch.cos, torch.sin))
    positions = torch.stack([torch.arange(5, 5 + length), torch.arange(length)])
    caches = [KVCache(2, 4, kv_heads, 64, dim, "cpu", torch.int8) for _ in range(2)]
    channels = torch.rand(2, kv_heads, dim, generator=torch.Generator().manual_seed(9)) * 10  # largest |k| seen
    for cache in caches:
        cache.token_scales.fill_(7.0)  # what was there before
        cache.set_key_channel_scales(channels)

    layer_kernels.rotary_into_cache(partials, cos.reshape(-1, dim), sin.reshape(-1, dim), positions.reshape(-1),
                                    caches[0].keys[1], caches[0].values[1], 1, length, q_heads, kv_heads, dtype,
                                    caches[0].scales[1], caches[0].token_scales[1], caches[0].key_channel_scales[1])
    layer_ops.rotary_into_cache(partials, cos, sin, positions, caches[1], 1, 1, q_heads, kv_heads, dtype)

    kernel, pytorch = caches
    codes_apart = torch.cat([(kernel.keys.int() - pytorch.keys.int()).abs().flatten(),
                             (kernel.values.int() - pytorch.values.int()).abs().flatten()])
    if dtype == torch.float32:  # the same vectors: the same codes and scales, bit for bit
        assert torch.equal(kernel.keys, pytorch.keys) and torch.equal(kernel.values, pytorch.values)
        assert torch.equal(kernel.token_scales, pytorch.token_scales)
    else:  # PyTorch rounds the rotary to bf16 after each op, the kernel once: largest entries a bf16 step (2^-7)
        # or two apart, codes 1 apart at most
        assert codes_apart.max() <= 1 and (codes_apart > 0).float().mean() < 0.02
        torch.testing.assert_close(kernel.token_scales, pytorch.token_scales, rtol=2**-6, atol=0)
    assert kernel.token_scales[1, 0, 1, 0, 5] == torch.finfo(torch.float32).tiny  # the zero vector
    assert not kernel.keys[1, 1, 0, 5].any()
    assert (kernel.token_scales[1, :, 1, :, 5 + length :] == 7.0).all()  # after the slot's last position
    assert (kernel.token_scales[0] == 7.0).all() and not kernel.keys[0].any()  # another layer
