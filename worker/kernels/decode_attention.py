"""Decode attention (one new token per row) as two Triton kernels, flash-decoding style.

Each row attends to its own cache entries 0..position (rows are at different lengths; no mask tensor), or with
a sliding window (Mistral) to its last ``sliding_window`` entries only (position - sliding_window + 1..position). The
window is cut into chunks so that a batch of one still fills the GPU: ``_chunk_kernel`` gives each
(row, head, chunk) its running max, sum of exponentials and weighted values; ``_combine_kernel`` merges the
chunks and writes the output, optionally already in o_proj's act-order (so o_proj skips its gather).

    out = decode_attention(q, keys, values, positions, window, scale, order)   # q [B, Hq, D] -> [B, Hq * D]

An fp8 cache (``kv_scales`` given) holds each head's entries divided by that head's scale: the kernel multiplies the
head's scores by its K scale and its weighted values by its V scale (per head, so once a chunk, not per entry).
An int8 cache (``token_scales`` given) holds each entry's vector as codes of its own scale: the kernel loads the
chunk's K and V scales beside its codes (one fp32 per entry and head, 1/64 of a 128-wide head's codes) and
multiplies each entry's score by its K scale and its weight by its V scale. Its K is stored divided by a scale per
(kv head, channel) as well (``key_channel_scales``): the kernel multiplies q by them instead, once a program.

``worker.inference.llama_runtime`` uses it for decode steps on the GPU (its default, ``attention="triton"``;
``"sdpa"`` takes ``scaled_dot_product_attention``); ``benchmarks/speed/profile_decode.py`` compares the two.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels import INTERPRETING, MAGIC
from worker.kernels.launch import overlap, wait_for_previous_kernel

CHUNK = 128  # cache entries per program
CHUNK_WARPS = 4  # warps per chunk program
INT8_CHUNK_WARPS = 2  # an int8 cache's: 96 against 108 us a 13B layer at 32 rows (benchmarks/NOTES.md row 66)
# Under overlapping launches, whether each kernel lets the next launch right after its wait (True) or only as its
# programs finish: the chunk kernel at its end made the one-row step 2-5% faster at 300-1,800 tokens in, the
# combine kernel at its end 0.2-0.5% slower (benchmarks/kernels/attention_launch_next.py; benchmarks/NOTES.md row 101)
LAUNCH_NEXT_AFTER_WAIT = {"chunk": False, "combine": True}

# Four int8 codes a time (``pack=4``, $4 their 32-bit word) to exact fp32 without int-to-float instructions
# (an eighth of an FMA's throughput, and the int8 chunk programs' bound: benchmarks/NOTES.md row 65): XOR 0x80
# makes each byte 128 + code, PRMT puts byte i under 2^23's bits (MAGIC | byte reads as 2^23 + 128 + code), and
# one subtraction of 2^23 + 128 (MAGIC + 128 read as a float) leaves the code.
_INT8_TO_FP32_ASM = tl.constexpr(" ".join(
    [f"{{ .reg .b32 t, m; xor.b32 t, $4, 0x80808080; mov.b32 m, {MAGIC:#x};"]
    + [f"prmt.b32 ${i}, t, m, 0x744{i}; sub.f32 ${i}, ${i}, 0f{MAGIC + 128:08X};" for i in range(4)] + ["}"]))


@triton.jit
def _as_fp32(entries, ASM: tl.constexpr):
    """Cache entries -> fp32 (exact). ASM: int8 codes by ``_INT8_TO_FP32_ASM``; else Triton's conversion."""
    if ASM:
        return tl.inline_asm_elementwise(_INT8_TO_FP32_ASM, "=r,=r,=r,=r,r", [entries], dtype=tl.float32,
                                         is_pure=True, pack=4)
    return entries.to(tl.float32)


@triton.jit
def _chunk_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, kv_scale_ptr, channel_ptr, chunks, stride_slot,
                  stride_head, stride_pos, scale, sliding_window, kv_heads, scale_stride_kv, scale_stride_slot,
                  scale_stride_head, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr,
                  SLIDING: tl.constexpr, SCALED: tl.constexpr, TOKEN_SCALED: tl.constexpr, ASM: tl.constexpr,
                  PDL: tl.constexpr = False, LAUNCH_NEXT: tl.constexpr = True):
    """Program (row, head, chunk): softmax statistics and weighted values of its chunk of the row's entries
    (with SLIDING, only the last ``sliding_window`` of them: a chunk before those gets weight 0). SCALED: keys
    and values are stored divided by kv_scale_ptr[kv head] and kv_scale_ptr[kv_heads + kv head]. TOKEN_SCALED:
    entry t's key and value are stored divided by kv_scale_ptr[kv * scale_stride_kv + row * scale_stride_slot +
    kv head * scale_stride_head + t] with kv 0 (K) and 1 (V), and keys also divided by channel_ptr[kv head *
    HEAD_DIM + d] (q is multiplied by them: the same products). ASM: the entries are int8 codes, made fp32 by
    ``_as_fp32``'s assembly."""
    wait_for_previous_kernel(PDL, LAUNCH_NEXT)
    row, head, chunk = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    heads = tl.num_programs(1)
    d = tl.arange(0, HEAD_DIM)
    t = chunk * CHUNK + tl.arange(0, CHUNK)
    position = tl.load(pos_ptr + row)
    valid = t <= position
    if SLIDING:
        valid = valid & (t > position - sliding_window)  # transformers' sliding_window_overlay
    kv = row * stride_slot + (head // GROUP) * stride_head
    v_scale = 1.0
    if SCALED:
        scale = scale * tl.load(kv_scale_ptr + head // GROUP)
        v_scale = tl.load(kv_scale_ptr + kv_heads + head // GROUP)
    q = tl.load(q_ptr + (row * heads + head) * HEAD_DIM + d).to(tl.float32)
    if TOKEN_SCALED:
        q = q * tl.load(channel_ptr + (head // GROUP) * HEAD_DIM + d)
    keys = _as_fp32(tl.load(k_ptr + kv + t[:, None] * stride_pos + d[None, :], mask=valid[:, None], other=0.0), ASM)
    products = tl.sum(keys * q[None, :], axis=1)
    if TOKEN_SCALED:
        token_scales = kv_scale_ptr + row * scale_stride_slot + (head // GROUP) * scale_stride_head + t
        products = products * tl.load(token_scales, mask=valid, other=0.0)
    scores = tl.where(valid, products * scale, float("-inf"))
    top = tl.max(scores, axis=0)
    top_safe = tl.where(top == float("-inf"), 0.0, top)  # a chunk past the row's end: weights 0, not NaN
    weights = tl.exp(scores - top_safe)
    values = _as_fp32(tl.load(v_ptr + kv + t[:, None] * stride_pos + d[None, :], mask=valid[:, None], other=0.0), ASM)
    value_weights = weights
    if TOKEN_SCALED:  # the softmax sums the weights; the values take each entry's V scale on top
        value_weights = weights * tl.load(token_scales + scale_stride_kv, mask=valid, other=0.0)
    at = (row * heads + head) * chunks + chunk
    tl.store(m_ptr + at, top)
    tl.store(l_ptr + at, tl.sum(weights, axis=0))
    tl.store(acc_ptr + at * HEAD_DIM + d, tl.sum(values * value_weights[:, None], axis=0) * v_scale)


@triton.jit
def _combine_kernel(m_ptr, l_ptr, acc_ptr, order_ptr, out_ptr, chunks,
                    HEAD_DIM: tl.constexpr, BLOCK_C: tl.constexpr, ORDERED: tl.constexpr, PDL: tl.constexpr = False,
                    LAUNCH_NEXT: tl.constexpr = True):
    """Program (row, head): merge the chunks; channel head * HEAD_DIM + d goes to column order_inverse[...]."""
    wait_for_previous_kernel(PDL, LAUNCH_NEXT)
    row, head = tl.program_id(0), tl.program_id(1)
    heads = tl.num_programs(1)
    c = tl.arange(0, BLOCK_C)
    d = tl.arange(0, HEAD_DIM)
    base = (row * heads + head) * chunks
    tops = tl.load(m_ptr + base + c, mask=c < chunks, other=float("-inf"))
    top = tl.max(tops, axis=0)  # finite: the chunk holding the row's own position has a valid entry
    factors = tl.exp(tops - top)
    total = tl.sum(tl.load(l_ptr + base + c, mask=c < chunks, other=0.0) * factors, axis=0)
    acc = tl.load(acc_ptr + (base + c)[:, None] * HEAD_DIM + d[None, :], mask=(c < chunks)[:, None], other=0.0)
    out = tl.sum(acc * factors[:, None], axis=0) / total
    channel = head * HEAD_DIM + d
    if ORDERED:
        channel = tl.load(order_ptr + channel)
    tl.store(out_ptr + row * heads * HEAD_DIM + channel, out.to(out_ptr.dtype.element_ty))


def chunk_warps(cache_dtype: torch.dtype) -> int:
    """The chunk programs' warps for a cache of this dtype."""
    return INT8_CHUNK_WARPS if cache_dtype == torch.int8 else CHUNK_WARPS


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                     window: int, scale: float, order_inverse: torch.Tensor | None = None,
                     sliding_window: int | None = None, kv_scales: torch.Tensor | None = None,
                     chunk: int | None = None, num_warps: int | None = None,
                     token_scales: torch.Tensor | None = None,
                     key_channel_scales: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, Hq, D] (row b is cache slot b of ``keys``/``values`` [slots, Hkv, max_len, D]) attends to entries
    0..positions[b] (all < ``window``), only the last ``sliding_window`` of them when given -> [B, Hq * D] in
    q's dtype; with ``order_inverse``, channel c is written at column order_inverse[c] (the input order of the
    next matmul); ``kv_scales`` [2, Hkv] fp32: the K and V scales of an fp8 cache's heads (None: unscaled);
    ``token_scales`` [2, slots, Hkv, >= window] fp32: an int8 cache's K and V scale of each entry (slot b is
    row b, as in ``keys``; any strides; ``KVCache.window_token_scales``); ``key_channel_scales`` [Hkv, D] fp32:
    what an int8 cache's K is divided by per channel besides (``KVCache.key_channel_scales``; None: 1.0).
    ``chunk``/``num_warps``: the chunk programs' shape, CHUNK and ``chunk_warps`` unless given
    (``benchmarks/kernels/decode_attention_configs.py`` sweeps them)."""
    chunk, num_warps = chunk or CHUNK, num_warps or chunk_warps(keys.dtype)
    batch, heads, head_dim = q.shape
    chunks = triton.cdiv(window, chunk)
    m = torch.empty((batch, heads, chunks), device=q.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty((batch, heads, chunks, head_dim), device=q.device, dtype=torch.float32)
    if kv_scales is not None and token_scales is not None:
        raise ValueError("a cache has per-head (fp8) or per-token (int8) scales, not both")
    scale_arg = kv_scales if kv_scales is not None else token_scales if token_scales is not None else m
    scale_strides = token_scales.stride()[:3] if token_scales is not None else (0, 0, 0)
    if token_scales is not None and key_channel_scales is None:
        key_channel_scales = torch.ones((keys.shape[1], head_dim), device=q.device, dtype=torch.float32)
    channel_arg = key_channel_scales.contiguous() if token_scales is not None else m
    _chunk_kernel[(batch, heads, chunks)](
        q, keys, values, positions, m, l_sum, acc, scale_arg, channel_arg, chunks, keys.stride(0), keys.stride(1),
        keys.stride(2), scale, sliding_window or 0, keys.shape[1], *scale_strides, GROUP=heads // keys.shape[1],
        HEAD_DIM=head_dim, CHUNK=chunk, SLIDING=sliding_window is not None and sliding_window < window,
        SCALED=kv_scales is not None, TOKEN_SCALED=token_scales is not None,
        ASM=keys.dtype == torch.int8 and not INTERPRETING, num_warps=num_warps,
        LAUNCH_NEXT=LAUNCH_NEXT_AFTER_WAIT["chunk"], **overlap(q.device, batch),
    )
    out = torch.empty((batch, heads * head_dim), device=q.device, dtype=q.dtype)
    _combine_kernel[(batch, heads)](
        m, l_sum, acc, order_inverse if order_inverse is not None else out, out, chunks,
        HEAD_DIM=head_dim, BLOCK_C=triton.next_power_of_2(chunks), ORDERED=order_inverse is not None, num_warps=4,
        LAUNCH_NEXT=LAUNCH_NEXT_AFTER_WAIT["combine"], **overlap(q.device, batch),
    )
    return out
