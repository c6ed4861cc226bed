"""How a KV cache stores its entries (``XWINBOT_KV_CACHE_DTYPE``), in one place for the cache, its kernels and
the memory budget: beside the kernels, the lowest of them, so every import of it points down.

- ``KVQuant.NONE`` ("auto"): the model's dtype (bf16), as computed.
- ``KVQuant.PER_HEAD`` ("fp8"): e4m3, each entry divided by a static scale per (layer, K or V, kv head) that
  the runtime calibrates at load (``llama_runtime.calibrate_kv_scales``).
- ``KVQuant.PER_TOKEN`` ("int8"): int8 codes, each (token, kv head) vector of K and of V divided by its own
  scale absmax / 127 as it is written, so every vector keeps ~8 bits relative to its own largest entry, where
  e4m3 keeps 3 mantissa bits of every entry. K is first divided by a static scale per (layer, kv head, channel)
  that the runtime calibrates at load: a few of K's channels are many times larger than the rest in every token
  (6-12x on the demo model), and a vector's one scale would leave the quiet channels a few codes; evened out,
  each channel gets the whole int8 range (benchmarks/NOTES.md row 63). Attention multiplies q by the same
  channel scales instead of K, so reading costs nothing more.
"""

from __future__ import annotations

import enum

import torch

FP8 = torch.float8_e4m3fn
# An fp8 cache stores value / scale, with one scale per (layer, K or V, kv head) fixed once at load (see
# ``llama_runtime.calibrate_kv_scales``): the calibration's largest magnitude lands at e4m3's largest
# (``worker.kernels.FP8_MAX``) / FP8_HEADROOM, so entries up to FP8_HEADROOM times larger still fit unclipped.
# e4m3's relative precision is the same across its normal range (2^-6 .. 448, a span of ~2^15), so the headroom
# costs nothing but pushing values 2^15 below the largest into subnormals.
FP8_HEADROOM = 4.0
INT8 = torch.int8
INT8_MAX = 127.0
# A scale per (token, kv head) for K and for V, in fp32: 8 bytes per 128-wide head pair (3% over int8's 256),
# where bf16 scales (1.6%) would carry a rounding of up to 2^-9 of every entry's value, as large as int8's own
# half step at a vector's largest entries; and fp32 is what the decode kernel multiplies in, with no conversion.
TOKEN_SCALE_DTYPE = torch.float32
# A zero vector's scale: its codes are all 0 whatever it is; never 0 itself, so that writing never divides by 0.
TINY_SCALE = torch.finfo(TOKEN_SCALE_DTYPE).tiny

# K's channel scales (``key_channel_scales``) are each channel's largest calibrated |K| over its head's largest,
# kept at least this: a channel quiet in the calibration but loud in use is then enlarged at most 64x, so it
# cannot take a vector's whole scale from the others. Only resolution depends on the calibration; the range
# is each vector's own, so nothing is ever clipped.
CHANNEL_SCALE_FLOOR = 2.0**-6

# The setting's values and the cache dtype each stores in ("auto": the model's own).
SETTING_DTYPES = {"fp8": FP8, "int8": INT8}


class KVQuant(enum.Enum):
    NONE = "none"
    PER_HEAD = "per_head"
    PER_TOKEN = "per_token"

    @classmethod
    def of(cls, dtype: torch.dtype) -> KVQuant:
        """How a cache in ``dtype`` stores its entries."""
        return {FP8: cls.PER_HEAD, INT8: cls.PER_TOKEN}.get(dtype, cls.NONE)


def cache_dtype(setting: str, model_dtype: torch.dtype) -> torch.dtype:
    """The K/V cache dtype for ``XWINBOT_KV_CACHE_DTYPE`` (``auto``: the model's own)."""
    return SETTING_DTYPES.get(setting, model_dtype)


def token_scale_bytes(dtype: torch.dtype) -> int:
    """Bytes of scale per (token, kv head) for K or V in a cache of ``dtype`` (0 unless per-token scaled)."""
    if KVQuant.of(dtype) is KVQuant.PER_TOKEN:
        return torch.empty((), dtype=TOKEN_SCALE_DTYPE).element_size()
    return 0


def key_channel_scales(amax: torch.Tensor) -> torch.Tensor:
    """Per-channel scales [..., D] from each channel's largest |K| ``amax`` [..., D]: relative to the head's
    largest channel, floored at CHANNEL_SCALE_FLOOR (so in [CHANNEL_SCALE_FLOOR, 1]; an all-zero head gets 1s)."""
    amax = amax.float()
    largest = amax.amax(dim=-1, keepdim=True)
    relative = torch.where(largest > 0, amax / largest.clamp(min=TINY_SCALE), torch.ones_like(amax))
    return relative.clamp(min=CHANNEL_SCALE_FLOOR)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (int8 codes [..., D], fp32 scales [...]): scale = absmax / 127 of each vector (TINY_SCALE for
    a zero one), codes round(x / scale) to nearest (ties up: floor(y + 0.5), the same op the Triton kernel
    runs), clamped to ±127. Computed in fp32 from x as stored in the model's dtype."""
    x = x.float()
    scales = (x.abs().amax(dim=-1) / INT8_MAX).clamp(min=TINY_SCALE)
    codes = torch.floor(x / scales.unsqueeze(-1) + 0.5).clamp(-INT8_MAX, INT8_MAX).to(INT8)
    return codes, scales
