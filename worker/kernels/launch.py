"""Launches that overlap the kernel before them (programmatic dependent launch, Hopper and later).

A decode step is ~500 small kernels in a row; between two of them the GPU drains the first before it starts
launching the second, a microsecond or two each that no kernel's speed removes. Launched with ``launch_pdl``, a
kernel's programs are placed on the SMs while the one before is still finishing, and wait at their first
instruction (``griddepcontrol.wait``) until it has completed and its writes are visible: the same order of
reads and writes, the launch itself hidden. Each program then lets the next kernel launch (``launch_dependents``;
or at its end: ``LAUNCH_NEXT``).

    @triton.jit
    def _kernel(..., PDL: tl.constexpr = False):
        wait_for_previous_kernel(PDL)   # first: nothing is read or written before the kernel before is done
        ...

    _kernel[grid](..., **overlap(x.device, rows))

Because every such kernel waits before touching memory, the order holds across any number of them (each waited
for the one before, which waited for its own). Nothing is issued before the wait: int4 matmuls that first
prefetched their weights into L2 made the one-row step slower (benchmarks/NOTES.md row 52). Kernels launched
without it (PyTorch's, cuBLAS's, the Gluon int4 kernel, every kernel of more than one row: see ``overlap``; the
kernels that only ever serve many rows, the 2-64-row int4 matmuls and a prefill's norm, do not take PDL) start
after the one before has finished, as usual. ``benchmarks/kernels/launch_overlap.py`` times the captured
step with and without (``OVERLAP``).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from worker.kernels import INTERPRETING

try:  # Triton 3.4+; without it every launch is a plain one
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None

OVERLAP = gdc_wait is not None  # switched off by the benchmark to time the plain launches


@functools.cache
def _has_grid_dependency_control(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9  # griddepcontrol is sm_90's


def overlap(device: torch.device, rows: int) -> dict:
    """Launch options for a kernel of ``rows`` rows that starts with ``wait_for_previous_kernel(PDL)``: an
    overlapping launch for one row on Hopper and later, a plain one otherwise. One row only: overlapping made
    the one-row step faster on an H100 and an H200, and steps of 2-32 rows slower (benchmarks/NOTES.md row 85)."""
    if not OVERLAP or rows != 1 or INTERPRETING or device.type != "cuda":
        return {"PDL": False}
    if not _has_grid_dependency_control(device.index if device.index is not None else torch.cuda.current_device()):
        return {"PDL": False}
    return {"PDL": True, "launch_pdl": True}


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr, LAUNCH_NEXT: tl.constexpr = True):
    """With PDL: wait until the kernel before has completed (its writes visible), then let the next launch.
    LAUNCH_NEXT False: the next kernel launches only as this one's programs finish (decode attention's chunk
    kernel, whose early-placed successors cost the one-row step more than the launch they hid:
    benchmarks/NOTES.md row 101)."""
    if PDL:
        gdc_wait()
        if LAUNCH_NEXT:
            gdc_launch_dependents()
