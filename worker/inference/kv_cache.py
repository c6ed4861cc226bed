"""The KV cache: keys and values of every layer and conversation slot, allocated once so that a decode step has
fixed shapes (CUDA graphs replay it); how it stores them (bf16, fp8, int8) is ``worker.kernels.kv_quant``'s.
``worker.inference.llama_runtime`` writes and reads it, and calibrates its static scales at load."""

from __future__ import annotations

import torch
from torch import nn

from worker.kernels import FP8_MAX
from worker.kernels.kv_quant import (
    FP8,
    FP8_HEADROOM,
    TOKEN_SCALE_DTYPE,
    KVQuant,
    key_channel_scales,
    quantize_per_token,
)


class KVCache(nn.Module):
    """Keys and values of every layer: [layers, slots, kv_heads, max_len, head_dim], allocated once.

    How entries are stored follows the dtype (``quant``, see ``worker.kernels.kv_quant``):

    - the model's dtype: as computed; ``scales`` stay 1.0 and nobody reads them.
    - fp8 (e4m3, ``XWINBOT_KV_CACHE_DTYPE=fp8``): half the memory of bf16; values are divided by their head's
      scale (``scales`` [layers, 2 (K, V), kv_heads], fp32) and clamped to fp8's range when written, and
      multiplied by it when attention reads them. Scales stay 1.0 (unscaled e4m3) until ``set_scales``.
    - int8 (``XWINBOT_KV_CACHE_DTYPE=int8``): the same memory as fp8 plus ``token_scales`` [layers, 2 (K, V),
      slots, kv_heads, max_len] (fp32, 3% more): each written (token, kv head) vector is stored as codes
      round(x / s) with its own s = absmax / 127 (``kv_quant.quantize_per_token``), read back as codes * s.
      Scales run along positions per (slot, head), as the decode kernel loads a chunk of them at once. K is
      divided by ``key_channel_scales`` [layers, kv_heads, head_dim] (fp32, 1.0 until ``set_key_channel_scales``)
      before that, and multiplied by them when read.
    """

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, device, dtype):
        super().__init__()
        shape = (layers, batch, kv_heads, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("values", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("scales", torch.ones((layers, 2, kv_heads), device=device, dtype=torch.float32),
                             persistent=False)
        token_scales = (layers, 2, batch, kv_heads, max_len) if self.quant is KVQuant.PER_TOKEN else (0,)
        self.register_buffer("token_scales", torch.zeros(token_scales, device=device, dtype=TOKEN_SCALE_DTYPE),
                             persistent=False)
        channels = (layers, kv_heads, head_dim) if self.quant is KVQuant.PER_TOKEN else (0,)
        self.register_buffer("key_channel_scales", torch.ones(channels, device=device, dtype=torch.float32),
                             persistent=False)
        self.max_len = max_len
        if self.keys.is_cuda:  # fixed addresses: CUDA graphs replay in-place updates of these buffers
            for buffer in (self.keys, self.values, self.scales, self.token_scales, self.key_channel_scales):
                torch._dynamo.mark_static_address(buffer)

    @property
    def quant(self) -> KVQuant:
        return KVQuant.of(self.keys.dtype)

    def set_scales(self, amax: torch.Tensor) -> None:
        """Scales from the largest |K| and |V| seen per (layer, kv head): ``amax`` [layers, 2, kv_heads]. In place
        (captured CUDA graphs read this buffer); an all-zero head keeps a tiny scale rather than dividing by 0."""
        scales = amax.float().to(self.scales.device) * FP8_HEADROOM / FP8_MAX
        self.scales.copy_(scales.clamp(min=torch.finfo(torch.float32).tiny))

    def set_key_channel_scales(self, amax: torch.Tensor) -> None:
        """An int8 cache's K channel scales from the largest |K| seen per (layer, kv head, channel): ``amax``
        [layers, kv_heads, head_dim] (``kv_quant.key_channel_scales``). In place, for the captured graphs."""
        self.key_channel_scales.copy_(key_channel_scales(amax).to(self.key_channel_scales.device))

    def write(self, layer: int, first_row: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k/v [B, H, T, D] of slots first_row.. at their positions [B, T]."""
        batch, heads, length, dim = k.shape
        rows = slice(first_row, first_row + batch)
        keys, values = self.keys[layer, rows], self.values[layer, rows]
        index = positions.view(batch, 1, length, 1).expand(batch, heads, length, dim)
        if self.quant is KVQuant.PER_HEAD:  # scatter has no fp8 kernels: move the bytes as uint8
            scales = self.scales[layer].view(2, 1, heads, 1, 1)
            as_bytes = [(t.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)
                        for t, s in ((k, scales[0]), (v, scales[1]))]
            keys.view(torch.uint8).scatter_(2, index, as_bytes[0])
            values.view(torch.uint8).scatter_(2, index, as_bytes[1])
        elif self.quant is KVQuant.PER_TOKEN:
            k = k.float() / self.key_channel_scales[layer].view(1, heads, 1, dim)
            for kv, (stored, x) in enumerate(((keys, k), (values, v))):
                codes, scales = quantize_per_token(x)
                stored.scatter_(2, index, codes)
                self.token_scales[layer, kv, rows].scatter_(2, index[..., 0], scales)
        else:
            keys.scatter_(2, index, k.to(keys.dtype))
            values.scatter_(2, index, v.to(values.dtype))

    def window(self, layer: int, first_row: int, batch: int, window: int):
        """Slots first_row.. first ``window`` entries of keys and values (all a step may attend to), as stored."""
        rows = slice(first_row, first_row + batch)
        return self.keys[layer, rows, :, :window], self.values[layer, rows, :, :window]

    def window_token_scales(self, layer: int, first_row: int, batch: int, window: int) -> torch.Tensor:
        """An int8 cache's scales of ``window``'s entries: [2 (K, V), batch, kv_heads, window]."""
        return self.token_scales[layer, :, first_row : first_row + batch, :, :window]

    def read(self, layer: int, first_row: int, batch: int, window: int, dtype: torch.dtype):
        """``window``'s keys and values in ``dtype``, quantized entries multiplied back by their scale (in fp32,
        as the decode kernel does, then rounded once)."""
        keys, values = self.window(layer, first_row, batch, window)
        if self.quant is KVQuant.NONE:
            return keys.to(dtype), values.to(dtype)
        if self.quant is KVQuant.PER_HEAD:
            scales = self.scales[layer].view(2, 1, -1, 1, 1)
            return (keys.float() * scales[0]).to(dtype), (values.float() * scales[1]).to(dtype)
        scales = self.window_token_scales(layer, first_row, batch, window).unsqueeze(-1)
        channels = self.key_channel_scales[layer].unsqueeze(1)  # [kv_heads, 1, head_dim]
        return (keys.float() * scales[0] * channels).to(dtype), (values.float() * scales[1]).to(dtype)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` entries of slot ``src`` into slot ``dst`` (all layers), with their scales."""
        self.keys[:, dst, :, :length].copy_(self.keys[:, src, :, :length])
        self.values[:, dst, :, :length].copy_(self.values[:, src, :, :length])
        if self.quant is KVQuant.PER_TOKEN:
            self.token_scales[:, :, dst, :, :length].copy_(self.token_scales[:, :, src, :, :length])
