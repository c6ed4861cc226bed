"""The GPU int4 Linear: our own weight layout and Triton kernels (``worker.kernels.w4a16``).

PyTorch's ``_weight_int4pack_mm`` (``worker.model.tinygemm_linear``) costs about as much per activation row as the whole
weight read, so a batch of 32 conversations or a 500-token prompt pays 32 or 500 times. Here one decoding step
reads the 4-bit weights once whatever the batch (up to 64 rows), and longer prompts go through cuBLAS on
weights rebuilt chunk by chunk. No 16-bit copy of the weights is kept.
"""

from __future__ import annotations

import torch
from torch import nn

from worker.kernels.w4a16 import (
    FUSED_MAX_ROWS,
    dequantized_matmul,
    fp8_column_scales,
    fp8_dequantized_matmul,
    fp8_serves,
    matmul_partials,
    pack_codes,
    silu_mul_matmul,
    sum_splits,
)
from worker.model.tinygemm_linear import Int4Codes, describe_int4


class TritonInt4Linear(nn.Module):
    def __init__(self, in_features, out_features, group_size, packed, scales, zeros, perm, bias):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.register_buffer("packed", packed)  # int32 [K/8, N] (``worker.kernels.w4a16``: the layout)
        self.register_buffer("scales", scales)  # fp16 [K/G, N]
        self.register_buffer("zeros", zeros)  # uint8 [K/G, N]
        self.register_buffer("perm", perm)  # input gather (act-order), or None
        self.register_buffer("column_scales", None)  # fp32 [N]: prompts multiplied in fp8 (``use_fp8``), or None
        self._inverse_perm: torch.Tensor | None = None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_codes(cls, c: Int4Codes, dtype: torch.dtype) -> TritonInt4Linear:
        out_features, in_features = c.codes.shape
        packed = pack_codes(c.codes.T, c.group_size)
        scales = c.scales.to(torch.float16).contiguous()
        zeros = c.zeros.to(torch.uint8).contiguous()
        bias = None if c.bias is None else c.bias.to(dtype)
        return cls(in_features, out_features, c.group_size, packed, scales, zeros, c.perm, bias)

    def output_slice(self, start: int, end: int) -> TritonInt4Linear:
        """Outputs start..end as a layer of their own: column views of this layer's memory."""
        bias = None if self.bias is None else self.bias[start:end]
        part = TritonInt4Linear(self.in_features, end - start, self.group_size, self.packed[:, start:end],
                                self.scales[:, start:end], self.zeros[:, start:end], self.perm, bias)
        if self.column_scales is not None:
            part.column_scales = self.column_scales[start:end]
        return part

    def use_fp8(self) -> bool:
        """Multiply prompts (more than FUSED_MAX_ROWS rows) on fp8 tensor cores from now on, where the shape
        allows; decoding steps keep the fused kernels. True if it will."""
        if fp8_serves(self.in_features, self.out_features):
            self.column_scales = fp8_column_scales(self.scales, self.zeros)
        return self.column_scales is not None

    def inverse_perm(self) -> torch.Tensor | None:
        """Where each input channel goes in this layer's input order (made on first use, for a producer that
        writes the input already gathered)."""
        if self.perm is not None and self._inverse_perm is None:
            self._inverse_perm = torch.argsort(self.perm)
        return self._inverse_perm

    def _in_input_order(self, x: torch.Tensor, ordered: bool) -> torch.Tensor:
        if self.perm is not None and not ordered:
            x = x[:, self.perm]
        return x if x.stride(-1) == 1 else x.contiguous()

    def partials(self, x: torch.Tensor, ordered: bool = False) -> torch.Tensor:
        """x [M, K] @ W.T (+ bias) as split-K partial sums [split, M, N] (``worker.inference.layer_ops`` adds them in
        the next step's kernel). ``ordered``: x is already in this layer's input order (act-order gather done)."""
        x = self._in_input_order(x, ordered)
        if x.shape[0] <= FUSED_MAX_ROWS:
            parts = matmul_partials(x, self.packed, self.scales, self.zeros, self.group_size)
        elif self.column_scales is not None:
            parts = fp8_dequantized_matmul(x, self.packed, self.scales, self.zeros, self.group_size,
                                           self.column_scales)[None]
        else:
            parts = dequantized_matmul(x, self.packed, self.scales, self.zeros, self.group_size)[None]
        if self.bias is not None:
            parts[0] += self.bias
        return parts

    def silu_mul(self, x: torch.Tensor, ordered: bool = False) -> torch.Tensor | None:
        """For a fused gate/up layer (gate the first half of the outputs): silu(gate) * up [1, N/2] of one row
        x [1, K], from the matmul's own kernel (``w4a16.silu_mul_matmul``); None where that kernel does not
        serve (more rows, a K split, a bias), and the caller adds the activation to ``partials``."""
        if x.shape[0] != 1 or self.bias is not None:
            return None
        return silu_mul_matmul(self._in_input_order(x, ordered), self.packed, self.scales, self.zeros,
                               self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        out = sum_splits(self.partials(x.reshape(-1, self.in_features)), x.dtype)
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return describe_int4(self, "triton")
