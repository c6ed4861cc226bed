"""An experiment, not served: the 2-32-row int4 matmul with a warp that only copies (Gluon), against the shipped
Triton kernel (``worker.kernels.w4a16._swap_dot_kernel``), on the 13B layer shapes.

The shipped kernel is bound by latency with few warps resident: each K block is a chain of waiting for its copy, a
barrier, 8 dots and another barrier (benchmarks/NOTES.md row 77), and Triton 3.6 builds neither a warp-specialized
nor a better TMA form of it (row 79). Here one warp does nothing but copy the next blocks (words, x, zeros, scales,
each tile one TMA copy into a ring of STAGES buffers, an mbarrier each way) while a warpgroup turns codes into bf16
(the same bf16x2 instructions as the shipped kernel) and issues the 8 wgmma of a block back to back, waiting once.
Same tiles as ``_swap_dot_kernel``: out.T = W @ x.T, the block's 8 dots over code j of each word and
x[:, k0 + 16j : k0 + 16j + 16].

    python -m benchmarks.kernels.copy_warps [--rows 32 17] [--seconds 60]   # a GPU with TMA (sm_90)

Checks each shape and config against the shipped kernel's sums, then times both as CUDA graphs cycling over
layer copies past the L2 (as ``sweep_configs`` does).
"""

from __future__ import annotations

import argparse
import itertools
import time

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

from benchmarks.kernels.int4_kernels import SHAPES, copies_beyond_l2, cycling, graph_time_us, k_splits, random_layer
from benchmarks.result_json import write_result
from worker.kernels import w4a16
from worker.model.triton_linear import TritonInt4Linear

BLOCK_K = 8 * w4a16.CODE_SPREAD  # one K block: 16 word rows, 128 inputs, inside one group
LOADER_REGISTERS = gl.constexpr(40)  # the copying warp needs few: the rest go to the warpgroup that multiplies


CODE_ASM = w4a16._BF16_CODE_ASM  # code j - zero of two words as bf16x2: the shipped kernel's instructions


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
        tma.async_copy_global_to_shared(z_desc, [k0 // GROUP, pid_n * BLOCK_N], ready.index(stage), z_s.index(stage))
        tma.async_copy_global_to_shared(s_desc, [k0 // GROUP, pid_n * BLOCK_N], ready.index(stage), s_s.index(stage))


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
        zeros = z_s.index(stage).reshape([BLOCK_N]).load(gl.SliceLayout(1, a_layout)).to(gl.float32)
        scales = s_s.index(stage).reshape([BLOCK_N]).load(gl.SliceLayout(1, mma)).to(gl.float32)
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


@gluon.jit
def copy_warp_swap_kernel(x_desc, w_desc, s_desc, z_desc, out_ptr, M, N, k_blocks, GROUP: gl.constexpr,
                          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """out[split, m, n] as ``_swap_dot_kernel``: this program's K blocks of the split (as ``_split_blocks``)."""
    pid_n, pid_m, pid_k = gl.program_id(0), gl.program_id(1), gl.program_id(2)
    split = gl.num_programs(2)
    first, end = pid_k * k_blocks // split, (pid_k + 1) * k_blocks // split
    words_s = gl.allocate_shared_memory(gl.int32, [STAGES, 16, BLOCK_N], w_desc.layout)
    x_s = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 8, BLOCK_M, 16], x_desc.layout)
    z_s = gl.allocate_shared_memory(gl.uint8, [STAGES, 1, BLOCK_N], z_desc.layout)
    s_s = gl.allocate_shared_memory(gl.float16, [STAGES, 1, BLOCK_N], s_desc.layout)
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


def descriptor(tensor: torch.Tensor, block: list[int]) -> TensorDescriptor:
    dtype = {torch.bfloat16: gl.bfloat16, torch.int32: gl.int32, torch.uint8: gl.uint8, torch.float16: gl.float16}
    return TensorDescriptor.from_tensor(tensor, block, gl.NVMMASharedLayout.get_default_for(block, dtype[tensor.dtype]))


def copy_warp_partials(x, packed, scales, zeros, block_n: int, split: int, stages: int,
                       maxnreg: int | None = None) -> torch.Tensor:
    """x [M <= 32, K] (bf16, group order, groups of 128) @ W.T as [split, M, N] fp32 partial sums. ``maxnreg``
    128: two programs an SM (the warpgroup then takes 232 registers a thread, the copying warps 24-40), else one
    (255 a thread at launch)."""
    rows, in_features = x.shape
    out_features, block_m = packed.shape[1], 16 if rows <= 16 else 32
    out = torch.empty((split, rows, out_features), device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(out_features, block_n), triton.cdiv(rows, block_m), split)
    copy_warp_swap_kernel[grid](descriptor(x, [block_m, 16]), descriptor(packed, [16, block_n]),
                                descriptor(scales, [1, block_n]), descriptor(zeros, [1, block_n]), out, rows,
                                out_features, in_features // BLOCK_K, GROUP=128, BLOCK_M=block_m, BLOCK_N=block_n,
                                STAGES=stages, num_warps=4, **({"maxnreg": maxnreg} if maxnreg else {}))
    return out


def configs(k: int, n: int, sms: int):
    for block_n in (128,):  # 64: a misaligned address on the H200, cause not found (NOTES row 80)
        for stages, maxnreg in itertools.product((4, 6, 3), (None, 128)):
            for split in k_splits(k // BLOCK_K, triton.cdiv(n, block_n), sms):
                if sms // 2 <= triton.cdiv(n, block_n) * split <= 8 * sms:
                    yield dict(block_n=block_n, stages=stages, split=split, maxnreg=maxnreg)


def compare_shape(rows: int, k: int, n: int, device, seconds: float) -> dict:
    layers = [random_layer(k, n, device, TritonInt4Linear) for _ in range(copies_beyond_l2(k, n, 0.5))]
    x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
    shipped = w4a16.config_for_bucket(w4a16.rows_bucket(rows), n, k, 128, device)
    want = w4a16.matmul_partials(x, layers[0].packed, layers[0].scales, layers[0].zeros, 128, shipped).float().sum(0)
    shipped_us = graph_time_us(cycling([
        lambda layer=layer: w4a16.matmul_partials(x, layer.packed, layer.scales, layer.zeros, 128, shipped)
        for layer in layers]))
    best, best_us, errors, deadline = None, float("inf"), [], time.monotonic() + seconds
    for config in configs(k, n, w4a16.sm_count(device)):
        if time.monotonic() > deadline:
            break
        try:
            got = copy_warp_partials(x, layers[0].packed, layers[0].scales, layers[0].zeros, **config).sum(0)
            error = float((got - want).norm() / want.norm())
            if error > 1e-3:
                raise ValueError(f"sums differ from the shipped kernel's: relative error {error:.2e}")
            us = graph_time_us(cycling([
                lambda layer=layer, config=config: copy_warp_partials(x, layer.packed, layer.scales, layer.zeros,
                                                                      **config)
                for layer in layers]))
        except Exception as err:  # the message is the finding: print it, go on
            errors.append(f"{config}: {type(err).__name__}: {str(err)[:300]}")
            print(f"  {errors[-1]}", flush=True)
            continue
        if us < best_us:
            best, best_us = config, us
    return dict(shipped=shipped, shipped_us=shipped_us, best=best, best_us=best_us, errors=errors[:5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 17])
    parser.add_argument("--seconds", type=float, default=60, help="per rows count, shared by the shapes")
    args = parser.parse_args()
    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name()}
    for rows in args.rows:
        totals = {"shipped": 0.0, "copy_warps": 0.0}
        for name, (k, n) in SHAPES.items():
            result = report[f"{name}/{rows}"] = compare_shape(rows, k, n, device, args.seconds / len(SHAPES))
            totals["shipped"] += result["shipped_us"] * 40 / 1000
            totals["copy_warps"] += result["best_us"] * 40 / 1000
            print(f"{name} rows {rows}: shipped {result['shipped_us']:.2f} us, copy warps {result['best_us']:.2f} us "
                  f"with {result['best']}", flush=True)
            torch.cuda.empty_cache()
        report[f"step_ms/{rows}"] = totals
        print(f"rows {rows}: int4 matmul ms per 40-layer step: shipped {totals['shipped']:.3f}, copy warps "
              f"{totals['copy_warps']:.3f}", flush=True)
    write_result("copy_warps", report, indent=1)


if __name__ == "__main__":
    main()
