"""The steps of a layer around its matmuls, on split-K partial sums ([split, rows, N]): on the GPU one Triton
kernel each (``worker.kernels.layer_kernels``), elsewhere the same math in PyTorch (transformers' Llama, op by op).

    parts = projection_partials(layer.self_attn.qkv_proj, x, ordered=True)   # x already in its input order
    q = rotary_into_cache(parts, cos, sin, positions, cache, ...)             # k, v written into the cache
    h, x = add_rms_norm(h, delta_parts, norm, order=act_order_perm(next_layer))  # x comes out in that order
    hidden = silu_mul(gate_up_parts, act_fn, dtype)                          # or, one row: the matmul's epilogue
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.kernels.kv_quant import KVQuant


def kernels_serve(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the Triton kernels take this step: CUDA tensors in a 16-bit model (fp32 runs the PyTorch ops)."""
    return t.is_cuda and dtype != torch.float32


def projection_partials(layer: nn.Module, x: torch.Tensor, ordered: bool = False) -> torch.Tensor:
    """x [..., K] @ W.T as partial sums [split, rows, N]. ``ordered``: x is already in the layer's input order
    (``act_order_perm``), so the layer skips its gather."""
    rows = x.reshape(-1, x.shape[-1])
    if hasattr(layer, "partials"):  # our Triton int4 layer
        return layer.partials(rows, ordered)
    return layer(rows)[None]


def act_order_perm(layer: nn.Module | None) -> torch.Tensor | None:
    """The act-order permutation a Triton int4 layer gathers its input through: the norm before it applies it."""
    return getattr(layer, "perm", None) if hasattr(layer, "partials") else None


def output_order_for(layer: nn.Module | None) -> torch.Tensor | None:
    """Where each input channel of a Triton int4 layer goes in its input order (the inverse permutation), for
    a kernel that writes that layer's input directly in order."""
    return layer.inverse_perm() if hasattr(layer, "partials") else None


def summed(partials: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if partials.shape[0] == 1:
        return partials[0].to(dtype)
    return partials.sum(0).to(dtype)


def norm_eps(norm: nn.Module) -> float:
    return getattr(norm, "variance_epsilon", None) or norm.eps


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor | None, norm: nn.Module, order: torch.Tensor | None = None):
    """(h + delta, RMSNorm of that [its columns in ``order``]); delta: partial sums [split, rows, W] or None."""
    if kernels_serve(h, h.dtype):
        from worker.kernels import layer_kernels  # Triton: only where it runs

        return layer_kernels.add_rms_norm(h.contiguous(), delta, norm.weight, norm_eps(norm), order)
    if delta is not None:
        h = h + summed(delta, h.dtype).view(h.shape)
    x = F.rms_norm(h, (h.shape[-1],), norm.weight, norm_eps(norm))
    return h, (x if order is None else x[..., order])


def is_silu(act_fn: nn.Module) -> bool:
    """Whether the activation is SiLU: ``nn.SiLU``, or transformers' own module for it (which transformers 5
    builds for ``hidden_act="silu"`` and which is not an ``nn.SiLU``)."""
    return isinstance(act_fn, nn.SiLU) or type(act_fn).__name__ == "SiLUActivation"


def silu_mul(partials: torch.Tensor, act_fn: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """act(gate) * up [rows, W] from gate_up's partial sums [split, rows, 2W]."""
    if kernels_serve(partials, dtype) and is_silu(act_fn):
        from worker.kernels import layer_kernels

        return layer_kernels.silu_mul(partials, dtype)
    gate_up = summed(partials, dtype)
    width = gate_up.shape[-1] // 2
    return act_fn(gate_up[..., :width]).mul_(gate_up[..., width:])


def gate_up_silu_mul(layer: nn.Module, x: torch.Tensor, ordered: bool, act_fn: nn.Module,
                     dtype: torch.dtype) -> torch.Tensor:
    """act(gate) * up [rows, W] of x [rows, K] through the fused gate/up layer (in its input order when
    ``ordered``): where the int4 layer's one-row kernel can apply SiLU itself (``TritonInt4Linear.silu_mul``),
    in that one kernel; else ``silu_mul`` of its partial sums."""
    if kernels_serve(x, dtype) and is_silu(act_fn) and hasattr(layer, "silu_mul"):
        hidden = layer.silu_mul(x.reshape(-1, x.shape[-1]), ordered)
        if hidden is not None:
            return hidden
    return silu_mul(projection_partials(layer, x, ordered), act_fn, dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def normed_qk(partials: torch.Tensor, q_norm: nn.Module, k_norm: nn.Module, q_heads: int, kv_heads: int,
              head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """qkv's partial sums -> qkv as one split [1, rows, N] in ``dtype``, each q head through ``q_norm`` and each
    k head through ``k_norm`` (Qwen3's RMSNorm over head_dim, before the rotary), v as it is. The norms are
    the model's own modules, so this is transformers' math on either device; the rotary step then reads it."""
    qkv = summed(partials, dtype)
    heads = qkv.view(qkv.shape[0], -1, head_dim)
    q = q_norm(heads[:, :q_heads]).to(dtype)
    k = k_norm(heads[:, q_heads : q_heads + kv_heads]).to(dtype)
    return torch.cat([q, k, heads[:, q_heads + kv_heads :]], dim=1).reshape(1, qkv.shape[0], -1)


def rotary_into_cache(partials, cos, sin, positions, cache, layer: int, first_row: int, q_heads: int,
                      kv_heads: int, dtype: torch.dtype, q_norm: nn.Module | None = None,
                      k_norm: nn.Module | None = None, slots: torch.Tensor | None = None, with_kv: bool = False):
    """qkv's partial sums [split, B*T, (q + 2 kv heads) * D] -> q [B, q_heads, T, D] with rotary applied;
    k (rotated) and v written into ``cache`` for slots first_row.. at positions [B, T]. ``q_norm``/``k_norm``
    (Qwen3): per-head RMSNorms applied to q and k before the rotary (``normed_qk``). ``slots`` [B] (on the
    device, GPU kernels only): row b's slot instead of first_row + b, -1 for none (a captured prefill's input).
    ``with_kv``: (q, k, v), k and v [B, kv_heads, T, D] in ``dtype`` as computed (not as a quantized cache
    holds them)."""
    batch, length = positions.shape
    head_dim = cache.keys.shape[-1]
    if q_norm is not None or k_norm is not None:
        partials = normed_qk(partials, q_norm or nn.Identity(), k_norm or nn.Identity(), q_heads, kv_heads,
                             head_dim, dtype)
    if kernels_serve(partials, dtype):
        from worker.kernels import layer_kernels

        int8 = cache.quant is KVQuant.PER_TOKEN
        heads = layer_kernels.rotary_into_cache(
            partials, cos.reshape(-1, head_dim).contiguous(), sin.reshape(-1, head_dim).contiguous(),
            positions.reshape(-1).contiguous(), cache.keys[layer], cache.values[layer], first_row, length,
            q_heads, kv_heads, dtype, cache.scales[layer],
            token_scales=cache.token_scales[layer] if int8 else None,
            key_channel_scales=cache.key_channel_scales[layer] if int8 else None, slots=slots, all_heads=with_kv,
        ).view(batch, length, -1, head_dim).transpose(1, 2)  # [B, heads, T, D]
        if not with_kv:
            return heads
        return heads[:, :q_heads], heads[:, q_heads : q_heads + kv_heads], heads[:, q_heads + kv_heads :]
    if slots is not None:
        raise ValueError("slots given as a tensor need the GPU kernels (a captured prefill's)")
    heads = summed(partials, dtype).view(batch, length, -1, head_dim)  # [B, T, q + k + v heads, D]
    qk = heads[:, :, : q_heads + kv_heads]
    qk = qk * cos.unsqueeze(2) + rotate_half(qk) * sin.unsqueeze(2)  # rotary for q and k heads at once
    q = qk[:, :, :q_heads].transpose(1, 2)
    k = qk[:, :, q_heads:].transpose(1, 2)
    v = heads[:, :, q_heads + kv_heads :].transpose(1, 2)
    cache.write(layer, first_row, positions, k, v)
    return (q, k, v) if with_kv else q
