"""Residual add + RMSNorm as one Triton kernel (GPU decode: two fewer kernel launches per norm).

    h, x = add_rms_norm(h, delta, weight, eps)     # h + delta (rounded to h's dtype), and its RMSNorm

The same math as ``h = h + delta; x = F.rms_norm(h, ...)`` in transformers' Llama: the sum is rounded to the
model dtype, the norm computed in fp32 on that rounded sum, and the weight applied after rounding back.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(h_ptr, delta_ptr, w_ptr, h_out_ptr, x_out_ptr, width, eps,
                         HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < width
    h = tl.load(h_ptr + row * width + offs, mask=mask, other=0.0)
    if HAS_DELTA:
        h = (h.to(tl.float32) + tl.load(delta_ptr + row * width + offs, mask=mask, other=0.0).to(tl.float32))
        h = h.to(h_out_ptr.dtype.element_ty)
        tl.store(h_out_ptr + row * width + offs, h, mask=mask)
    hf = h.to(tl.float32)
    scale = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / width + eps)
    normed = (hf * scale).to(x_out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_out_ptr + row * width + offs, (normed * weight).to(x_out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """(h + delta, RMSNorm of it); with delta None: (h, RMSNorm of h)."""
    width = h.shape[-1]
    h2 = h.reshape(-1, width)
    h_out = torch.empty_like(h2) if delta is not None else h2
    x_out = torch.empty_like(h2)
    delta2 = delta.reshape(-1, width) if delta is not None else h2
    _add_rms_norm_kernel[(h2.shape[0],)](h2, delta2, weight, h_out, x_out, width, eps,
                                         HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(width),
                                         num_warps=8)
    return h_out.view(h.shape), x_out.view(h.shape)
