"""Triton kernels for the small steps between a layer's matmuls: each reads the split-K partial sums of the
matmul before it (``worker.kernels.w4a16.matmul_partials``: [split, rows, N], fp32, or one split in the model
dtype) and does the next step in the same pass, so a decode step launches a few kernels per layer, not ~25.

- ``add_rms_norm``: residual + sum of partials, RMSNorm; the normed output optionally already permuted into
  the next int4 layer's input order (act-order), so that layer skips its gather. Two kernels over column
  blocks (a one-row norm in a single program kept one SM busy and the rest waiting: benchmarks/NOTES.md
  rows 18-19).
- ``silu_mul``: silu(gate) * up from gate_up's partials (a one-row step whose gate/up config has no K split does
  it inside the matmul instead: ``w4a16.silu_mul_matmul``).
- ``rotary_into_cache``: q/k/v from qkv's partials; rotary on q and k; k and v written into the KV cache at
  each row's position; q returned.

The math is transformers' Llama (``worker.inference.layer_ops`` holds the PyTorch versions that serve the CPU and the
tests' reference), computed in fp32 with one rounding at each output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from worker.kernels import FP8_MAX
from worker.kernels.kv_quant import INT8_MAX, TINY_SCALE, KVQuant
from worker.kernels.launch import overlap, wait_for_previous_kernel

# the cache formats' constants (kv_quant's, and e4m3's largest from worker.kernels) as the kernels see them: one place
# for each value, which the PyTorch path uses too
CODE_MAX = tl.constexpr(INT8_MAX)
E4M3_MAX = tl.constexpr(FP8_MAX)
ZERO_VECTOR_SCALE = tl.constexpr(TINY_SCALE)


@triton.jit
def _summed(part_ptr, offs, mask, part_stride, SPLIT: tl.constexpr):
    total = tl.load(part_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for s in tl.static_range(1, SPLIT):
        total += tl.load(part_ptr + s * part_stride + offs, mask=mask, other=0.0).to(tl.float32)
    return total


@triton.jit
def _add_residual_kernel(h_ptr, part_ptr, h_out_ptr, sumsq_ptr, width, part_stride, SPLIT: tl.constexpr,
                         BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """Program (row, block): h_out = h + sum of partials (rounded to h's dtype) on BLOCK columns, and their sum
    of squares into sumsq[row, block]. SPLIT == 0: no delta (h_out is h, nothing written)."""
    wait_for_previous_kernel(PDL)
    row, block = tl.program_id(0), tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    h = tl.load(h_ptr + row * width + offs, mask=mask, other=0.0)
    if SPLIT > 0:
        h = (h.to(tl.float32) + _summed(part_ptr, row * width + offs, mask, part_stride, SPLIT)).to(h.dtype)
        tl.store(h_out_ptr + row * width + offs, h, mask=mask)
    hf = h.to(tl.float32)
    tl.store(sumsq_ptr + row * tl.num_programs(1) + block, tl.sum(hf * hf, axis=0))


@triton.jit
def _rms_scale_kernel(h_ptr, sumsq_ptr, w_ptr, order_ptr, x_out_ptr, width, eps, BLOCKS: tl.constexpr,
                      BLOCKS_P2: tl.constexpr, ORDERED: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """Program (row, block): x_out = RMSNorm(h) * w on BLOCK columns, column j holding column order[j] when
    ORDERED; the row's sum of squares is the sum of sumsq[row, :BLOCKS]."""
    wait_for_previous_kernel(PDL)
    row, block = tl.program_id(0), tl.program_id(1)
    parts = tl.arange(0, BLOCKS_P2)
    sumsq = tl.sum(tl.load(sumsq_ptr + row * BLOCKS + parts, mask=parts < BLOCKS, other=0.0), axis=0)
    scale = 1.0 / tl.sqrt(sumsq / width + eps)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    cols = tl.load(order_ptr + offs, mask=mask, other=0) if ORDERED else offs
    hf = tl.load(h_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    normed = (hf * scale).to(x_out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_out_ptr + row * width + offs, (normed * weight).to(x_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_rms_norm_row_kernel(h_ptr, part_ptr, h_out_ptr, w_ptr, order_ptr, x_out_ptr, width, part_stride, eps,
                             SPLIT: tl.constexpr, ORDERED: tl.constexpr, BLOCK: tl.constexpr):
    """Program (row): both passes of ``add_rms_norm`` on the whole row (BLOCK >= width columns), for many rows
    (a prefill), where one program per row already fills the GPU. With ORDERED, the row is read back in
    ``order`` from where this program just wrote it (after a barrier: other threads wrote those columns)."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    h = tl.load(h_ptr + row * width + offs, mask=mask, other=0.0)
    source = h_ptr
    if SPLIT > 0:
        h = (h.to(tl.float32) + _summed(part_ptr, row * width + offs, mask, part_stride, SPLIT)).to(h.dtype)
        tl.store(h_out_ptr + row * width + offs, h, mask=mask)
        source = h_out_ptr
    hf = h.to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / width + eps)
    cols = offs
    if ORDERED:
        tl.debug_barrier()
        cols = tl.load(order_ptr + offs, mask=mask, other=0)
        hf = tl.load(source + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    normed = (hf * scale).to(x_out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_out_ptr + row * width + offs, (normed * weight).to(x_out_ptr.dtype.element_ty), mask=mask)


NORM_BLOCK = 256  # columns per program: a one-row norm spreads over ~20 SMs instead of waiting on one
# From this many rows (a prefill), add+RMSNorm takes one program a row and the rotary 8 heads a program: with
# thousands of rows the decode steps' smaller pieces (column blocks, one head a program) moved the bytes well
# below the GPU's bandwidth (benchmarks/NOTES.md row 42).
PREFILL_ROWS = 64


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                 order: torch.Tensor | None = None):
    """(h + delta, RMSNorm of it): h [..., W]; delta None or partial sums [split, rows, W]; x's columns in
    ``order`` when given. With delta None, h itself comes back. Two passes over column blocks: the residual
    add (and each block's sum of squares), then the scaling (reading the whole row's sum)."""
    width = h.shape[-1]
    h2 = h.reshape(-1, width)
    rows, blocks = h2.shape[0], triton.cdiv(width, NORM_BLOCK)
    h_out = torch.empty_like(h2) if delta is not None else h2
    x_out = torch.empty_like(h2)
    if rows >= PREFILL_ROWS:
        _add_rms_norm_row_kernel[(rows,)](
            h2, delta if delta is not None else h2, h_out, weight, order if order is not None else h2, x_out, width,
            h2.numel(), eps, SPLIT=0 if delta is None else delta.shape[0], ORDERED=order is not None,
            BLOCK=triton.next_power_of_2(width), num_warps=8,
        )
        return h_out.view(h.shape), x_out.view(h.shape)
    sumsq = torch.empty((rows, blocks), device=h.device, dtype=torch.float32)
    _add_residual_kernel[(rows, blocks)](
        h2, delta if delta is not None else h2, h_out, sumsq, width, h2.numel(),
        SPLIT=0 if delta is None else delta.shape[0], BLOCK=NORM_BLOCK, num_warps=2, **overlap(h.device, rows),
    )
    _rms_scale_kernel[(rows, blocks)](
        h_out, sumsq, weight, order if order is not None else h2, x_out, width, eps, BLOCKS=blocks,
        BLOCKS_P2=triton.next_power_of_2(blocks), ORDERED=order is not None, BLOCK=NORM_BLOCK, num_warps=2,
        **overlap(h.device, rows),
    )
    return h_out.view(h.shape), x_out.view(h.shape)


SILU_BLOCK = 1024  # columns per program of silu(gate) * up; 256 and 512 within 0.4% (benchmarks/NOTES.md row 91)


@triton.jit
def _silu_mul_kernel(part_ptr, out_ptr, width, part_stride, SPLIT: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr = False):
    wait_for_previous_kernel(PDL)
    row, block = tl.program_id(0), tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < width
    gate = _summed(part_ptr, row * 2 * width + offs, mask, part_stride, SPLIT)
    up = _summed(part_ptr, row * 2 * width + width + offs, mask, part_stride, SPLIT)
    gate = gate.to(out_ptr.dtype.element_ty).to(tl.float32)  # transformers rounds gate_up before the activation
    up = up.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * width + offs, (gate / (1.0 + tl.exp(-gate)) * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_mul(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """partials [split, rows, 2W] of gate (first W) and up -> silu(gate) * up [rows, W] in ``dtype``."""
    split, rows, both = partials.shape
    out = torch.empty((rows, both // 2), device=partials.device, dtype=dtype)
    _silu_mul_kernel[(rows, triton.cdiv(both // 2, SILU_BLOCK))](partials, out, both // 2, rows * both, SPLIT=split,
                                                                BLOCK=SILU_BLOCK, num_warps=4,
                                                                **overlap(out.device, rows))
    return out


@triton.jit
def _int8_codes(y1, y2, channels1, channels2, store_dtype: tl.constexpr):
    """Each row's int8 codes and scale (kv_quant.quantize_per_token's math) from its two halves y1, y2 [HEADS,
    half] (fp32): rounded to the model's dtype first, as the PyTorch path quantizes what it stores, then divided
    by the channel scales of each half (K's calibrated ones, 1.0 for V) with IEEE rounding, as PyTorch divides."""
    y1 = tl.math.div_rn(y1.to(store_dtype).to(tl.float32), channels1)
    y2 = tl.math.div_rn(y2.to(store_dtype).to(tl.float32), channels2)
    absmax = tl.maximum(tl.max(tl.abs(y1), axis=1), tl.max(tl.abs(y2), axis=1))
    scale = tl.maximum(absmax / CODE_MAX, ZERO_VECTOR_SCALE)  # a zero row: codes 0, no division by 0
    c1 = tl.minimum(tl.maximum(tl.floor(y1 / scale[:, None] + 0.5), -CODE_MAX), CODE_MAX)
    c2 = tl.minimum(tl.maximum(tl.floor(y2 / scale[:, None] + 0.5), -CODE_MAX), CODE_MAX)
    return c1, c2, scale


@triton.jit(do_not_specialize=["length", "first_slot"])  # one program for any prompt length and slot
def _rotary_into_cache_kernel(
    part_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr, scale_ptr, channel_ptr, slot_ptr,
    part_stride, length, first_slot, stride_slot, stride_head, stride_pos,
    scale_stride_kv, scale_stride_slot, scale_stride_head,
    Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
    HEADS: tl.constexpr, FP8: tl.constexpr, INT8: tl.constexpr, SLOTS: tl.constexpr, ALL_HEADS: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program (row, block of HEADS heads) of qkv [rows, (Q_HEADS + 2 KV_HEADS) * HEAD_DIM]: rotary on q and k
    heads (rotate-half convention: each head's two halves), q into q_ptr [rows, Q_HEADS, HEAD_DIM], k and v
    into the cache of slot first_slot + row // length at position pos[row]. FP8: k and v divided by their
    head's scale first (scale_ptr [2 * KV_HEADS]: K's, then V's; so cache head j of both is scale_ptr[head -
    Q_HEADS]) and clamped to e4m3's range. INT8: each k head divided by its channel scales (channel_ptr
    [KV_HEADS, HEAD_DIM]) first; each k and v head stored as int8 codes of its own scale absmax / 127, written to
    scale_ptr [2 (K, V), slots, KV_HEADS, max_len] (strides scale_stride_*) at its slot, head and position: the
    program holds each head's whole vector, so the absmax is its own. SLOTS: the slot of row r's sequence is
    slot_ptr[r // length] instead (a captured prefill's input), and a negative one writes nothing (a padding
    sequence). ALL_HEADS: q_ptr is [rows, Q_HEADS + 2 KV_HEADS, HEAD_DIM] and takes every head, k rotated and v
    as computed (before any cache scaling): whole prompts attend to their own keys without reading the cache."""
    wait_for_previous_kernel(PDL)
    row, block = tl.program_id(0), tl.program_id(1)
    half: tl.constexpr = HEAD_DIM // 2
    all_heads: tl.constexpr = Q_HEADS + 2 * KV_HEADS
    head = block * HEADS + tl.arange(0, HEADS)
    d = tl.arange(0, half)
    valid = (head < all_heads)[:, None]
    at = row * all_heads * HEAD_DIM + head[:, None] * HEAD_DIM + d[None, :]
    # transformers rounds qkv to the model dtype before the rotary
    x1 = _summed(part_ptr, at, valid, part_stride, SPLIT).to(q_ptr.dtype.element_ty).to(tl.float32)
    x2 = _summed(part_ptr, at + half, valid, part_stride, SPLIT).to(q_ptr.dtype.element_ty).to(tl.float32)
    cos1 = tl.load(cos_ptr + row * HEAD_DIM + d).to(tl.float32)[None, :]
    cos2 = tl.load(cos_ptr + row * HEAD_DIM + half + d).to(tl.float32)[None, :]
    sin1 = tl.load(sin_ptr + row * HEAD_DIM + d).to(tl.float32)[None, :]
    sin2 = tl.load(sin_ptr + row * HEAD_DIM + half + d).to(tl.float32)[None, :]
    rotated = (head < Q_HEADS + KV_HEADS)[:, None]
    y1 = tl.where(rotated, x1 * cos1 - x2 * sin1, x1)
    y2 = tl.where(rotated, x2 * cos2 + x1 * sin2, x2)
    out_heads: tl.constexpr = all_heads if ALL_HEADS else Q_HEADS
    is_q = valid & (head < out_heads)[:, None]
    q_at = q_ptr + (row * out_heads + head[:, None]) * HEAD_DIM + d[None, :]
    tl.store(q_at, y1.to(q_ptr.dtype.element_ty), mask=is_q)
    tl.store(q_at + half, y2.to(q_ptr.dtype.element_ty), mask=is_q)
    is_kv = (head >= Q_HEADS) & (head < all_heads)  # [HEADS]: the heads written into the cache
    if FP8:
        scale = tl.load(scale_ptr + head - Q_HEADS, mask=is_kv, other=1.0)[:, None]
        y1 = tl.minimum(tl.maximum(y1 / scale, -E4M3_MAX), E4M3_MAX)  # a division, as KVCache.write's: same bytes
        y2 = tl.minimum(tl.maximum(y2 / scale, -E4M3_MAX), E4M3_MAX)
    if SLOTS:
        slot = tl.load(slot_ptr + row // length)
        is_kv = is_kv & ((head * 0 + slot) >= 0)  # [HEADS] (a scalar mask breaks the interpreter)
    else:
        slot = first_slot + row // length
    position = tl.load(pos_ptr + row)
    if INT8:
        is_k_head = ((head >= Q_HEADS) & (head < Q_HEADS + KV_HEADS))[:, None]
        channels = channel_ptr + (head - Q_HEADS)[:, None] * HEAD_DIM + d[None, :]
        channels1 = tl.load(channels, mask=is_k_head, other=1.0)
        channels2 = tl.load(channels + half, mask=is_k_head, other=1.0)
        y1, y2, token_scale = _int8_codes(y1, y2, channels1, channels2, q_ptr.dtype.element_ty)
        kv_head = tl.where(head >= Q_HEADS + KV_HEADS, head - Q_HEADS - KV_HEADS, head - Q_HEADS)
        scale_at = ((head >= Q_HEADS + KV_HEADS).to(tl.int32) * scale_stride_kv + slot * scale_stride_slot
                    + kv_head * scale_stride_head + position)
        tl.store(scale_ptr + scale_at, token_scale, mask=is_kv)
    slot_at = slot * stride_slot + position * stride_pos + d[None, :]
    is_k = valid & (is_kv & (head < Q_HEADS + KV_HEADS))[:, None]
    k_at = k_cache_ptr + slot_at + (head - Q_HEADS)[:, None] * stride_head
    tl.store(k_at, y1.to(k_cache_ptr.dtype.element_ty), mask=is_k)
    tl.store(k_at + half, y2.to(k_cache_ptr.dtype.element_ty), mask=is_k)
    is_v = valid & (is_kv & (head >= Q_HEADS + KV_HEADS))[:, None]
    v_at = v_cache_ptr + slot_at + (head - Q_HEADS - KV_HEADS)[:, None] * stride_head
    tl.store(v_at, y1.to(v_cache_ptr.dtype.element_ty), mask=is_v)
    tl.store(v_at + half, y2.to(v_cache_ptr.dtype.element_ty), mask=is_v)


def rotary_into_cache(partials, cos, sin, positions, keys, values, first_slot: int, length: int, q_heads: int,
                      kv_heads: int, dtype: torch.dtype, scales: torch.Tensor | None = None,
                      token_scales: torch.Tensor | None = None,
                      key_channel_scales: torch.Tensor | None = None,
                      slots: torch.Tensor | None = None, all_heads: bool = False) -> torch.Tensor:
    """partials [split, B*T, (q + 2 kv heads) * D] of qkv; cos/sin [B*T, D]; positions [B*T] (row b*T + t is
    slot first_slot + b, or slots[b] when ``slots`` [B] (int64, on the device) is given, where -1 writes
    nothing; T = ``length``); keys/values: one layer's cache [slots, kv_heads, max_len, D];
    scales: that layer's [2, kv_heads] fp32 (K, V) an fp8 cache stores values divided by (None: 1.0);
    token_scales: an int8 cache's layer of ``KVCache.token_scales`` [2, slots, kv_heads, max_len] (fp32), where
    each written vector's scale goes; key_channel_scales: its layer of ``KVCache.key_channel_scales`` [kv_heads, D]
    (fp32, None: 1.0). Writes k and v; returns q [B*T, q_heads, D] in ``dtype`` (``all_heads``: q, then k rotated
    and v as computed [B*T, q_heads + 2 kv_heads, D])."""
    split, rows, _ = partials.shape
    head_dim = keys.shape[-1]
    heads = 8 if rows >= PREFILL_ROWS else 1
    q = torch.empty((rows, q_heads + 2 * kv_heads if all_heads else q_heads, head_dim), device=partials.device,
                    dtype=dtype)
    quant = KVQuant.of(keys.dtype)
    fp8, int8 = quant is KVQuant.PER_HEAD, quant is KVQuant.PER_TOKEN
    if scales is None and fp8:
        scales = torch.ones((2, kv_heads), device=keys.device, dtype=torch.float32)
    if int8 and token_scales is None:
        raise ValueError("an int8 cache needs its token_scales")
    if int8 and key_channel_scales is None:
        key_channel_scales = torch.ones((kv_heads, head_dim), device=keys.device, dtype=torch.float32)
    scale_arg = scales if fp8 else token_scales if int8 else q
    scale_strides = token_scales.stride()[:3] if int8 else (0, 0, 0)
    _rotary_into_cache_kernel[(rows, triton.cdiv(q_heads + 2 * kv_heads, heads))](
        partials, cos, sin, positions, q, keys, values, scale_arg,
        key_channel_scales.contiguous() if int8 else scale_arg, positions if slots is None else slots,
        partials[0].numel(), length, first_slot, keys.stride(0), keys.stride(1), keys.stride(2), *scale_strides,
        Q_HEADS=q_heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, SPLIT=split, HEADS=heads,
        FP8=fp8, INT8=int8, SLOTS=slots is not None, ALL_HEADS=all_heads, num_warps=4 if heads > 1 else 1,
        **overlap(q.device, rows),
    )
    return q
