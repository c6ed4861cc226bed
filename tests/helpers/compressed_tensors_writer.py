"""Write compressed-tensors ``pack-quantized`` W4A16 checkpoints of the tiny Llama, following its source.

neuralmagic/compressed-tensors: ``quantization/utils/helpers.py`` ``calculate_qparams`` (min_vals = min(min, 0),
max_vals = max(max, 0); symmetric: scale = max(|min_vals|, |max_vals|) / ((qmax - qmin) / 2), zero point 0;
asymmetric: scale = (max_vals - min_vals) / (qmax - qmin), zp = clamp(qmin - round(min_vals / scale), qmin, qmax);
qmin, qmax = -8, 7), ``quantization/lifecycle/forward.py`` (q = clamp(round(x / scale + zp), qmin, qmax);
x = (q - zp) * scale), ``compressors/quantized_compressors/pack_quantized.py`` ``pack_to_int32`` (value + 8 as
unsigned, ``packed |= value[:, i::8] << 4*i`` for the weight, ``value[i::8, :]`` with packed_dim=0 for the zero
point) and ``quantized_compressors/base.py`` (the zero point is saved only when asymmetric). The scale is stored
in the model's dtype (bf16 here, as llm-compressor on a bf16 model) and rounded to it before the codes are made.
"""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers.gptq_writer import ReferenceCheckpoint
from tests.helpers.tiny_llama import write_quantized_checkpoint

QMIN, QMAX = -8, 7


def pack_to_int32(value: torch.Tensor, packed_dim: int = 1) -> torch.Tensor:
    """int8 signed 4-bit values -> int32 words, as compressed-tensors' ``pack_to_int32`` (num_bits=4)."""
    assert value.dtype == torch.int8
    value = (value + 8).to(torch.uint8).numpy().astype(np.uint32)
    if packed_dim == 1:
        packed = np.zeros((value.shape[0], value.shape[1] // 8), dtype=np.uint32)
        for i in range(8):
            packed |= value[:, i::8] << 4 * i
    else:
        packed = np.zeros((value.shape[0] // 8, value.shape[1]), dtype=np.uint32)
        for i in range(8):
            packed |= value[i::8, :] << 4 * i
    return torch.from_numpy(np.ascontiguousarray(packed).view(np.int32))


def ct_quantize(w: torch.Tensor, strategy: str, group_size: int, sym: bool,
                scale_dtype=torch.bfloat16) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    n_out, k_in = w.shape
    group = group_size if strategy == "group" else k_in
    wg = w.reshape(n_out, k_in // group, group)
    min_vals = wg.amin(dim=2).clamp(max=0)
    max_vals = wg.amax(dim=2).clamp(min=0)
    if sym:
        scale = torch.maximum(min_vals.abs(), max_vals) / ((QMAX - QMIN) / 2)
    else:
        scale = (max_vals - min_vals) / (QMAX - QMIN)
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float16).eps), scale)
    scale = scale.to(scale_dtype).double()  # [N, K/G]
    zp = torch.zeros_like(scale) if sym else (QMIN - torch.round(min_vals / scale)).clamp(QMIN, QMAX)
    q = torch.round(wg / scale[..., None] + zp[..., None]).clamp(QMIN, QMAX)
    dequantized = ((q - zp[..., None]) * scale[..., None]).reshape(n_out, k_in)
    stored = {
        "weight_packed": pack_to_int32(q.reshape(n_out, k_in).to(torch.int8)),
        "weight_scale": scale.to(scale_dtype),
        "weight_shape": torch.tensor([n_out, k_in]),
    }
    if not sym:
        stored["weight_zero_point"] = pack_to_int32(zp.to(torch.int8), packed_dim=0)
    return stored, dequantized


def write_compressed_tensors_checkpoint(directory, *, strategy="group", group_size=32, sym=True, seed=0,
                                        **model_kwargs) -> ReferenceCheckpoint:
    weights = {"num_bits": 4, "type": "int", "symmetric": sym, "strategy": strategy,
               "group_size": group_size if strategy == "group" else None, "block_structure": None,
               "dynamic": False, "actorder": None, "observer": "minmax", "observer_kwargs": {}}
    quantization_config = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                      "output_activations": None, "format": "pack-quantized"}},
        "ignore": ["lm_head"], "kv_cache_scheme": None, "global_compression_ratio": None, "sparsity_config": {},
    }
    return write_quantized_checkpoint(
        directory, lambda name, w: ct_quantize(w, strategy, group_size, sym), quantization_config, seed=seed,
        bits=4, group_size=group_size if strategy == "group" else -1, sym=sym, **model_kwargs)
