"""Triton kernels for 4-bit weights with 16-bit activations (w4a16), in our own GPU weight layout.

Layout of one Linear with K inputs, N outputs and group size G, input channels already in group order (AutoGPTQ's
own packing, with act-order undone): N is the contiguous axis, so a warp's loads are 128 contiguous bytes.
- ``packed`` int32 [K/8, N]: code k of output n sits in word [k // 8, n] at bits 4 * (k % 8);
- ``scales`` fp16 [K/G, N]; ``zeros`` uint8 [K/G, N] (true zero codes);
- W[n, k] = scales[k // G, n] * (code[k, n] - zeros[k // G, n]).
An output slice of a layer (q of a fused qkv) is a column slice: a strided view, no copy.

Two ways to multiply, picked by the number of activation rows M:
- ``fused_matmul`` (M <= ``FUSED_MAX_ROWS``: decoding, small batches): one kernel reads the 4-bit codes and
  never materialises W. Per K block (inside one group) it forms ``code - zero`` (small exact integers),
  multiplies them with x (``tl.dot`` from 2 rows, a plain reduction for 1) and scales the partial sums
  once. K is split over several programs (partial sums added after) so that every SM has loads in flight.
- ``dequantized_matmul`` (longer prompts): W is rebuilt, a bounded number of output columns at a time, into
  one scratch buffer per device and multiplied by cuBLAS; the dequantization is cheap next to the GEMM there.

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (the CPU correctness tests).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import triton
import triton.language as tl

FUSED_MAX_ROWS = 64
TUNED_CONFIGS = Path(__file__).with_name("w4a16_configs.json")
SCRATCH_ELEMENTS = 32 * 1024 * 1024  # 64 MiB of bf16: W is rebuilt at most this much at a time
_scratch: dict[torch.device, torch.Tensor] = {}


@triton.jit
def _unpacked_codes(w_ptr, stride_w, offs_n, mask_n, k0, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """codes [BLOCK_K, BLOCK_N] (int32, 0..15): inputs k0 .. k0 + BLOCK_K of output columns offs_n."""
    offs_word = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    words = tl.load(w_ptr + offs_word[:, None] * stride_w + offs_n[None, :], mask=mask_n[None, :], other=0)
    shifts = tl.arange(0, 8) * 4
    codes = (words[:, None, :] >> shifts[None, :, None]) & 0xF
    return tl.reshape(codes, (BLOCK_K, BLOCK_N))


@triton.jit
def _fused_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr,
    M, N, stride_xm, stride_w, stride_s, stride_z, iters_per_split,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    LATE_REDUCE: tl.constexpr = False,
):
    """out[split, m, n] = sum over this program's K blocks of x[m, k] * W[n, k] (x already in group order:
    gathering x here through the act-order permutation measured 1.5x slower at 1 row, 6x at 64).

    One row (BLOCK_M == 1) is a sum of products rather than an MMA; LATE_REDUCE keeps a [BLOCK_K, BLOCK_N]
    of running products and sums across K once at the end instead of once per block."""
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n, mask_m = offs_n < N, offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if LATE_REDUCE:
        running = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for it in range(0, iters_per_split):
        k0 = (pid_k * iters_per_split + it) * BLOCK_K
        codes = _unpacked_codes(w_ptr, stride_w, offs_n, mask_n, k0, BLOCK_N, BLOCK_K)
        group = k0 // GROUP
        zeros = tl.load(z_ptr + group * stride_z + offs_n, mask=mask_n, other=0).to(tl.int32)
        scales = tl.load(s_ptr + group * stride_s + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        centred = codes - zeros[None, :]  # exact integers in -15..15
        if LATE_REDUCE:
            running += centred.to(tl.float32) * tl.reshape(x, (BLOCK_K, 1)).to(tl.float32) * scales[None, :]
        elif BLOCK_M == 1:
            partial = tl.sum(centred.to(tl.float32) * tl.reshape(x, (BLOCK_K, 1)).to(tl.float32), axis=0)[None, :]
            acc += partial * scales[None, :]
        else:
            acc += tl.dot(x, centred.to(x.dtype)) * scales[None, :]
    if LATE_REDUCE:
        acc += tl.sum(running, axis=0)[None, :]
    out = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, numel, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = sum over s of part[s, i], in out's dtype (the split-K partial sums, added in fp32)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        total += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequantize_kernel(
    w_ptr, s_ptr, z_ptr, out_ptr, col0, cols, stride_w, stride_s, stride_z,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[k, c] = W[col0 + c, k] for c < cols (W transposed: [K, cols])."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < cols
    offs_n = col0 + offs_c
    k0 = pid_k * BLOCK_K
    codes = _unpacked_codes(w_ptr, stride_w, offs_n, mask_c, k0, BLOCK_N, BLOCK_K)
    group = k0 // GROUP
    zeros = tl.load(z_ptr + group * stride_z + offs_n, mask=mask_c, other=0).to(tl.int32)
    scales = tl.load(s_ptr + group * stride_s + offs_n, mask=mask_c, other=0.0).to(tl.float32)
    w = (codes - zeros[None, :]).to(tl.float32) * scales[None, :]
    out = out_ptr + (k0 + tl.arange(0, BLOCK_K))[:, None] * cols + offs_c[None, :]
    tl.store(out, w.to(out_ptr.dtype.element_ty), mask=mask_c[None, :])


def block_k_for(in_features: int, group_size: int) -> int | None:
    """The K block of the kernels: inside one group, dividing K, at least 16 (the MMA's K); None: no fit."""
    return next((b for b in (128, 64, 32, 16) if group_size % b == 0 and in_features % b == 0), None)


def layout_fits(in_features: int, group_size: int) -> bool:
    return in_features % group_size == 0 and block_k_for(in_features, group_size) is not None


def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def rows_bucket(rows: int) -> int:
    return 1 if rows == 1 else 16 if rows <= 16 else 32 if rows <= 32 else 64


@functools.cache
def tuned_configs(device_name: str) -> dict[str, dict]:
    """Configs measured by ``benchmarks/int4_kernels.py --sweep`` for this GPU model, keyed "rows,N,K"."""
    return json.loads(TUNED_CONFIGS.read_text()).get(device_name, {}) if TUNED_CONFIGS.exists() else {}


def fused_config(rows: int, out_features: int, in_features: int, block_k: int, device: torch.device) -> dict:
    """Tile sizes, warps and K split: measured ones for known GPUs and shapes, else a rule of thumb."""
    return config_for_bucket(rows_bucket(rows), out_features, in_features, block_k, device)


@functools.cache  # looked up on every eager call: decided once per (rows bucket, shape, device)
def config_for_bucket(block_m: int, out_features: int, in_features: int, block_k: int, device: torch.device) -> dict:
    if device.type == "cuda":
        key = f"{block_m},{out_features},{in_features},{block_k}"
        tuned = tuned_configs(torch.cuda.get_device_name(device)).get(key)
        if tuned:
            return dict(tuned)
    return default_config(block_m, out_features, in_features // block_k, device)


def default_config(block_m: int, out_features: int, k_blocks: int, device: torch.device) -> dict:
    """For rows in the bucket ``block_m`` (1, 16, 32 or 64): one row tile of BLOCK_M covers them all."""
    block_n = 128 if block_m == 1 else 64
    programs = triton.cdiv(out_features, block_n)
    split = 1
    while programs * split < 4 * sm_count(device) and k_blocks % (split * 2) == 0 and k_blocks // (split * 2) >= 2:
        split *= 2
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, split=split, num_warps=4, num_stages=3, LATE_REDUCE=False)


def fused_matmul(x, packed, scales, zeros, group_size: int, config: dict | None = None) -> torch.Tensor:
    """x [M, K] (fp16/bf16/fp32, channels in group order) @ W.T -> [M, N] in x's dtype, M <= FUSED_MAX_ROWS."""
    rows, in_features = x.shape
    out_features = packed.shape[1]
    block_k = block_k_for(in_features, group_size)
    k_blocks = in_features // block_k
    config = dict(config or fused_config(rows, out_features, in_features, block_k, x.device))
    split = config.pop("split")
    out_dtype = x.dtype if split == 1 else torch.float32
    out = torch.empty((split, rows, out_features), device=x.device, dtype=out_dtype)
    grid = (triton.cdiv(out_features, config["BLOCK_N"]), triton.cdiv(rows, config["BLOCK_M"]), split)
    _fused_kernel[grid](
        x, packed, scales, zeros, out,
        rows, out_features, x.stride(0), packed.stride(0), scales.stride(0), zeros.stride(0), k_blocks // split,
        GROUP=group_size, BLOCK_K=block_k, **config,
    )
    if split == 1:
        return out[0]
    summed = torch.empty((rows, out_features), device=x.device, dtype=x.dtype)
    _sum_splits_kernel[(triton.cdiv(summed.numel(), 1024),)](out, summed, summed.numel(), SPLIT=split, BLOCK=1024)
    return summed


def dequantize_columns(packed, scales, zeros, group_size: int, col0: int, cols: int, out: torch.Tensor) -> torch.Tensor:
    """W[col0 : col0 + cols].T written into ``out`` (at least K * cols elements, the output dtype) as [K, cols]."""
    in_features = packed.shape[0] * 8
    block_k = block_k_for(in_features, group_size)
    w_t = out[: in_features * cols].view(in_features, cols)
    grid = (triton.cdiv(cols, 64), in_features // block_k)
    _dequantize_kernel[grid](packed, scales, zeros, w_t, col0, cols, packed.stride(0), scales.stride(0),
                             zeros.stride(0), GROUP=group_size, BLOCK_N=64, BLOCK_K=block_k, num_warps=4)
    return w_t


def scratch_for(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    buffer = _scratch.get(device)
    if buffer is None or buffer.dtype != dtype:
        buffer = _scratch[device] = torch.empty(SCRATCH_ELEMENTS, device=device, dtype=dtype)
    return buffer


def dequantized_matmul(x, packed, scales, zeros, group_size: int) -> torch.Tensor:
    """x [M, K] @ W.T -> [M, N], W rebuilt in column chunks into the device's scratch buffer (cuBLAS GEMMs)."""
    rows, in_features = x.shape
    out_features = packed.shape[1]
    scratch = scratch_for(x.device, x.dtype)
    chunk = max(64, scratch.numel() // in_features // 64 * 64)
    if chunk >= out_features:  # the whole W at once: one GEMM straight into the result
        return x @ dequantize_columns(packed, scales, zeros, group_size, 0, out_features, scratch)
    out = torch.empty((rows, out_features), device=x.device, dtype=x.dtype)
    for col0 in range(0, out_features, chunk):
        n = min(chunk, out_features - col0)
        w_t = dequantize_columns(packed, scales, zeros, group_size, col0, n, scratch)
        out[:, col0 : col0 + n] = x @ w_t  # a chunk-sized product, copied into its columns
    return out
