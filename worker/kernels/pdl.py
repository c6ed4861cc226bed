"""Programmatic dependent launch (Hopper and newer): the next kernel of a decode step starts while the one before
it is finishing, instead of after it.

A decode step of the 13B model runs ~360 short kernels (a one-row matmul reads its 13-40 MB in 5-15 µs), so each
kernel's start (launch, programs spreading over the SMs) and end (the last programs' tail) are a large part of the
step. Launched with PDL, a kernel's programs are placed on the SMs as soon as the kernel before it signals
(``let_next_start``); they first load what does not depend on it (a matmul's weights) and then wait for it to
finish and flush its writes (``wait_for_previous``) before reading its outputs. Every kernel launched this way
waits before its first dependent read, so the chain stays ordered: a kernel finishes only after the one before it.
Kernels not launched this way (PyTorch's, cuBLAS's) run as before, after everything earlier in the stream.

    _kernel[grid](..., **launch_options(x))        # the kernel takes ``PDL: tl.constexpr = False``
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# XWINBOT_PDL=0 launches every kernel the plain way (the A/B in benchmarks/speed/gpu_inference.py).
ENABLED = os.environ.get("XWINBOT_PDL", "1") != "0" and os.environ.get("TRITON_INTERPRET") != "1"


@functools.cache
def _supported(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def launch_options(tensor: torch.Tensor) -> dict:
    """The launch arguments that turn PDL on for a kernel working on ``tensor``: on CUDA devices of compute
    capability 9.0 or newer, else none (the kernel's ``PDL`` stays False and it launches the plain way)."""
    if ENABLED and tensor.is_cuda and _supported(tensor.device.index or 0):
        return {"PDL": True, "launch_pdl": True}
    return {}


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Before the first read of anything an earlier kernel wrote: wait until it has finished."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def let_next_start(PDL: tl.constexpr):
    """Let the next kernel's programs be placed on the SMs (they wait for this kernel before reading its output)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def prefetch_rows(ptr, first_row, stride_row, first_col, n_cols, ROWS: tl.constexpr, COLS: tl.constexpr,
                  ELEMENT_BYTES: tl.constexpr, PDL: tl.constexpr):
    """With PDL: start reading rows first_row .. + ROWS, columns first_col .. + COLS (the contiguous axis, below
    ``n_cols``) of a matrix into L2, one request per 128-byte line; for a matmul's first weights, before
    ``wait_for_previous``. The loads that follow find the lines in L2."""
    if PDL:
        PER_LINE: tl.constexpr = 128 // ELEMENT_BYTES
        LINES: tl.constexpr = COLS // PER_LINE if COLS >= PER_LINE else 1
        cols = tl.minimum(first_col + tl.arange(0, LINES) * PER_LINE, n_cols - 1)
        rows = first_row + tl.arange(0, ROWS)
        addresses = (ptr + rows[:, None] * stride_row + cols[None, :]).to(tl.int64, bitcast=True)
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [addresses], dtype=tl.int32,
                                  is_pure=False, pack=1)
