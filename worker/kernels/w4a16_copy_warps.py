"""The 17..32-row int4 matmul on Hopper (sm_90) with a warp that only copies: Gluon, served where the tuned table
picks it (kernel "copy_warps"), in the layout and with the partial sums of ``w4a16.matmul_partials``.

Triton's own kernel for these rows (``w4a16._swap_dot_kernel``) is bound by latency with few warps resident: each
K block is a chain of waiting for its copy, a barrier, 8 dots and another barrier (benchmarks/NOTES.md row 77),
and Triton 3.6 builds neither a warp-specialized nor a better TMA form of it (row 79). Here one warp does
nothing but copy the next K blocks (words, x, zeros, scales: each tile one TMA copy into a ring of STAGES
buffers, an mbarrier each way) while a warpgroup turns codes into bf16 (``bf16_codes``) and issues a block's 8
wgmma back to back, waiting once. Same tiles and sums as ``_swap_dot_kernel``: out.T = W @ x.T, dot j of a block
over code j of each word and x[:, k0 + 16j : k0 + 16j + 16] (groups of 128 or more: codes spread 16 apart).
Measured −16% for the int4 matmuls of a 32-row 13B step on an H200, each kernel alone (NOTES row 80); tuned in
the step on an H100, the whole 32-row step −6.6% (row 81).

TMA copies whole tiles: tensors whose strides or addresses a copy cannot take are left to the Triton kernel
(``fits``)."""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from worker.kernels import bf16_codes

BLOCK_K = 128  # one K block: 16 word rows of 8 codes spread 16 apart, inside one group
WORD_ROWS = 16
LOADER_REGISTERS = gl.constexpr(40)  # the copying warp needs few: the rest go to the warpgroup that multiplies
CODE_ASM = gl.constexpr(bf16_codes.CODE_MINUS_ZERO)
TMA_ALIGNMENT = 16  # bytes: a TMA copy's base address and every stride but the last
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.int32: gl.int32, torch.uint8: gl.uint8, torch.float16: gl.float16}


@gluon.constexpr_function
def _spacing(row_bytes):
    """Rows between two stages' zeros (scales): a TMA copy lands on a 128-byte boundary, and a 64-column tile's
    row of zeros is 64 bytes (unpadded, every other stage's copy hit a misaligned address, NOTES row 80)."""
    return max(1, 128 // row_bytes)


@gluon.jit
def _copy_blocks(w_desc, x_desc, z_desc, s_desc, words_s, x_s, z_s, s_s, ready, free, first, end, pid_n, pid_m,
                 GROUP: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr):
    """The copying warp: block i into buffer i % STAGES once the warpgroup has freed it."""
    for i in range(end - first):
        stage = i % STAGES
        mbarrier.wait(free.index(stage), ((i // STAGES) & 1) ^ 1)  # a fresh barrier passes the first round
        mbarrier.expect(ready.index(stage), w_desc.block_type.nbytes + 8 * x_desc.block_type.nbytes
                        + z_desc.block_type.nbytes + s_desc.block_type.nbytes)
        k0 = (first + i) * 128
        tma.async_copy_global_to_shared(w_desc, [k0 // 8, pid_n * BLOCK_N], ready.index(stage), words_s.index(stage))
        for j in gl.static_range(8):
            tma.async_copy_global_to_shared(x_desc, [pid_m * BLOCK_M, k0 + 16 * j], ready.index(stage),
                                            x_s.index(stage * 8 + j))
        tma.async_copy_global_to_shared(z_desc, [k0 // GROUP, pid_n * BLOCK_N], ready.index(stage),
                                        z_s.index(stage * _spacing(BLOCK_N)))
        tma.async_copy_global_to_shared(s_desc, [k0 // GROUP, pid_n * BLOCK_N], ready.index(stage),
                                        s_s.index(stage * _spacing(2 * BLOCK_N)))


@gluon.jit
def _multiply_blocks(words_s, x_s, z_s, s_s, ready, free, first, end, out_ptr, M, N, pid_n, pid_m, pid_k,
                     BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr):
    """The warpgroup: each block's 8 code tiles in registers (bf16), 8 wgmma waited for once, scaled, added."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
    for i in range(end - first):
        stage = i % STAGES
        mbarrier.wait(ready.index(stage), (i // STAGES) & 1)
        words = words_s.index(stage).permute((1, 0)).load(a_layout)  # [BLOCK_N, 16]: word r of each output
        zeros = z_s.index(stage * _spacing(BLOCK_N)).reshape([BLOCK_N]).load(gl.SliceLayout(1, a_layout))
        scales = s_s.index(stage * _spacing(2 * BLOCK_N)).reshape([BLOCK_N]).load(gl.SliceLayout(1, mma))
        zeros, scales = zeros.to(gl.float32), scales.to(gl.float32)
        zero_magic = gl.expand_dims((zeros + 128.0).to(gl.bfloat16), 1).broadcast_to([BLOCK_N, 16])
        block = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, mma)
        for j in gl.static_range(8):
            codes = gl.inline_asm_elementwise(CODE_ASM[j], "=r,r,r,r", [words, zero_magic], dtype=gl.bfloat16,
                                              is_pure=True, pack=2)
            block = warpgroup_mma(codes, x_s.index(stage * 8 + j).permute((1, 0)), block, is_async=True)
        block = warpgroup_mma_wait(0, deps=[block])
        mbarrier.arrive(free.index(stage), count=1)
        acc += block * gl.expand_dims(scales, 1)
    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    offs_m = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    out = out_ptr + pid_k * M * N + gl.expand_dims(offs_m, 0) * N + gl.expand_dims(offs_n, 1)
    mask = (gl.expand_dims(offs_m, 0) < M) & (gl.expand_dims(offs_n, 1) < N)
    gl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@gluon.jit(do_not_specialize=["M"])  # any row count: one compiled program (no compile in the middle of serving)
def copy_warp_swap_kernel(x_desc, w_desc, s_desc, z_desc, out_ptr, M, N, k_blocks, GROUP: gl.constexpr,
                          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """out[split, m, n] as ``_swap_dot_kernel``: this program's K blocks of the split (as ``_split_blocks``)."""
    pid_n, pid_m, pid_k = gl.program_id(0), gl.program_id(1), gl.program_id(2)
    split = gl.num_programs(2)
    first, end = pid_k * k_blocks // split, (pid_k + 1) * k_blocks // split
    words_s = gl.allocate_shared_memory(gl.int32, [STAGES, 16, BLOCK_N], w_desc.layout)
    x_s = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 8, BLOCK_M, 16], x_desc.layout)
    z_s = gl.allocate_shared_memory(gl.uint8, [STAGES * _spacing(BLOCK_N), 1, BLOCK_N], z_desc.layout)
    s_s = gl.allocate_shared_memory(gl.float16, [STAGES * _spacing(2 * BLOCK_N), 1, BLOCK_N], s_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for stage in gl.static_range(STAGES):
        mbarrier.init(ready.index(stage), count=1)
        mbarrier.init(free.index(stage), count=1)
    fence_async_shared()
    gl.warp_specialize([
        (_multiply_blocks, (words_s, x_s, z_s, s_s, ready, free, first, end, out_ptr, M, N, pid_n, pid_m, pid_k,
                            BLOCK_N, BLOCK_M, STAGES)),
        (_copy_blocks, (w_desc, x_desc, z_desc, s_desc, words_s, x_s, z_s, s_s, ready, free, first, end, pid_n,
                        pid_m, GROUP, BLOCK_N, BLOCK_M, STAGES)),
    ], [1], [LOADER_REGISTERS])


def serves_device(device: torch.device) -> bool:
    """TMA, wgmma and ``setmaxnreg`` as the kernel uses them: Hopper (sm_90) only."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def _copyable(tensor: torch.Tensor) -> bool:
    """A TMA copy's conditions: contiguous rows, a 16-byte aligned base and row stride."""
    return (tensor.stride(-1) == 1 and tensor.data_ptr() % TMA_ALIGNMENT == 0
            and tensor.stride(0) * tensor.element_size() % TMA_ALIGNMENT == 0)


def fits(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> bool:
    """Whether this kernel can take these tensors: bf16 rows, groups of 128 or a multiple (codes spread 16 apart),
    every tensor copyable by TMA."""
    return (x.dtype == torch.bfloat16 and group_size % BLOCK_K == 0 and x.shape[1] % BLOCK_K == 0
            and all(_copyable(t) for t in (x, packed, scales, zeros)))


def _descriptor(tensor: torch.Tensor, block: list[int]) -> TensorDescriptor:
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[tensor.dtype])
    return TensorDescriptor.from_tensor(tensor, block, layout)


def matmul_partials(x, packed, scales, zeros, group_size: int, out: torch.Tensor, config: dict) -> torch.Tensor:
    """x [M <= BLOCK_M, K] @ W.T into ``out`` [split, M, N] (``w4a16.matmul_partials``' contract), with config
    keys BLOCK_M (16 or 32), BLOCK_N (128; 64 compiles with its stages' zeros padded to 128 bytes, not yet run on a
    GPU since it hit a misaligned address unpadded, NOTES row 80), split,
    num_stages (the ring's buffers) and optionally maxnreg (registers a thread at launch: 128 lets two programs
    share an SM, the warpgroup then taking 232 and the copying warp 40); ``fits`` must hold."""
    rows, in_features = x.shape
    out_features, block_m, block_n, split = packed.shape[1], config["BLOCK_M"], config["BLOCK_N"], config["split"]
    grid = (triton.cdiv(out_features, block_n), triton.cdiv(rows, block_m), split)
    copy_warp_swap_kernel[grid](
        _descriptor(x, [block_m, 16]), _descriptor(packed, [WORD_ROWS, block_n]), _descriptor(scales, [1, block_n]),
        _descriptor(zeros, [1, block_n]), out, rows, out_features, in_features // BLOCK_K, GROUP=group_size,
        BLOCK_M=block_m, BLOCK_N=block_n, STAGES=config["num_stages"], num_warps=4,
        **({"maxnreg": config["maxnreg"]} if config.get("maxnreg") else {}))
    return out
