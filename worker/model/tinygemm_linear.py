"""A Linear layer whose weight lives in PyTorch's built-in int4 format ("tinygemm": its ``_weight_int4pack_mm``).

CUDA: ``_weight_int4pack_mm`` with bf16 activations. CPU: ``_weight_int4pack_mm_for_cpu``. Both compute
W = (q - 8) * scale + zero per group, so a GPTQ zero code z becomes zero = scale * (8 - z). With act-order
(desc_act) the input channels are sorted by group once at load, and each call gathers x[:, perm].

Building goes through ``Int4Codes`` (plain integer codes, one row per output feature) so that layers can be
reordered and concatenated before packing: see ``worker.model.int4_fusion``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from worker.model.gptq_layout import GPTQTensors, dequantize, unpack_gptq_codes

CUDA_INNER_K_TILES = (8, 4, 2)
PACKED_ROW_BLOCK = {"cuda": 8, "cpu": 64}  # output rows the packed layouts keep together


def group_order(g_idx: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """The permutation that makes each group's channels contiguous, or None when they already are.

    Raises ValueError when the groups are not each exactly ``group_size`` channels (then the int4 kernels
    cannot express the layout and the caller dequantizes instead).
    """
    g = g_idx.long()
    expected = torch.arange(g.numel(), device=g.device) // group_size
    if torch.equal(g, expected):
        return None
    perm = torch.argsort(g, stable=True)
    if not torch.equal(g[perm], expected):
        raise ValueError("groups of unequal size")
    return perm


def cuda_inner_k_tiles(in_features: int) -> int | None:
    return next((t for t in CUDA_INNER_K_TILES if in_features % (t * 16) == 0), None)


def int4_kernel_fits(in_features: int, out_features: int, device: torch.device) -> bool:
    if device.type == "cuda":
        return out_features % 8 == 0 and cuda_inner_k_tiles(in_features) is not None
    return in_features % 2 == 0 and out_features % 16 == 0


def same_perm(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@dataclass
class Int4Codes:
    """One layer's weight as integer codes, input channels already in group order."""

    codes: torch.Tensor  # int32 [N, K] in 0..15
    scales: torch.Tensor  # fp32 [K/G, N]
    zeros: torch.Tensor  # fp32 [K/G, N] (true zero codes)
    perm: torch.Tensor | None  # input gather applied at run time, or None
    bias: torch.Tensor | None
    group_size: int

    @classmethod
    def from_gptq(cls, t: GPTQTensors, group_size: int, zero_offset: int, device: torch.device) -> Int4Codes:
        t = GPTQTensors(*(x.to(device) if x is not None else None for x in vars(t).values()))
        q, z = unpack_gptq_codes(t, 4, zero_offset)  # q [K, N], z [K/G, N]
        perm = group_order(t.g_idx, group_size)
        if perm is not None:
            q = q[perm]
        return cls(q.T.contiguous(), t.scales.float(), z.float(), perm, t.bias, group_size)

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    def reorder_outputs(self, order: torch.Tensor) -> Int4Codes:
        """The same layer with output feature j being the old feature order[j]."""
        bias = None if self.bias is None else self.bias[order]
        return Int4Codes(self.codes[order], self.scales[:, order], self.zeros[:, order], self.perm, bias,
                         self.group_size)

    @staticmethod
    def concat(parts: list[Int4Codes]) -> Int4Codes:
        """Layers with the same input (and the same input order) stacked along their outputs."""
        first = parts[0]
        if any(not same_perm(p.perm, first.perm) or p.group_size != first.group_size for p in parts):
            raise ValueError("only layers with the same input order and group size can be concatenated")
        biases = [p.bias for p in parts]
        if any(b is not None for b in biases):
            biases = [b if b is not None else torch.zeros(p.out_features, device=p.codes.device)
                      for b, p in zip(biases, parts)]
            bias = torch.cat([b.float() for b in biases])
        else:
            bias = None
        return Int4Codes(
            torch.cat([p.codes for p in parts]),
            torch.cat([p.scales for p in parts], dim=1),
            torch.cat([p.zeros for p in parts], dim=1),
            first.perm,
            bias,
            first.group_size,
        )


class TinygemmInt4Linear(nn.Module):
    """An int4 Linear on PyTorch's tinygemm kernels (the CPU default; ``TritonInt4Linear`` is the GPU one)."""

    def __init__(self, in_features, out_features, group_size, packed, scales_and_zeros, perm, bias):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("perm", perm)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_codes(cls, c: Int4Codes, dtype: torch.dtype) -> TinygemmInt4Linear:
        out_features, in_features = c.codes.shape
        scales_and_zeros = torch.stack([c.scales, c.scales * (8 - c.zeros)], dim=-1).to(dtype).contiguous()
        if c.codes.is_cuda:
            pairs = (c.codes[:, ::2] << 4 | c.codes[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, cuda_inner_k_tiles(in_features))
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(c.codes, 1)
        bias = None if c.bias is None else c.bias.to(dtype)
        return cls(in_features, out_features, c.group_size, packed, scales_and_zeros, c.perm, bias)

    def output_slice(self, start: int, end: int) -> TinygemmInt4Linear:
        """Outputs start..end as a layer of their own, sharing this layer's packed weight memory.

        Its scales are copied out (the kernels want them contiguous) only when the slice is first called:
        the runtime calls the fused layer, so serving never pays that memory.
        """
        block = PACKED_ROW_BLOCK[self.packed.device.type]
        if start % block or end % block:
            raise ValueError(f"output slices of packed int4 weights must align to {block} rows")
        rows = self.packed.shape[0] // (self.out_features // block)  # packed rows per block of outputs
        packed = self.packed[start // block * rows : end // block * rows]
        bias = None if self.bias is None else self.bias[start:end]
        view = TinygemmInt4Linear(self.in_features, end - start, self.group_size, packed, None, self.perm, bias)
        view.scales_source = (self.scales_and_zeros, start, end)
        return view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales_and_zeros is None:  # an output slice, called for the first time
            source, start, end = self.scales_source
            self.scales_and_zeros = source[:, start:end].contiguous()
        leading = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(self.scales_and_zeros.dtype)
        if self.perm is not None:
            x2 = x2[:, self.perm]
        if x2.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return describe_int4(self, "tinygemm")


def describe_int4(layer: nn.Module, kernel: str) -> str:
    return (f"in_features={layer.in_features}, out_features={layer.out_features}, group_size={layer.group_size}, "
            f"act_order={layer.perm is not None}, kernel={kernel}")


def dequantized_linear(t: GPTQTensors, bits: int, zero_offset: int, device: torch.device,
                       dtype: torch.dtype) -> nn.Linear:
    """The fallback for layouts the int4 kernels cannot serve: a plain Linear holding W exactly."""
    t = GPTQTensors(*(x.to(device) if x is not None else None for x in vars(t).values()))
    weight = dequantize(t, bits, zero_offset)
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=t.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if t.bias is not None:
        linear.bias = nn.Parameter(t.bias.to(dtype), requires_grad=False)
    return linear
