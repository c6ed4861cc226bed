"""Triton kernels for 4-bit weights with 16-bit activations (w4a16), in our own GPU weight layout.

Layout of one Linear with K inputs, N outputs and group size G, input channels already in group order (act-order
undone): N is the contiguous axis, so a warp's loads are 128 contiguous bytes.
- ``packed`` int32 [K/8, N]: 8 codes of output n per word, at bits 4 * j (j = 0..7). With groups of 128 (or a
  multiple) the codes are spread: in each block of 128 inputs, word r holds inputs r, r + 16, ..., r + 112
  (``CODE_SPREAD``), so the 2..32-row kernel's dot j takes 16 contiguous inputs, which the GPU copies ahead
  asynchronously (faster than AutoGPTQ's word r = inputs 8r..8r + 7, whose dot j gathered every 8th input with
  synchronous loads: benchmarks/NOTES.md row 32); with smaller groups AutoGPTQ's order (spread 1).
  ``code_position_inputs`` maps one to the other;
- ``scales`` fp16 [K/G, N]; ``zeros`` uint8 [K/G, N] (true zero codes);
- W[n, k] = scales[k // G, n] * (code[k, n] - zeros[k // G, n]).
An output slice of a layer (q of a fused qkv) is a column slice: a strided view, no copy.

Two ways to multiply, picked by the number of activation rows M:
- ``matmul_partials`` (M <= ``FUSED_MAX_ROWS``: decoding, small batches): one kernel reads
  the 4-bit codes and never materialises W. K is split over several programs so that every SM has loads in
  flight; their partial sums are added by whoever consumes them (``sum_splits``, or a fused epilogue).
  - 1 row, ``_gemv_kernel``: a sum of products on the CUDA cores, K blocks of up to 512 inputs (whole groups,
    zero and scale loaded once per group and column) so each thread has several 16-byte loads in flight; for
    bf16 activations each word's 8 products are added in bf16x2 instructions (``_bf16_word_sums``: the fp32
    arithmetic bounded the kernel by instruction issue, not by memory; benchmarks/NOTES.md rows 26-27), the
    words in fp32.
    For a fused gate/up layer with no K split it can also apply SiLU·mul itself (``silu_mul_matmul``).
  - 2..32 rows, ``_swap_dot_kernel``: tensor cores on out.T = W @ x.T, so the weights take the MMA's long side
    and the rows pad only to 16; one dot per code position j of the packed words, or (config ``one_dot``) one
    dot over the 8 positions side by side. On Hopper, where the tuned table says so (config kernel
    "copy_warps"), the same sums from a Gluon kernel with a warp that only copies (``w4a16_copy_warps``).
  - 33..64 rows and groups under 128, ``_unpacked_dot_kernel``: the codes interleaved back to [K, N], one dot.
  A code becomes a float without an int-to-float instruction (quarter rate on the GPU; it bounded the first
  kernels): OR-ed into the mantissa of 2**23 it reads as 2**23 + code (``_code_in_mantissa``).
- ``dequantized_matmul`` (longer prompts): W is rebuilt, a bounded number of output columns at a time, into
  one scratch buffer per device and multiplied by cuBLAS; the dequantization is cheap next to the GEMM there.

The kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (the CPU correctness tests).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
import triton
import triton.language as tl

from worker.kernels import FP8_MAX, INTERPRETING, MAGIC, bf16_codes
from worker.kernels.launch import overlap, wait_for_previous_kernel

try:  # Gluon, Triton's tile language with warp specialization, as Triton 3.6 has it: else Triton's kernel serves
    from worker.kernels import w4a16_copy_warps as copy_warps
except Exception:  # missing, or renamed in a later Triton (an experimental API): never a reason not to start
    copy_warps = None

logger = logging.getLogger(__name__)

FUSED_MAX_ROWS = 64
CODE_SPREAD = 16  # inputs between a word's consecutive codes, groups of 128 or more (a word row per input of 16)
TUNED_CONFIGS = Path(__file__).with_name("w4a16_configs.json")
SCRATCH_ELEMENTS = 32 * 1024 * 1024  # 64 MiB of bf16 (32 of fp8): W is rebuilt at most this much at a time
_scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
TINY_FP8_SCALE = 1e-12  # an all-zero row or column keeps a usable scale
SILU_MUL_EPILOGUE = True  # ``silu_mul_matmul`` serves; switched off by the benchmark to time the two kernels


@triton.jit
def _unpacked_codes(w_ptr, stride_w, offs_n, mask_n, k0, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    SPREAD: tl.constexpr):
    """codes [BLOCK_K, BLOCK_N] (int32, 0..15): inputs k0 .. k0 + BLOCK_K of output columns offs_n (BLOCK_K a
    multiple of 8 * SPREAD)."""
    tl.static_assert(BLOCK_K % (8 * SPREAD) == 0)
    offs_word = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    words = tl.load(w_ptr + offs_word[:, None] * stride_w + offs_n[None, :], mask=mask_n[None, :], other=0)
    words = tl.reshape(words, (BLOCK_K // (8 * SPREAD), SPREAD, BLOCK_N))
    shifts = tl.arange(0, 8) * 4
    codes = (words[:, None, :, :] >> shifts[None, :, None, None]) & 0xF  # [block, j, word in block, n]
    return tl.reshape(codes, (BLOCK_K, BLOCK_N))


@triton.jit
def _code_in_mantissa(words, high, magic, j: tl.constexpr):
    """Code j of each word, left at its bit position within its 16-bit half and OR-ed into the mantissa of
    2**23: read as fp32 it is exactly 2**23 + code * 16 ** (j % 4). ``high`` is words >> 16. ``magic`` is
    2**23's bits: passed at run time (``MAGIC``, the one-row kernel) it sits in a register and the AND and
    the OR compile to one LOP3 instead of two; the dot kernel passes the literal (a register there needs more
    shared memory and was slower: benchmarks/NOTES.md row 23)."""
    if j < 4:
        field = (words & (0xF << (4 * j))) | magic
    else:
        field = (high & (0xF << (4 * (j - 4)))) | magic
    return field.to(tl.float32, bitcast=True)


@triton.jit
def _code_minus_zero(words, high, zeros, magic, j: tl.constexpr):
    """code j of each word minus its zero (0.0: the code itself), exact in fp32: one multiply-add undoes the
    offset and the position."""
    unit: tl.constexpr = 1.0 / (16 ** (j % 4))
    return _code_in_mantissa(words, high, magic, j) * unit - (zeros + 8388608.0 * unit)


@triton.jit
def _gemv_tile(w_ptr, s_ptr, z_ptr, x_ptr, k0, word, g, offs_n, mask_n, stride_w, stride_s, stride_z,
               GROUP: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    """The K block at k0 as loaded: words [GROUPS, ROWS, BLOCK_N], zero codes (uint8) and scales (fp16)
    [GROUPS, BLOCK_N], inputs x[k0 : k0 + BLOCK_K]."""
    at = (k0 // 8 + word)[:, :, None] * stride_w + offs_n[None, None, :]
    words = tl.load(w_ptr + at, mask=mask_n[None, None, :], other=0, eviction_policy="evict_first")
    group = ((k0 + g * ROWS * 8) // GROUP)[:, None]
    zeros = tl.load(z_ptr + group * stride_z + offs_n[None, :], mask=mask_n[None, :], other=0)
    scales = tl.load(s_ptr + group * stride_s + offs_n[None, :], mask=mask_n[None, :], other=0.0)
    return words, zeros, scales, tl.load(x_ptr + k0 + tl.arange(0, BLOCK_K))


@triton.jit
def _gemv_add(running, tile, magic, GROUPS: tl.constexpr, ROWS: tl.constexpr, SPREAD: tl.constexpr,
              BF16_WORDS: tl.constexpr, ASM: tl.constexpr):
    """running + a loaded K block's products (``_gemv_tile``), per element of the tile."""
    words, zeros, scales, x = tile
    xs = _inputs_by_code(x, GROUPS, ROWS, SPREAD)
    scales = scales.to(tl.float32)
    if BF16_WORDS:
        return running + _bf16_word_sums(words, _zero_magic(zeros, ASM), xs, ASM) * scales[:, None, :]
    return _gemv_block(running, words, zeros.to(tl.float32), scales, xs, magic)


@triton.jit
def _inputs_by_code(xs, GROUPS: tl.constexpr, ROWS: tl.constexpr, SPREAD: tl.constexpr):
    """The one-row kernel's K block of inputs (x[k0 : k0 + 8 * GROUPS * ROWS], one contiguous load) as 8 tensors
    [GROUPS, ROWS], the j-th what code j of each word row (g, r) multiplies, split in registers (one load per code
    and word row, 2 bytes each, was slower with the codes spread: benchmarks/NOTES.md rows 33-34)."""
    tl.static_assert(SPREAD == 1 or ROWS == SPREAD)
    if SPREAD == 1:
        xs = tl.reshape(xs, (GROUPS, ROWS, 2, 2, 2))  # [g, r, j // 4, j // 2 % 2, j % 2]
    else:
        xs = tl.reshape(tl.permute(tl.reshape(xs, (GROUPS, 8, ROWS)), (0, 2, 1)), (GROUPS, ROWS, 2, 2, 2))
    even, odd = tl.split(xs)
    x0_4, x2_6 = tl.split(even)
    x1_5, x3_7 = tl.split(odd)
    x0, x4 = tl.split(x0_4)
    x1, x5 = tl.split(x1_5)
    x2, x6 = tl.split(x2_6)
    x3, x7 = tl.split(x3_7)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _gemv_block(running, words, zeros, scales, xs, magic):
    """running + this K block's products: per word row sum_j code_j * x_j, less zero * sum_j x_j, times scale.
    xs: the inputs by code position (``_inputs_by_code``)."""
    high = (words.to(tl.uint32, bitcast=True) >> 16).to(tl.int32, bitcast=True)  # no sign to extend
    products = tl.zeros(running.shape, dtype=tl.float32)
    x_sum = tl.zeros(xs[0].shape, dtype=tl.float32)
    for j in tl.static_range(8):
        x_j = xs[j].to(tl.float32)
        x_sum += x_j
        products += _code_minus_zero(words, high, 0.0, magic, j) * x_j[:, :, None]
    return running + (products - zeros[:, None, :] * x_sum[:, :, None]) * scales[:, None, :]


@triton.jit
def _zero_magic(zeros, ASM: tl.constexpr):
    """128 + zero as bf16, from the uint8 zero codes by their bits: 128's (0x4300) with the zero in the low bits
    of its 7-bit mantissa (exact for zeros below 128). ASM: four zeros' bytes (one register) spread into two
    bf16x2 by PRMT, an OR each."""
    if ASM:
        return tl.inline_asm_elementwise(
            "prmt.b32 $0, $2, 0, 0x4140; prmt.b32 $1, $2, 0, 0x4342; or.b32 $0, $0, 0x43004300; "
            "or.b32 $1, $1, 0x43004300;", "=r,=r,r", [zeros], dtype=tl.bfloat16, is_pure=True, pack=4)
    return (zeros.to(tl.int16) | 0x4300).to(tl.bfloat16, bitcast=True)


_BF16_CODE_ASM = tl.constexpr(bf16_codes.CODE_MINUS_ZERO)
_BF16_WORD_ASM = tl.constexpr(bf16_codes.WORD_SUMS)


@triton.jit
def _bf16_code_minus_zero(words, zero_magic, j: tl.constexpr):
    """code j - zero of each element of words, an exact bf16 (``zero_magic``: 128 + zero in bf16)."""
    return tl.inline_asm_elementwise(_BF16_CODE_ASM[j], "=r,r,r,r", [words, zero_magic], dtype=tl.bfloat16,
                                     is_pure=True, pack=2)


@triton.jit
def _bf16_word_sums(words, zero_magic, xs, ASM: tl.constexpr):
    """Per element of words [GROUPS, ROWS, BLOCK_N]: sum_j (code_j - zero) * x_j over its word, each product
    added in bf16 with one rounding (a fused multiply-add), as fp32. ``zero_magic`` [GROUPS, BLOCK_N] is
    128 + zero in bf16; xs the inputs by code position. ASM: Hopper's bf16x2 instructions (``_BF16_WORD_ASM``);
    else the same arithmetic written out (Triton's interpreter runs no assembly)."""
    if ASM:
        return tl.inline_asm_elementwise(
            _BF16_WORD_ASM, "=r,=r,r,r,r,r,r,r,r,r,r,r,r",
            [words, zero_magic[:, None, :], xs[0][:, :, None], xs[1][:, :, None], xs[2][:, :, None],
             xs[3][:, :, None], xs[4][:, :, None], xs[5][:, :, None], xs[6][:, :, None], xs[7][:, :, None]],
            dtype=tl.float32, is_pure=True, pack=2)
    code_minus_zero_base = 128.0 - zero_magic.to(tl.float32)[:, None, :]
    acc = tl.zeros(words.shape, dtype=tl.float32)  # holds bf16 values
    for j in tl.static_range(8):
        code_minus_zero = ((words >> (4 * j)) & 0xF).to(tl.float32) + code_minus_zero_base
        x_j = xs[j].to(tl.float32)[:, :, None]
        acc = _round_to_bf16(acc + code_minus_zero * x_j)  # the product is exact: one rounding, as an fma
    return acc


@triton.jit
def _round_to_bf16(value):
    """fp32 -> the nearest bf16 (ties to even), kept in fp32; by its bits (the interpreter's own conversion
    does not round to nearest)."""
    bits = value.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return rounded.to(tl.float32, bitcast=True)


@triton.jit
def _split_blocks(k_blocks, axis: tl.constexpr):
    """This program's K blocks [first, end): the K split's programs (along grid ``axis``) share the layer's
    ``k_blocks`` as evenly as whole blocks allow. A split need not divide them, so it can be picked to fill the
    GPU with programs rather than from K's divisors (benchmarks/NOTES.md row 77)."""
    part, split = tl.program_id(axis), tl.num_programs(axis)
    return part * k_blocks // split, (part + 1) * k_blocks // split


@triton.jit
def _gemv_columns(N, BLOCK_N: tl.constexpr, SILU_MUL: tl.constexpr):
    """This program's BLOCK_N weight columns, and which are real. SILU_MUL: BLOCK_N / 2 gate columns and the
    same up columns N further on (N a multiple of BLOCK_N / 2: each half is contiguous and aligned, which the
    hints tell the compiler, so the tile is loaded as the plain kernel's is)."""
    if SILU_MUL:
        HALF: tl.constexpr = BLOCK_N // 2
        i = tl.arange(0, BLOCK_N)
        gate = tl.program_id(0) * HALF + i % HALF
        return tl.max_contiguous(tl.multiple_of(gate + (i // HALF) * N, HALF), HALF), gate < N
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_n, offs_n < N


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, N, stride_w, stride_s, stride_z, k_blocks, magic,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr, SPREAD: tl.constexpr,
    BF16_WORDS: tl.constexpr = False, ASM: tl.constexpr = True, PDL: tl.constexpr = False,
    SILU_MUL: tl.constexpr = False, STAGES: tl.constexpr = 1,
):
    """out[split, 0, n] = sum over this program's K blocks of x[k] * W[n, k], for one row x (group order).

    A K block is GROUPS tiles of ROWS word rows (ROWS * 8 = min(BLOCK_K, GROUP), or 8 * SPREAD with the codes
    spread: a group of 256 is two tiles): a [GROUPS, ROWS, BLOCK_N] tile, whose zeros and scales are loaded
    once per (tile, column); kept per element and summed once at the end. BF16_WORDS (x in bf16): each word's 8
    products summed in bf16x2 (``_bf16_word_sums``: fp32 arithmetic bounded the kernel by instruction issue;
    benchmarks/NOTES.md rows 26-27), else in fp32.

    STAGES (the config's ``num_stages``): with 2 or more, each K block's words, zeros, scales and inputs are
    copied into shared memory STAGES - 1 blocks ahead, asynchronously (Triton pipelines a loop's loads that feed no
    dot only when the loop asks for stages itself); with 1 they are loaded into registers as the block starts. Every
    shipped config loads as it starts: copied ahead, the step was slower on every layer, and on o faster or slower
    by conversation length (benchmarks/NOTES.md row 100), which the next experiment there looks into.

    SILU_MUL (one split only; W a fused gate/up layer of 2N outputs, gate first): out[0, n] = silu(gate) * up
    for N outputs, a program's tile holding BLOCK_N / 2 gate columns and the same up columns
    (``_gemv_columns``), so the activation needs no kernel of its own. gate and up are rounded to out's dtype
    first, as ``layer_kernels.silu_mul`` rounds the sums it reads."""
    wait_for_previous_kernel(PDL)
    GROUPS: tl.constexpr = BLOCK_K // (8 * ROWS)
    offs_n, mask_n = _gemv_columns(N, BLOCK_N, SILU_MUL)
    g = tl.arange(0, GROUPS)
    word = g[:, None] * ROWS + tl.arange(0, ROWS)[None, :]  # [GROUPS, ROWS]: the block's word rows
    running = tl.zeros((GROUPS, ROWS, BLOCK_N), dtype=tl.float32)
    first, end = _split_blocks(k_blocks, 1)
    for block in tl.range(first, end, num_stages=STAGES):  # STAGES > 1: later blocks copied ahead (cp.async)
        tile = _gemv_tile(w_ptr, s_ptr, z_ptr, x_ptr, block * BLOCK_K, word, g, offs_n, mask_n, stride_w, stride_s,
                          stride_z, GROUP, BLOCK_K, ROWS)
        running = _gemv_add(running, tile, magic, GROUPS, ROWS, SPREAD, BF16_WORDS, ASM)
    acc = tl.sum(tl.sum(running, axis=1), axis=0)
    if SILU_MUL:
        HALF: tl.constexpr = BLOCK_N // 2
        gate, up = tl.split(tl.permute(tl.reshape(acc.to(out_ptr.dtype.element_ty), (2, HALF)), (1, 0)))
        gate, up = gate.to(tl.float32), up.to(tl.float32)
        offs = tl.program_id(0) * HALF + tl.arange(0, HALF)
        tl.store(out_ptr + offs, (gate / (1.0 + tl.exp(-gate)) * up).to(out_ptr.dtype.element_ty), mask=offs < N)
    else:
        tl.store(out_ptr + tl.program_id(1) * N + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _code_tile(words, zeros, j: tl.constexpr, dtype: tl.constexpr, ASM: tl.constexpr):
    """code j - zero of each word of the tile, exact, in ``dtype`` (x's). ASM (bf16): built in bf16x2
    instructions, the same values in fewer instructions than through fp32 (benchmarks/NOTES.md row 29)."""
    if ASM and dtype == tl.bfloat16:
        return _bf16_code_minus_zero(words, (zeros + 128.0).to(tl.bfloat16), j)
    return _code_minus_zero(words, words >> 16, zeros, 0x4B000000, j).to(dtype)


@triton.jit
def _code_tiles_in_input_order(words, zeros, dtype: tl.constexpr, ASM: tl.constexpr):
    """The 8 code tiles of words [BLOCK_N, SPREAD] as one [BLOCK_N, 8 * SPREAD]: column SPREAD * j + r is code j of
    word r, the input it multiplies (the codes are spread)."""
    pairs = (tl.join(_code_tile(words, zeros, 0, dtype, ASM), _code_tile(words, zeros, 1, dtype, ASM)),
             tl.join(_code_tile(words, zeros, 2, dtype, ASM), _code_tile(words, zeros, 3, dtype, ASM)),
             tl.join(_code_tile(words, zeros, 4, dtype, ASM), _code_tile(words, zeros, 5, dtype, ASM)),
             tl.join(_code_tile(words, zeros, 6, dtype, ASM), _code_tile(words, zeros, 7, dtype, ASM)))
    tiles = tl.join(tl.join(pairs[0], pairs[1]), tl.join(pairs[2], pairs[3]))  # [n, r, a, b, c]: j = a + 2b + 4c
    return tl.reshape(tl.permute(tiles, (0, 4, 3, 2, 1)), (tiles.shape[0], 8 * tiles.shape[1]))


@triton.jit(do_not_specialize=["M"])  # any row count: one compiled program (no compile in the middle of serving)
def _swap_dot_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, stride_xm, stride_w, stride_s, stride_z, k_blocks,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPREAD: tl.constexpr,
    ASM: tl.constexpr = True, ONE_DOT: tl.constexpr = False,
):
    """out[split, m, n] for 2..32 rows, K blocks of 128 inside one group (GROUP a multiple of 128): the
    transposed product W @ x.T as 8 dots of K = 16, dot j over code j of each word r and its input: such groups
    always have their codes spread (BLOCK_K = 8 * SPREAD), so that is x[:, 16j + r], 16 contiguous inputs,
    copied ahead asynchronously. ASM (bf16 x): code - zero built in bf16x2 instructions, fewer than in fp32
    (benchmarks/NOTES.md row 29). ONE_DOT: the 8 code tiles side by side in the inputs' order and one dot of
    K = 128 over x[:, k0 : k0 + 128]: with 4 or 8 warps (Hopper's wgmma) its 8 steps are issued back to back
    and waited for once, where 8 dots wait for each (the same sums in the same order); with 2 warps (mma.sync)
    the whole tile in registers spills."""
    tl.static_assert(BLOCK_K == 8 * SPREAD)
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n, mask_m = offs_n < N, offs_m < M
    rows = tl.arange(0, BLOCK_K // 8)
    dtype: tl.constexpr = x_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    first, end = _split_blocks(k_blocks, 2)
    for block in range(first, end):
        k0 = block * BLOCK_K
        tile = offs_n[:, None] + (k0 // 8 + rows)[None, :] * stride_w
        words = tl.load(w_ptr + tile, mask=mask_n[:, None], other=0, eviction_policy="evict_first")
        group = k0 // GROUP
        zeros = tl.load(z_ptr + group * stride_z + offs_n[:, None], mask=mask_n[:, None], other=0).to(tl.float32)
        scales = tl.load(s_ptr + group * stride_s + offs_n[:, None], mask=mask_n[:, None], other=0.0).to(tl.float32)
        if ONE_DOT:
            inputs = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[None, :] * stride_xm + inputs[:, None], mask=mask_m[None, :], other=0.0)
            block = tl.dot(_code_tiles_in_input_order(words, zeros, dtype, ASM), x)
        else:
            block = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
            for j in tl.static_range(8):
                inputs = k0 + j * SPREAD + rows
                x_j = tl.load(x_ptr + offs_m[None, :] * stride_xm + inputs[:, None], mask=mask_m[None, :], other=0.0)
                block = tl.dot(_code_tile(words, zeros, j, dtype, ASM), x_j, block)
        acc += block * scales
    out = out_ptr + pid_k * M * N + offs_m[None, :] * N + offs_n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[None, :] & mask_n[:, None])


@triton.jit(do_not_specialize=["M"])
def _unpacked_dot_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, stride_xm, stride_w, stride_s, stride_z, k_blocks,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPREAD: tl.constexpr,
):
    """out[split, m, n] for 2..64 rows, K blocks inside one group: ``code - zero`` as a [BLOCK_K, BLOCK_N]
    tile of small exact integers, one dot with x, scaled once per block. (x already in group order:
    gathering it here through the act-order permutation was slower, the more rows the more so:
    benchmarks/NOTES.md row 9.)"""
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_n, mask_m = offs_n < N, offs_m < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first, end = _split_blocks(k_blocks, 2)
    for block in range(first, end):
        k0 = block * BLOCK_K
        codes = _unpacked_codes(w_ptr, stride_w, offs_n, mask_n, k0, BLOCK_N, BLOCK_K, SPREAD)
        group = k0 // GROUP
        zeros = tl.load(z_ptr + group * stride_z + offs_n, mask=mask_n, other=0).to(tl.int32)
        scales = tl.load(s_ptr + group * stride_s + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=mask_m[:, None], other=0.0)
        acc += tl.dot(x, (codes - zeros[None, :]).to(x.dtype)) * scales[None, :]
    out = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, numel, SPLIT: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    """out[i] = sum over s of part[s, i], in out's dtype (the split-K partial sums, added in fp32)."""
    wait_for_previous_kernel(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        total += tl.load(part_ptr + s * numel + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequantize_kernel(
    w_ptr, s_ptr, z_ptr, inv_ptr, out_ptr, col0, cols, stride_w, stride_s, stride_z, stride_ok, stride_oc,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPREAD: tl.constexpr, FP8: tl.constexpr,
    FP8_LIMIT: tl.constexpr,
):
    """out[k, c] = W[col0 + c, k] for c < cols, at out_ptr + k * stride_ok + c * stride_oc; FP8: times
    inv_ptr[col0 + c] (1 / the column's fp8 scale), clamped to e4m3's largest finite value."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < cols
    offs_n = col0 + offs_c
    k0 = pid_k * BLOCK_K
    codes = _unpacked_codes(w_ptr, stride_w, offs_n, mask_c, k0, BLOCK_N, BLOCK_K, SPREAD)
    group = k0 // GROUP
    zeros = tl.load(z_ptr + group * stride_z + offs_n, mask=mask_c, other=0).to(tl.int32)
    scales = tl.load(s_ptr + group * stride_s + offs_n, mask=mask_c, other=0.0).to(tl.float32)
    w = (codes - zeros[None, :]).to(tl.float32) * scales[None, :]
    if FP8:
        inverse = tl.load(inv_ptr + offs_n, mask=mask_c, other=1.0)
        w = tl.clamp(w * inverse[None, :], -FP8_LIMIT, FP8_LIMIT)  # the bound's rounding must not overflow to NaN
    out = out_ptr + (k0 + tl.arange(0, BLOCK_K))[:, None] * stride_ok + offs_c[None, :] * stride_oc
    tl.store(out, w.to(out_ptr.dtype.element_ty), mask=mask_c[None, :])


@triton.jit
def _fp8_rows_kernel(x_ptr, out_ptr, scale_ptr, K, stride_x, BLOCK: tl.constexpr, FP8_LIMIT: tl.constexpr,
                     TINY: tl.constexpr):
    """out[row] = x[row] / scale, scale = max |x[row]| / FP8_LIMIT (at least TINY), one program a row."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    largest = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_x + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        largest = tl.maximum(largest, tl.abs(x))
    scale = tl.maximum(tl.max(largest, axis=0) / FP8_LIMIT, TINY)
    tl.store(scale_ptr + row, scale)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_x + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        codes = tl.clamp(x / scale, -FP8_LIMIT, FP8_LIMIT)
        tl.store(out_ptr + row * K + k0 + offs, codes.to(out_ptr.dtype.element_ty), mask=k0 + offs < K)


def code_spread(group_size: int) -> int:
    """Inputs between a word's consecutive codes in this layout: ``CODE_SPREAD`` for groups of 128 or more."""
    return CODE_SPREAD if group_size % (8 * CODE_SPREAD) == 0 else 1


def code_position_inputs(in_features: int, group_size: int, device=None) -> torch.Tensor:
    """The input (of x) that each packed code position 8 * word + j multiplies: int64 [K]."""
    spread = code_spread(group_size)
    positions = torch.arange(in_features, device=device)
    word, j = positions // 8, positions % 8
    return (word // spread) * (8 * spread) + j * spread + word % spread


def pack_codes(codes: torch.Tensor, group_size: int) -> torch.Tensor:
    """codes int [K, N] (row k: input k, in group order) -> ``packed`` int32 [K/8, N] in this layout, a code
    position at a time (no 32- or 64-bit copy of the whole layer: loading stays under the serving peak)."""
    in_features, out_features = codes.shape
    inputs = code_position_inputs(in_features, group_size, codes.device).view(-1, 8)  # [word, j]
    packed = torch.zeros((in_features // 8, out_features), dtype=torch.int32, device=codes.device)
    for j in range(8):
        packed |= codes[inputs[:, j]].to(torch.int32) << (4 * j)
    return packed


def unpack_codes(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """The inverse of ``pack_codes``: int32 [K, N], row k the codes of input k."""
    inputs = code_position_inputs(packed.shape[0] * 8, group_size, packed.device).view(-1, 8)  # [word, j]
    codes = torch.empty((packed.shape[0] * 8, packed.shape[1]), dtype=torch.int32, device=packed.device)
    for j in range(8):
        codes[inputs[:, j]] = (packed >> (4 * j)) & 0xF
    return codes


def block_k_for(in_features: int, group_size: int) -> int | None:
    """The K block of the dot kernels: inside one group, dividing K, at least 16 (the MMA's K); None: no fit."""
    return next((b for b in (128, 64, 32, 16) if group_size % b == 0 and in_features % b == 0), None)


def gemv_block_k(in_features: int, group_size: int) -> int:
    """The one-row kernel's K block: as many inputs as divide K, up to 512; whole groups, or inside one."""
    return next(b for b in (512, 256, 128, 64, 32, 16)
                if in_features % b == 0 and (b % group_size == 0 or group_size % b == 0))


def layout_fits(in_features: int, group_size: int) -> bool:
    return in_features % group_size == 0 and block_k_for(in_features, group_size) is not None


def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def rows_bucket(rows: int) -> int:
    return 1 if rows == 1 else 16 if rows <= 16 else 32 if rows <= 32 else 64


def with_one_dot(config: dict) -> list[dict]:
    """``config``, and for the 2..32-row kernel with 4 or 8 warps (Hopper's wgmma) the same with ``one_dot``: the
    configs a sweep times. With 2 warps (mma.sync) one dot's whole tile in registers spills (benchmarks/NOTES.md
    row 67)."""
    if config["kernel"] == "swap" and config["num_warps"] % 4 == 0:
        return [config, dict(config, one_dot=True)]
    return [config]


def kernel_for(bucket: int, group_size: int) -> str:
    """Which fused kernel serves a rows bucket by default: "gemv" (1 row), "swap" (2..32 rows, groups of 128k)
    or "unpacked"."""
    if bucket == 1:
        return "gemv"
    return "swap" if bucket <= 32 and group_size % 128 == 0 else "unpacked"


def served_kernels(bucket: int, group_size: int, device: torch.device) -> tuple[str, ...]:
    """The kernels a tuned config may name for a rows bucket: ``kernel_for``'s, and on Hopper in place of "swap"
    the Gluon kernel with a warp that only copies (``w4a16_copy_warps``) once it has passed ``copy_warps_serve``."""
    kernel = kernel_for(bucket, group_size)
    return (kernel, "copy_warps") if kernel == "swap" and copy_warps_serve(device) else (kernel,)


@functools.cache  # once per device, at the first lookup (a warm-up run, before any CUDA graph is captured)
def copy_warps_serve(device: torch.device) -> bool:
    """Whether the copy-warp kernel runs on this device and gives the swap kernel's sums on a small layer: a GPU
    without TMA, or a Triton whose Gluon differs from the one it was written for, leaves it unserved."""
    if copy_warps is None or not copy_warps.serves_device(device):
        return False
    make = torch.Generator(device=device).manual_seed(0)
    packed = torch.randint(-2**31, 2**31 - 1, (32, 128), device=device, dtype=torch.int32, generator=make)
    scales = torch.rand(2, 128, device=device, generator=make).half() / 64
    zeros = torch.randint(0, 16, (2, 128), device=device, dtype=torch.uint8, generator=make)
    for rows in (9, 32):  # both tile heights the tables name (16 and 32 rows), the first one part-filled
        x = torch.randn(rows, 256, device=device, generator=make).bfloat16()
        config = dict(BLOCK_M=rows_bucket(rows), BLOCK_N=128, BLOCK_K=128, split=2, num_warps=4, num_stages=3)
        try:
            got = copy_warps.matmul_partials(x, packed, scales, zeros, 128,
                                             torch.empty(2, rows, 128, device=device), dict(config, maxnreg=128))
        except Exception as err:  # an API or compiler Gluon no longer has: the Triton kernel serves instead
            logger.warning("the copy-warp int4 kernel does not build here (%s: %s); the Triton kernel serves",
                           type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            return False
        want = matmul_partials(x, packed, scales, zeros, 128, dict(config, kernel="swap", num_warps=8))
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
            logger.warning("the copy-warp int4 kernel's sums differ from the Triton kernel's; the Triton kernel "
                           "serves")
            return False
    return True


@functools.cache
def tuned_configs(device_name: str) -> dict[str, dict]:
    """Configs measured by ``benchmarks/kernels/tune_in_step.py`` for this GPU model, keyed "bucket,N,K,G"."""
    return json.loads(TUNED_CONFIGS.read_text()).get(device_name, {}) if TUNED_CONFIGS.exists() else {}


def write_tuned_configs(device_name: str, table: dict[str, dict], target: Path = TUNED_CONFIGS) -> None:
    """Save one GPU model's configs (the benchmarks' sweeps) into a copy of the table, other GPUs' kept."""
    everything = json.loads(TUNED_CONFIGS.read_text()) if TUNED_CONFIGS.exists() else {}
    everything[device_name] = table
    target.write_text(json.dumps(everything, indent=1, sort_keys=True) + "\n")


def fused_config(rows: int, out_features: int, in_features: int, group_size: int, device: torch.device) -> dict:
    """Kernel, tile sizes, warps and K split: measured ones for known GPUs and shapes, else a rule of thumb."""
    return config_for_bucket(rows_bucket(rows), out_features, in_features, group_size, device)


@functools.cache  # looked up on every eager call: decided once per (rows bucket, shape, device)
def config_for_bucket(bucket: int, out_features: int, in_features: int, group_size: int, device: torch.device) -> dict:
    if device.type == "cuda":
        key = f"{bucket},{out_features},{in_features},{group_size}"
        tuned = tuned_configs(torch.cuda.get_device_name(device)).get(key)
        if tuned and tuned.get("kernel") in served_kernels(bucket, group_size, device):
            return dict(tuned)
    return default_config(bucket, out_features, in_features, group_size, device)


def default_config(bucket: int, out_features: int, in_features: int, group_size: int, device: torch.device) -> dict:
    """For rows in ``bucket`` (1, 16, 32 or 64): one row tile of BLOCK_M covers them all; K split until the
    GPU has about two programs per SM."""
    kernel = kernel_for(bucket, group_size)
    if kernel == "gemv":
        block_n, block_k, warps, stages = 64, gemv_block_k(in_features, group_size), 4, 1
    elif kernel == "swap":
        block_n, block_k, warps, stages = 128, 128, 8, 3
    else:
        block_n, block_k, warps, stages = 64, block_k_for(in_features, group_size), 4, 3
    programs, k_blocks = triton.cdiv(out_features, block_n), in_features // block_k
    split = next(s for s in range(1, k_blocks + 1) if k_blocks % s == 0 and (programs * s >= 2 * sm_count(device)
                                                                             or s == k_blocks))
    return dict(kernel=kernel, BLOCK_M=bucket, BLOCK_N=block_n, BLOCK_K=block_k, split=split, num_warps=warps,
                num_stages=stages)


def matmul_partials(x, packed, scales, zeros, group_size: int, config: dict | None = None) -> torch.Tensor:
    """x [M, K] (channels in group order, M <= FUSED_MAX_ROWS) @ W.T as ``split`` partial sums [split, M, N]:
    fp32 when split > 1, else x's dtype. ``sum_splits`` (or a fused epilogue) adds them."""
    rows, in_features = x.shape
    out_features = packed.shape[1]
    config = dict(config or fused_config(rows, out_features, in_features, group_size, x.device))
    if config["kernel"] == "copy_warps" and not copy_warps.fits(x, packed, scales, zeros, group_size):
        config = default_config(config["BLOCK_M"], out_features, in_features, group_size, x.device)
    split = config["split"]
    out = torch.empty((split, rows, out_features), device=x.device, dtype=x.dtype if split == 1 else torch.float32)
    if config["kernel"] == "copy_warps":
        return copy_warps.matmul_partials(x, packed, scales, zeros, group_size, out, config)
    kernel, block_m = config.pop("kernel"), config.pop("BLOCK_M")
    del config["split"]
    k_blocks = in_features // config["BLOCK_K"]
    strides = (packed.stride(0), scales.stride(0), zeros.stride(0), k_blocks)
    if kernel == "gemv":
        _launch_gemv(x, packed, scales, zeros, out, out_features, group_size, strides, config, split)
        return out
    grid = (triton.cdiv(out_features, config["BLOCK_N"]), triton.cdiv(rows, block_m), split)
    args = (x, packed, scales, zeros, out, rows, out_features, x.stride(0), *strides)
    spread = code_spread(group_size)
    if kernel == "swap":
        _swap_dot_kernel[grid](*args, GROUP=group_size, BLOCK_M=block_m, SPREAD=spread, ASM=not INTERPRETING,
                               ONE_DOT=config.pop("one_dot", False), **config)
    else:
        _unpacked_dot_kernel[grid](*args, GROUP=group_size, BLOCK_M=block_m, SPREAD=spread, **config)
    return out


def _launch_gemv(x, packed, scales, zeros, out, out_features: int, group_size: int, strides: tuple, config: dict,
                 split: int, silu_mul: bool = False) -> None:
    """The one-row kernel over ``out_features`` outputs (with ``silu_mul``, pairs of gate and up columns)."""
    columns = config["BLOCK_N"] // 2 if silu_mul else config["BLOCK_N"]  # a program's outputs
    grid = (triton.cdiv(out_features, columns), split)
    bf16_words = config.pop("bf16_words", True) and x.dtype == torch.bfloat16
    spread = code_spread(group_size)
    tile_inputs = group_size if spread == 1 else 8 * spread  # inputs a word-row tile covers: one group or block
    _gemv_kernel[grid](x, packed, scales, zeros, out, out_features, *strides, MAGIC, GROUP=group_size,
                       ROWS=min(config["BLOCK_K"], tile_inputs) // 8, SPREAD=spread, BF16_WORDS=bf16_words,
                       ASM=not INTERPRETING, STAGES=config["num_stages"], **config,
                       **overlap(x.device, x.shape[0]), SILU_MUL=silu_mul)


def silu_mul_matmul(x, packed, scales, zeros, group_size: int, config: dict | None = None) -> torch.Tensor | None:
    """silu(gate) * up [1, N/2] for one row x [1, K] (group order) through a fused gate/up layer of N outputs
    (gate the first N/2): the one-row kernel with the activation in its epilogue, one launch where the matmul
    and ``layer_kernels.silu_mul`` take two (the one-row step 0.3% faster on an H100: benchmarks/NOTES.md row
    92). None where that kernel cannot serve: more rows than one, a config with its K split (the activation
    needs the whole sums), or tiles that do not divide N."""
    rows, in_features = x.shape
    out_features = packed.shape[1]
    config = dict(config or fused_config(rows, out_features, in_features, group_size, x.device))
    width = out_features // 2
    if (not SILU_MUL_EPILOGUE or rows != 1 or config["kernel"] != "gemv" or config["split"] != 1
            or out_features % config["BLOCK_N"]):  # each half of a tile: whole, aligned columns
        return None
    out = torch.empty((1, width), device=x.device, dtype=x.dtype)
    for name in ("kernel", "BLOCK_M", "split"):
        del config[name]
    strides = (packed.stride(0), scales.stride(0), zeros.stride(0), in_features // config["BLOCK_K"])
    _launch_gemv(x, packed, scales, zeros, out, width, group_size, strides, config, 1, silu_mul=True)
    return out


def sum_splits(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[split, M, N] partial sums -> [M, N] in ``dtype`` (a view of the only split when there is one)."""
    if partials.shape[0] == 1 and partials.dtype == dtype:
        return partials[0]
    out = torch.empty(partials.shape[1:], device=partials.device, dtype=dtype)
    _sum_splits_kernel[(triton.cdiv(out.numel(), 1024),)](partials, out, out.numel(), SPLIT=partials.shape[0],
                                                          BLOCK=1024, **overlap(out.device, partials.shape[1]))
    return out


def dequantize_columns(packed, scales, zeros, group_size: int, col0: int, cols: int, out: torch.Tensor,
                       inverse_column_scales: torch.Tensor | None = None) -> torch.Tensor:
    """W[col0 : col0 + cols].T written into ``out`` (at least K * cols elements, the output dtype) as [K, cols].
    With ``inverse_column_scales`` (fp32 [N]) ``out`` is fp8: W / its column's scale, stored as W's rows
    ([cols, K]) and returned as their [K, cols] view, the column-major operand that fp8 GEMMs take."""
    in_features = packed.shape[0] * 8
    block_k = block_k_for(in_features, group_size)
    fp8 = inverse_column_scales is not None
    if fp8:
        w_t = out[: in_features * cols].view(cols, in_features).T
    else:
        w_t = out[: in_features * cols].view(in_features, cols)
    grid = (triton.cdiv(cols, 64), in_features // block_k)
    _dequantize_kernel[grid](packed, scales, zeros, inverse_column_scales if fp8 else scales, w_t, col0, cols,
                             packed.stride(0), scales.stride(0), zeros.stride(0), w_t.stride(0), w_t.stride(1),
                             GROUP=group_size, BLOCK_N=64, BLOCK_K=block_k, SPREAD=code_spread(group_size),
                             FP8=fp8, FP8_LIMIT=FP8_MAX, num_warps=4)
    return w_t


def scratch_for(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The device's buffer for rebuilt weights, one per element type (SCRATCH_ELEMENTS elements)."""
    buffer = _scratch.get((device, dtype))
    if buffer is None:
        buffer = _scratch[device, dtype] = torch.empty(SCRATCH_ELEMENTS, device=device, dtype=dtype)
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
        torch.mm(x, w_t, out=out[:, col0 : col0 + n])  # straight into its columns (cuBLAS's leading dimension)
    return out


def fp8_column_scales(scales: torch.Tensor, zeros: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """fp32 [N]: each output column's bound on |W| (its largest group scale times the farthest a code can sit
    from that group's zero) over FP8_MAX, so W / scale fits e4m3 whatever codes the column holds."""
    farthest = torch.maximum(zeros.float(), (2**bits - 1) - zeros.float())
    bound = (scales.float() * farthest).amax(dim=0)
    return (bound / FP8_MAX).clamp(min=TINY_FP8_SCALE)


def fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], fp32 [M, 1]): each row over its own scale, absmax / FP8_MAX. One kernel reads
    x twice (the second time from L2) and writes the codes once, where PyTorch's elementwise ops took ~9 passes
    over an fp32 copy, most of fp8 prefill's cost (benchmarks/NOTES.md row 71)."""
    rows, in_features = x.shape
    x = x if x.stride(1) == 1 else x.contiguous()
    x8 = torch.empty((rows, in_features), device=x.device, dtype=torch.float8_e4m3fn)
    scales = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    _fp8_rows_kernel[(rows,)](x, x8, scales, in_features, x.stride(0), BLOCK=min(4096, triton.next_power_of_2(
        in_features)), FP8_LIMIT=FP8_MAX, TINY=TINY_FP8_SCALE, num_warps=4)
    return x8, scales


def fp8_dequantized_matmul(x, packed, scales, zeros, group_size: int, column_scales: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ W.T -> [M, N] in x's dtype on fp8 tensor cores: x quantized a row at a time, W rebuilt in column
    chunks as fp8 over ``column_scales`` (``fp8_column_scales``), each chunk one scaled GEMM (twice bf16's rate)."""
    rows, in_features = x.shape
    out_features = packed.shape[1]
    x8, x_scales = fp8_rows(x)
    inverse = column_scales.reciprocal()
    scratch = scratch_for(x.device, torch.float8_e4m3fn)
    chunk = max(64, scratch.numel() // in_features // 64 * 64)
    out = torch.empty((rows, out_features), device=x.device, dtype=x.dtype)
    for col0 in range(0, out_features, chunk):
        n = min(chunk, out_features - col0)
        w_t = dequantize_columns(packed, scales, zeros, group_size, col0, n, scratch, inverse)
        w_scales = column_scales[None, col0 : col0 + n]
        out[:, col0 : col0 + n] = torch._scaled_mm(x8, w_t, scale_a=x_scales, scale_b=w_scales, out_dtype=x.dtype)
    return out


def fp8_serves(in_features: int, out_features: int) -> bool:
    """Scaled fp8 GEMMs (cuBLASLt) need both sides in multiples of 16."""
    return in_features % 16 == 0 and out_features % 16 == 0
