"""A Linear layer whose weight lives in PyTorch's built-in int4 format (REFERENCE §3).

CUDA: ``_weight_int4pack_mm`` with bf16 activations. CPU: ``_weight_int4pack_mm_for_cpu``. Both compute
W = (q - 8) * scale + zero per group, so a GPTQ zero code z becomes zero = scale * (8 - z). With act-order
(desc_act) the input channels are sorted by group once at load, and each call gathers x[:, perm].
"""

from __future__ import annotations

import torch
from torch import nn

from worker.gptq_layout import GPTQTensors, dequantize, unpack_codes

CUDA_INNER_K_TILES = (8, 4, 2)


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
    return in_features % 2 == 0


class Int4Linear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int,
        packed: torch.Tensor,
        scales_and_zeros: torch.Tensor,
        perm: torch.Tensor | None,
        bias: torch.Tensor | None,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("perm", perm)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_gptq(
        cls, t: GPTQTensors, group_size: int, zero_offset: int, device: torch.device, dtype: torch.dtype
    ) -> Int4Linear:
        """Repack one GPTQ Linear (4-bit) for the int4 kernel of ``device``."""
        t = GPTQTensors(*(x.to(device) if x is not None else None for x in vars(t).values()))
        q, z = unpack_codes(t, 4, zero_offset)  # q [K, N], z [K/G, N]
        in_features, out_features = q.shape
        perm = group_order(t.g_idx, group_size)
        if perm is not None:
            q = q[perm]
        weight_codes = q.T.contiguous()  # [N, K] in 0..15, groups contiguous along K
        scales = t.scales.float()
        scales_and_zeros = torch.stack([scales, scales * (8 - z.float())], dim=-1).to(dtype).contiguous()
        if device.type == "cuda":
            pairs = (weight_codes[:, ::2] << 4 | weight_codes[:, 1::2]).to(torch.uint8)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, cuda_inner_k_tiles(in_features))
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight_codes, 1)
        bias = None if t.bias is None else t.bias.to(dtype)
        return cls(in_features, out_features, group_size, packed, scales_and_zeros, perm, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.perm is not None:
            x2 = x2[:, self.perm]
        if x2.is_cuda:
            out = torch.ops.aten._weight_int4pack_mm(
                x2.to(self.scales_and_zeros.dtype), self.packed, self.group_size, self.scales_and_zeros
            )
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(self.scales_and_zeros.dtype), self.packed, self.group_size, self.scales_and_zeros
            )
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
            f"act_order={self.perm is not None}"
        )


def dequantized_linear(
    t: GPTQTensors, bits: int, zero_offset: int, device: torch.device, dtype: torch.dtype
) -> nn.Linear:
    """The fallback for layouts the int4 kernels cannot serve: a plain Linear holding W exactly."""
    weight = dequantize(GPTQTensors(*(x.to(device) if x is not None else None for x in vars(t).values())), bits, zero_offset)
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=t.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if t.bias is not None:
        linear.bias = nn.Parameter(t.bias.to(device=device, dtype=dtype), requires_grad=False)
    return linear
