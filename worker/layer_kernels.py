"""Triton kernels for the small steps between a layer's matmuls: each reads the split-K partial sums of the
matmul before it (``worker.w4a16_kernels.matmul_partials``: [split, rows, N], fp32, or one split in the model
dtype) and does the next step in the same pass, so a decode step launches a few kernels per layer, not ~25.

- ``add_rms_norm``: residual + sum of partials, RMSNorm; the normed output optionally already permuted into
  the next int4 layer's input order (act-order), so that layer skips its gather. Two kernels over column
  blocks (a one-row norm in a single program took 13 µs, 81 times a step).
- ``silu_mul``: silu(gate) * up from gate_up's partials.
- ``rotary_into_cache``: q/k/v from qkv's partials; rotary on q and k; k and v written into the KV cache at
  each row's position; q returned.

The math is transformers' Llama (``worker.layer_ops`` holds the PyTorch versions that serve the CPU and the
tests' reference), computed in fp32 with one rounding at each output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _summed(part_ptr, offs, mask, part_stride, SPLIT: tl.constexpr):
    total = tl.load(part_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for s in tl.static_range(1, SPLIT):
        total += tl.load(part_ptr + s * part_stride + offs, mask=mask, other=0.0).to(tl.float32)
    return total


@triton.jit
def _add_residual_kernel(h_ptr, part_ptr, h_out_ptr, sumsq_ptr, width, part_stride, SPLIT: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Program (row, block): h_out = h + sum of partials (rounded to h's dtype) on BLOCK columns, and their sum
    of squares into sumsq[row, block]. SPLIT == 0: no delta (h_out is h, nothing written)."""
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
                      BLOCKS_P2: tl.constexpr, ORDERED: tl.constexpr, BLOCK: tl.constexpr):
    """Program (row, block): x_out = RMSNorm(h) * w on BLOCK columns, column j holding column order[j] when
    ORDERED; the row's sum of squares is the sum of sumsq[row, :BLOCKS]."""
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


NORM_BLOCK = 256  # columns per program: a one-row norm spreads over ~20 SMs instead of waiting on one


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
    sumsq = torch.empty((rows, blocks), device=h.device, dtype=torch.float32)
    _add_residual_kernel[(rows, blocks)](
        h2, delta if delta is not None else h2, h_out, sumsq, width, h2.numel(),
        SPLIT=0 if delta is None else delta.shape[0], BLOCK=NORM_BLOCK, num_warps=2,
    )
    _rms_scale_kernel[(rows, blocks)](
        h_out, sumsq, weight, order if order is not None else h2, x_out, width, eps, BLOCKS=blocks,
        BLOCKS_P2=triton.next_power_of_2(blocks), ORDERED=order is not None, BLOCK=NORM_BLOCK, num_warps=2,
    )
    return h_out.view(h.shape), x_out.view(h.shape)


@triton.jit
def _silu_mul_kernel(part_ptr, out_ptr, width, part_stride, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
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
    _silu_mul_kernel[(rows, triton.cdiv(both // 2, 1024))](partials, out, both // 2, rows * both, SPLIT=split,
                                                          BLOCK=1024, num_warps=4)
    return out


@triton.jit(do_not_specialize=["length", "first_slot"])  # one program for any prompt length and slot
def _rotary_into_cache_kernel(
    part_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr,
    part_stride, length, first_slot, stride_slot, stride_head, stride_pos,
    Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK: tl.constexpr, FP8: tl.constexpr,
):
    """Program (row, head) of qkv [rows, (Q_HEADS + 2 KV_HEADS) * HEAD_DIM]: rotary on q and k heads
    (rotate-half convention), q into q_ptr [rows, Q_HEADS, HEAD_DIM], k and v into the cache of slot
    first_slot + row // length at position pos[row]."""
    row, head = tl.program_id(0), tl.program_id(1)
    d = tl.arange(0, BLOCK)
    mask = d < HEAD_DIM
    half: tl.constexpr = HEAD_DIM // 2
    base = row * (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM + head * HEAD_DIM
    x = _summed(part_ptr, base + d, mask, part_stride, SPLIT)
    x = x.to(q_ptr.dtype.element_ty).to(tl.float32)  # transformers rounds qkv to the model dtype first
    if head < Q_HEADS + KV_HEADS:
        partner = tl.where(d < half, d + half, d - half)
        other = _summed(part_ptr, base + partner, mask, part_stride, SPLIT)
        other = other.to(q_ptr.dtype.element_ty).to(tl.float32)
        cos = tl.load(cos_ptr + row * HEAD_DIM + d, mask=mask, other=0.0).to(tl.float32)
        sin = tl.load(sin_ptr + row * HEAD_DIM + d, mask=mask, other=0.0).to(tl.float32)
        x = x * cos + tl.where(d < half, -other, other) * sin
    if head < Q_HEADS:
        tl.store(q_ptr + (row * Q_HEADS + head) * HEAD_DIM + d, x.to(q_ptr.dtype.element_ty), mask=mask)
    else:
        position = tl.load(pos_ptr + row)
        slot = first_slot + row // length
        if FP8:
            x = tl.minimum(tl.maximum(x, -448.0), 448.0)
        if head < Q_HEADS + KV_HEADS:
            at = k_cache_ptr + slot * stride_slot + (head - Q_HEADS) * stride_head + position * stride_pos + d
            tl.store(at, x.to(k_cache_ptr.dtype.element_ty), mask=mask)
        else:
            at = v_cache_ptr + slot * stride_slot + (head - Q_HEADS - KV_HEADS) * stride_head + position * stride_pos + d
            tl.store(at, x.to(v_cache_ptr.dtype.element_ty), mask=mask)


def rotary_into_cache(partials, cos, sin, positions, keys, values, first_slot: int, length: int, q_heads: int,
                      kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """partials [split, B*T, (q + 2 kv heads) * D] of qkv; cos/sin [B*T, D]; positions [B*T] (row b*T + t is
    slot first_slot + b; T = ``length``); keys/values: one layer's cache [slots, kv_heads, max_len, D].
    Writes k and v; returns q [B*T, q_heads, D] in ``dtype``."""
    split, rows, _ = partials.shape
    head_dim = keys.shape[-1]
    q = torch.empty((rows, q_heads, head_dim), device=partials.device, dtype=dtype)
    _rotary_into_cache_kernel[(rows, q_heads + 2 * kv_heads)](
        partials, cos, sin, positions, q, keys, values, partials[0].numel(), length, first_slot,
        keys.stride(0), keys.stride(1), keys.stride(2),
        Q_HEADS=q_heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, SPLIT=split, BLOCK=triton.next_power_of_2(head_dim),
        FP8=keys.dtype == torch.float8_e4m3fn, num_warps=1,
    )
    return q
