"""Compile every Triton kernel of the worker for an H100/H200 (sm_90) on a machine without a GPU.

The interpreter the tests use accepts code the GPU compiler refuses (seen: Triton 3.6 rejects a ``tl.constexpr``
assigned inside ``tl.static_range``, which the interpreter and Triton 3.9 took), so run this with the GPU
machine's Triton version before spending device time:

    python3 -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0
    PYTHONPATH=/tmp/t36/lib/python3.11/site-packages .venv/bin/python -m benchmarks.kernels.compile_sm90

Each kernel's longest loop is counted in its SASS (Triton's own cuobjdump), and for the one-row int4 kernel per
weight code each thread handles in it: what it issues per code, read without a GPU (benchmarks/NOTES.md rows 26,
95; row 96: fewer instructions that cost registers made it slower, so weigh both).
"""

from __future__ import annotations

import argparse
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import mangle_type

from benchmarks.result_json import write_result
from worker.kernels import decode_attention as attention
from worker.kernels import layer_kernels as layers
from worker.kernels import w4a16
from worker.kernels import w4a16_copy_warps as copy_warps

INT4 = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*u8", "out_ptr": "*fp32"}
DOT = dict(INT4, M="i32", N="i32", stride_xm="i32", stride_w="i32", stride_s="i32", stride_z="i32",
           k_blocks="i32", GROUP="constexpr", BLOCK_M="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr",
           SPREAD="constexpr")
GEMV = dict(INT4, N="i32", stride_w="i32", stride_s="i32", stride_z="i32", k_blocks="i32", magic="i32",
            GROUP="constexpr", BLOCK_N="constexpr", BLOCK_K="constexpr", ROWS="constexpr", SPREAD="constexpr",
            BF16_WORDS="constexpr", ASM="constexpr")
ROTARY = dict(part_ptr="*fp32", cos_ptr="*bf16", sin_ptr="*bf16", pos_ptr="*i64", q_ptr="*bf16", k_cache_ptr="*bf16",
              v_cache_ptr="*bf16", scale_ptr="*fp32", channel_ptr="*fp32", slot_ptr="*i64", part_stride="i32",
              length="i32",
              first_slot="i32", stride_slot="i32", stride_head="i32", stride_pos="i32", scale_stride_kv="i32",
              scale_stride_slot="i32", scale_stride_head="i32", Q_HEADS="constexpr", KV_HEADS="constexpr",
              HEAD_DIM="constexpr", SPLIT="constexpr", HEADS="constexpr", FP8="constexpr", INT8="constexpr",
              SLOTS="constexpr", ALL_HEADS="constexpr")
RESIDUAL = dict(h_ptr="*bf16", part_ptr="*fp32", h_out_ptr="*bf16", sumsq_ptr="*fp32", width="i32", part_stride="i32",
                SPLIT="constexpr", BLOCK="constexpr")
SCALE = dict(h_ptr="*bf16", sumsq_ptr="*fp32", w_ptr="*bf16", order_ptr="*i64", x_out_ptr="*bf16", width="i32",
             eps="fp32", BLOCKS="constexpr", BLOCKS_P2="constexpr", ORDERED="constexpr", BLOCK="constexpr")
ROW_NORM = dict(h_ptr="*bf16", part_ptr="*bf16", h_out_ptr="*bf16", w_ptr="*bf16", order_ptr="*i64", x_out_ptr="*bf16",
                width="i32", part_stride="i32", eps="fp32", SPLIT="constexpr", ORDERED="constexpr", BLOCK="constexpr")
CHUNK = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", pos_ptr="*i64", m_ptr="*fp32", l_ptr="*fp32",
             acc_ptr="*fp32", kv_scale_ptr="*fp32", channel_ptr="*fp32", chunks="i32", stride_slot="i32",
             stride_head="i32", stride_pos="i32", scale="fp32", sliding_window="i32", kv_heads="i32",
             scale_stride_kv="i32", scale_stride_slot="i32", scale_stride_head="i32", GROUP="constexpr",
             HEAD_DIM="constexpr", CHUNK="constexpr", SLIDING="constexpr", SCALED="constexpr", TOKEN_SCALED="constexpr",
             ASM="constexpr")
DEQUANTIZE = dict(w_ptr="*i32", s_ptr="*fp16", z_ptr="*u8", inv_ptr="*fp32", out_ptr="*bf16", col0="i32", cols="i32",
                  stride_w="i32", stride_s="i32", stride_z="i32", stride_ok="i32", stride_oc="i32", GROUP="constexpr",
                  BLOCK_N="constexpr", BLOCK_K="constexpr", SPREAD="constexpr", FP8="constexpr",
                  FP8_LIMIT="constexpr")
KERNELS = [  # (kernel, signature, constexprs, warps, stages): the configs the worker launches on a 13B model
    (w4a16._gemv_kernel, GEMV,  # the 13B's one-row qkv, o and down (the H100's; the H200's o)
     dict(GROUP=128, BLOCK_N=32, BLOCK_K=256, ROWS=16, SPREAD=16, BF16_WORDS=True, ASM=True, SILU_MUL=False), 4, 1),
    (w4a16._gemv_kernel, GEMV,  # the same with each K block copied ahead into shared memory, 2 blocks ahead
     dict(GROUP=128, BLOCK_N=32, BLOCK_K=256, ROWS=16, SPREAD=16, BF16_WORDS=True, ASM=True, SILU_MUL=False,
          STAGES=3), 4, 1),
    (w4a16._gemv_kernel, GEMV,  # the H200's one-row qkv and down
     dict(GROUP=128, BLOCK_N=256, BLOCK_K=256, ROWS=16, SPREAD=16, BF16_WORDS=True, ASM=True, SILU_MUL=False), 4, 1),
    (w4a16._gemv_kernel, GEMV,
     dict(GROUP=128, BLOCK_N=64, BLOCK_K=512, ROWS=16, SPREAD=16, BF16_WORDS=True, ASM=True, SILU_MUL=False), 4, 1),
    (w4a16._gemv_kernel, GEMV,
     dict(GROUP=128, BLOCK_N=64, BLOCK_K=256, ROWS=16, SPREAD=16, BF16_WORDS=False, ASM=True, SILU_MUL=False), 2, 1),
    (w4a16._gemv_kernel, GEMV,
     dict(GROUP=256, BLOCK_N=64, BLOCK_K=512, ROWS=16, SPREAD=16, BF16_WORDS=True, ASM=True, SILU_MUL=False), 4, 1),
    (w4a16._gemv_kernel, GEMV,
     dict(GROUP=64, BLOCK_N=64, BLOCK_K=512, ROWS=8, SPREAD=1, BF16_WORDS=True, ASM=True, SILU_MUL=False), 4, 1),
    (w4a16._gemv_kernel, dict(GEMV, out_ptr="*bf16"),  # gate/up with SiLU: 16 gate and 16 up columns a tile
     dict(GROUP=128, BLOCK_N=32, BLOCK_K=256, ROWS=16, SPREAD=16, BF16_WORDS=True, ASM=True, SILU_MUL=True), 4, 1),
    (w4a16._swap_dot_kernel, DOT,
     dict(GROUP=128, BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, SPREAD=16, ASM=True, ONE_DOT=False), 8, 3),
    (w4a16._swap_dot_kernel, DOT,
     dict(GROUP=128, BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, SPREAD=16, ASM=True, ONE_DOT=True), 8, 3),
    (w4a16._swap_dot_kernel, dict(DOT, x_ptr="*fp16"),
     dict(GROUP=128, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPREAD=16, ASM=True, ONE_DOT=False), 4, 3),
    (w4a16._swap_dot_kernel, DOT,
     dict(GROUP=128, BLOCK_M=16, BLOCK_N=256, BLOCK_K=128, SPREAD=16, ASM=True, ONE_DOT=False), 2, 4),
    (w4a16._unpacked_dot_kernel, DOT, dict(GROUP=128, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, SPREAD=16), 4, 3),
    (w4a16._sum_splits_kernel, dict(part_ptr="*fp32", out_ptr="*bf16", numel="i32", SPLIT="constexpr",
                                    BLOCK="constexpr"), dict(SPLIT=4, BLOCK=1024), 4, 3),
    (w4a16._dequantize_kernel, DEQUANTIZE, dict(GROUP=128, BLOCK_N=64, BLOCK_K=128, SPREAD=16, FP8=False,
                                                FP8_LIMIT=w4a16.FP8_MAX, stride_oc=1), 4, 3),
    (w4a16._dequantize_kernel, dict(DEQUANTIZE, out_ptr="*fp8e4nv"),  # fp8 prefill: W's rows, k contiguous
     dict(GROUP=128, BLOCK_N=64, BLOCK_K=128, SPREAD=16, FP8=True, FP8_LIMIT=w4a16.FP8_MAX, stride_ok=1), 4, 3),
    (w4a16._fp8_rows_kernel, dict(x_ptr="*bf16", out_ptr="*fp8e4nv", scale_ptr="*fp32", K="i32", stride_x="i32",
                                  BLOCK="constexpr", FP8_LIMIT="constexpr", TINY="constexpr"),
     dict(BLOCK=4096, FP8_LIMIT=w4a16.FP8_MAX, TINY=w4a16.TINY_FP8_SCALE), 4, 3),
    (layers._add_residual_kernel, RESIDUAL, dict(SPLIT=0, BLOCK=256), 2, 3),
    (layers._add_residual_kernel, RESIDUAL, dict(SPLIT=4, BLOCK=256), 2, 3),
    (layers._rms_scale_kernel, SCALE, dict(BLOCKS=20, BLOCKS_P2=32, ORDERED=True, BLOCK=256), 2, 3),
    (layers._silu_mul_kernel, dict(part_ptr="*fp32", out_ptr="*bf16", width="i32", part_stride="i32",
                                   SPLIT="constexpr", BLOCK="constexpr"), dict(SPLIT=2, BLOCK=1024), 4, 3),
    (layers._add_rms_norm_row_kernel, ROW_NORM, dict(SPLIT=1, ORDERED=True, BLOCK=8192), 8, 3),
    (layers._add_rms_norm_row_kernel, ROW_NORM, dict(SPLIT=0, ORDERED=False, BLOCK=8192), 8, 3),
    (layers._rotary_into_cache_kernel, ROTARY,
     dict(Q_HEADS=40, KV_HEADS=40, HEAD_DIM=128, SPLIT=2, HEADS=1, FP8=False, INT8=False,
          SLOTS=False, ALL_HEADS=False), 1, 3),
    (layers._rotary_into_cache_kernel, dict(ROTARY, part_ptr="*bf16"),
     dict(Q_HEADS=40, KV_HEADS=40, HEAD_DIM=128, SPLIT=1, HEADS=8, FP8=False, INT8=False,
          SLOTS=False, ALL_HEADS=True), 4, 3),
    (layers._rotary_into_cache_kernel, dict(ROTARY, part_ptr="*bf16"),
     dict(Q_HEADS=40, KV_HEADS=40, HEAD_DIM=128, SPLIT=1, HEADS=8, FP8=False, INT8=False,
          SLOTS=True, ALL_HEADS=True), 4, 3),
    (layers._rotary_into_cache_kernel, dict(ROTARY, k_cache_ptr="*fp8e4nv", v_cache_ptr="*fp8e4nv"),
     dict(Q_HEADS=40, KV_HEADS=40, HEAD_DIM=128, SPLIT=2, HEADS=1, FP8=True, INT8=False,
          SLOTS=False, ALL_HEADS=False), 1, 3),
    (layers._rotary_into_cache_kernel, dict(ROTARY, k_cache_ptr="*i8", v_cache_ptr="*i8"),
     dict(Q_HEADS=40, KV_HEADS=40, HEAD_DIM=128, SPLIT=2, HEADS=1, FP8=False, INT8=True,
          SLOTS=False, ALL_HEADS=False), 1, 3),
    (layers._rotary_into_cache_kernel, dict(ROTARY, part_ptr="*bf16", k_cache_ptr="*i8", v_cache_ptr="*i8"),
     dict(Q_HEADS=40, KV_HEADS=40, HEAD_DIM=128, SPLIT=1, HEADS=8, FP8=False, INT8=True,
          SLOTS=True, ALL_HEADS=True), 4, 3),
    (attention._chunk_kernel, CHUNK,
     dict(GROUP=1, HEAD_DIM=128, CHUNK=128, SLIDING=False, SCALED=False, TOKEN_SCALED=False, ASM=False), 4, 3),
    (attention._chunk_kernel, dict(CHUNK, k_ptr="*fp8e4nv", v_ptr="*fp8e4nv"),
     dict(GROUP=1, HEAD_DIM=128, CHUNK=128, SLIDING=False, SCALED=True, TOKEN_SCALED=False, ASM=False), 4, 3),
    (attention._chunk_kernel, dict(CHUNK, k_ptr="*i8", v_ptr="*i8"),
     dict(GROUP=1, HEAD_DIM=128, CHUNK=128, SLIDING=False, SCALED=False, TOKEN_SCALED=True, ASM=True), 2, 3),
    (attention._combine_kernel, dict(m_ptr="*fp32", l_ptr="*fp32", acc_ptr="*fp32", order_ptr="*i64", out_ptr="*bf16",
                                     chunks="i32", HEAD_DIM="constexpr", BLOCK_C="constexpr", ORDERED="constexpr"),
     dict(HEAD_DIM=128, BLOCK_C=32, ORDERED=True), 4, 3),
]


def overlapping(constexprs: dict) -> bool:
    """Whether the worker launches this form of a kernel that takes PDL overlapping the kernel before
    (``worker.kernels.launch``: one-row launches on Hopper), so that its sm_90 code opens with
    ``griddepcontrol.wait`` as served: all but the rotary kernel's prefill form (8 heads a program)."""
    return constexprs.get("HEADS", 1) == 1


# decode attention's kernels by the name their next-launch setting has (``LAUNCH_NEXT_AFTER_WAIT``)
ATTENTION_KERNELS = {attention._chunk_kernel: "chunk", attention._combine_kernel: "combine"}


def as_served(kernel, signature: dict, constexprs: dict) -> tuple[dict, dict]:
    """A table entry's signature and constexprs as the worker launches that kernel: the one-row kernel loading each
    block as it starts unless the entry says otherwise, PDL set where the kernel takes it, and decode attention's
    kernels letting the next launch when the worker has them do it."""
    if kernel is w4a16._gemv_kernel:
        constexprs = dict(STAGES=1) | constexprs
    if "PDL" in kernel.arg_names:
        signature, constexprs = dict(signature, PDL="constexpr"), dict(constexprs, PDL=overlapping(constexprs))
    if kernel in ATTENTION_KERNELS:
        launch_next = attention.LAUNCH_NEXT_AFTER_WAIT[ATTENTION_KERNELS[kernel]]
        signature, constexprs = dict(signature, LAUNCH_NEXT="constexpr"), dict(constexprs, LAUNCH_NEXT=launch_next)
    return signature, constexprs


KERNELS = [(kernel, *as_served(kernel, signature, constexprs), *launch)
           for kernel, signature, constexprs, *launch in KERNELS]


def copy_warps_signature(block_n: int) -> dict:
    """The Gluon kernel's: its TMA descriptors typed as a launch types them (13B qkv shapes, CPU tensors)."""
    tiles = {"x_desc": (torch.bfloat16, 5120, [32, 16]), "w_desc": (torch.int32, 640, [16, block_n]),
             "s_desc": (torch.float16, 40, [1, block_n]), "z_desc": (torch.uint8, 40, [1, block_n])}
    signature = {name: mangle_type(copy_warps._descriptor(torch.zeros(rows, 15360, dtype=dtype), block))
                 for name, (dtype, rows, block) in tiles.items()}
    return dict(signature, out_ptr="*fp32", M="i32", N="i32", k_blocks="i32", GROUP="constexpr",
                BLOCK_M="constexpr", BLOCK_N="constexpr", STAGES="constexpr")


KERNELS += [(copy_warps.copy_warp_swap_kernel, copy_warps_signature(block_n),
             dict(GROUP=128, BLOCK_M=32, BLOCK_N=block_n, STAGES=stages), 4, 1) for block_n, stages in
            ((128, 3), (128, 6), (64, 4))]

# on a 13B model, as Triton specializes a launch (the K/V cache's strides too: without them its loads are per byte)
DIVISIBLE_BY_16 = ("N", "stride_xm", "stride_w", "stride_s", "stride_z", "stride_slot", "stride_head", "stride_pos",
                   "stride_ok", "stride_oc", "cols", "K", "stride_x")


def compile_for_sm90(kernel, signature: dict, constexprs: dict, warps: int, stages: int):
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature)
               if (name.endswith("ptr") or name in DIVISIBLE_BY_16) and name not in constexprs}
    if kernel is copy_warps.copy_warp_swap_kernel:  # Gluon: its own source; TMA copies, no pointer attributes
        source = GluonASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    else:
        source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))


SASS_LABEL = re.compile(r"(\w+):")  # Triton's SASS listing names branch targets (``LBB2:``)
SASS_BRANCH = re.compile(r"\bBRA (\w+);")


def longest_loop(sass: str) -> int:
    """Instructions in the longest loop of a SASS listing as Triton prints it (``CompiledKernel.asm["sass"]``):
    from a label to a branch back to it, the branch included; 0 without one (a branch to itself, which ends every
    kernel's code, is no loop)."""
    seen_at: dict[str, int] = {}
    count = longest = 0
    for line in sass.splitlines():
        text = line.strip()
        label = SASS_LABEL.fullmatch(text)
        if label:
            seen_at[label.group(1)] = count
        elif text:
            count += 1
            branch = SASS_BRANCH.search(text)
            if branch and branch.group(1) in seen_at and count - seen_at[branch.group(1)] > 1:
                longest = max(longest, count - seen_at[branch.group(1)])
    return longest


def codes_a_thread(kernel, constexprs: dict, warps: int) -> int | None:
    """Weight codes each thread of the one-row int4 kernel handles in one pass of its loop (a K block)."""
    if kernel is not w4a16._gemv_kernel:
        return None
    return constexprs["BLOCK_K"] * constexprs["BLOCK_N"] // (32 * warps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    print(f"triton {triton.__version__}, target sm_90")
    results = []
    for kernel, signature, constexprs, warps, stages in KERNELS:
        row = dict(kernel=kernel.fn.__name__, constexprs=constexprs, num_warps=warps, num_stages=stages, ok=True)
        try:
            loop = longest_loop(compile_for_sm90(kernel, signature, constexprs, warps, stages).asm["sass"])
            codes = codes_a_thread(kernel, constexprs, warps)
            row.update(loop_instructions=loop, instructions_per_code=codes and round(loop / codes, 2))
            per_code = f", {row['instructions_per_code']} a weight code" if codes else ""
            shape = f"loop of {loop} instructions{per_code}" if loop else "no loop"
            print(f"ok      {kernel.fn.__name__} {constexprs}: {shape}")
        except Exception as err:  # the compiler's own message is what to read
            row.update(ok=False, error=str(err).splitlines()[-1][:300])
            print(f"FAILED  {kernel.fn.__name__} {constexprs}: {row['error']}")
        results.append(row)
    failed = sum(not row["ok"] for row in results)
    write_result("compile_sm90", dict(target="sm_90", failed=failed, kernels=results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
