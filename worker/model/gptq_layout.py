"""The AutoGPTQ tensor layout, in one place: packing, unpacking and round-to-nearest quantization.

Per quantized Linear with K input and N output features, group size G (as AutoGPTQ writes its checkpoints):
- ``qweight`` int32 [K*bits/32, N]: q[k, n] sits in qweight[k // per_word, n] at bits ``bits*(k % per_word)``.
- ``qzeros`` int32 [K/G, N*bits/32]: the zero code (minus ``zero_offset``) packed the same way along N.
- ``scales`` fp16 [K/G, N]; ``g_idx`` int32 [K]: the group of each input channel.
- Dequantized weight: W[n, k] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]).

The "v1" format (every TheBloke checkpoint) stores z - 1, so ``zero_offset`` is 1; "v2" stores z itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

V1_ZERO_OFFSET = 1


@dataclass
class GPTQTensors:
    """The stored tensors of one quantized Linear."""

    qweight: torch.Tensor
    qzeros: torch.Tensor
    scales: torch.Tensor
    g_idx: torch.Tensor
    bias: torch.Tensor | None = None


def values_per_word(bits: int) -> int:
    if 32 % bits:
        raise ValueError(f"{bits}-bit values do not tile a 32-bit word")
    return 32 // bits


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R/per, C] -> int32 [R, C]: row r sits in word r // per at bits ``bits * (r % per)``."""
    per = values_per_word(bits)
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    values = (packed.unsqueeze(1) >> shifts.view(1, per, 1)) & ((1 << bits) - 1)
    return values.reshape(packed.shape[0] * per, packed.shape[1])


def unpack_columns(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C/per] -> int32 [R, C]: column c sits in word c // per at bits ``bits * (c % per)``."""
    return unpack_rows(packed.T.contiguous(), bits).T.contiguous()


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int [R, C] with 0 <= v < 2**bits -> int32 [R/per, C]; the inverse of ``unpack_rows``."""
    per = values_per_word(bits)
    rows, cols = values.shape
    if rows % per:
        raise ValueError(f"{rows} rows do not pack into words of {per} values")
    shifts = torch.arange(per, device=values.device, dtype=torch.int64) * bits
    words = (values.to(torch.int64).view(rows // per, per, cols) << shifts.view(1, per, 1)).sum(dim=1)
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret as signed int32
    return words.to(torch.int32)


def pack_columns(values: torch.Tensor, bits: int) -> torch.Tensor:
    """int [R, C] -> int32 [R, C/per]; the inverse of ``unpack_columns``."""
    return pack_rows(values.T.contiguous(), bits).T.contiguous()


def unpack_gptq_codes(t: GPTQTensors, bits: int,
                      zero_offset: int = V1_ZERO_OFFSET) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer weight codes q [K, N] and the zero codes z [K/G, N] (offset already added back)."""
    q = unpack_rows(t.qweight, bits)
    z = unpack_columns(t.qzeros, bits) + zero_offset
    return q, z


def dequantize(t: GPTQTensors, bits: int, zero_offset: int = V1_ZERO_OFFSET) -> torch.Tensor:
    """W [N, K] in fp32: scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n])."""
    q, z = unpack_gptq_codes(t, bits, zero_offset)
    g = t.g_idx.long()
    scales = t.scales.float()
    return (scales[g] * (q.float() - z[g].float())).T.contiguous()


def act_order_g_idx(in_features: int, group_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A desc_act-style g_idx: channels visited in a shuffled order, each consecutive G of them one group."""
    order = torch.randperm(in_features, generator=generator)
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = torch.arange(in_features, dtype=torch.int32) // group_size
    return g_idx


def quantize_weight(
    weight: torch.Tensor,
    bits: int,
    group_size: int,
    sym: bool,
    g_idx: torch.Tensor | None = None,
    zero_offset: int = V1_ZERO_OFFSET,
) -> GPTQTensors:
    """Round-to-nearest quantization of W [N, K] into GPTQ tensors.

    ``g_idx`` assigns channels to groups (act-order); by default channel k is in group k // G. In v1 a zero
    code of 0 cannot be stored (it would read back as 2**bits), so zero codes are kept in [1, 2**bits - 1].
    """
    out_features, in_features = weight.shape
    if group_size <= 0:
        group_size = in_features
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of group size {group_size}")
    n_groups = in_features // group_size
    if g_idx is None:
        g_idx = torch.arange(in_features, dtype=torch.int32) // group_size
    maxq = (1 << bits) - 1
    w = weight.float().T  # [K, N]
    scales = torch.empty(n_groups, out_features)
    zeros = torch.empty(n_groups, out_features)
    for group in range(n_groups):
        rows = w[g_idx == group]
        if sym:
            scale = rows.abs().amax(dim=0).clamp(min=1e-8) * 2 / maxq
            zero = torch.full_like(scale, (maxq + 1) // 2)
        else:
            low = rows.amin(dim=0).clamp(max=0)
            high = rows.amax(dim=0).clamp(min=0)
            scale = ((high - low) / maxq).clamp(min=1e-8)
            zero = torch.round(-low / scale).clamp(zero_offset, maxq)
        scales[group], zeros[group] = scale, zero
    scales = scales.half()  # the stored precision is the one that counts
    g = g_idx.long()
    q = torch.round(w / scales.float()[g] + zeros[g]).clamp(0, maxq).to(torch.int32)
    return GPTQTensors(
        qweight=pack_rows(q, bits),
        qzeros=pack_columns(zeros.to(torch.int32) - zero_offset, bits),
        scales=scales,
        g_idx=g_idx.to(torch.int32),
    )
