"""Write AutoAWQ GEMM checkpoints of the tiny Llama, following AutoAWQ's own code step by step.

casper-hansen/AutoAWQ: ``awq/quantize/quantizer.py`` ``pseudo_quantize_tensor`` (zero_point=True: per group of G
inputs, scale = (max - min).clamp(1e-5) / 15, zero = clamp(-round(min / scale), 0, 15), code =
clamp(round(w / scale) + zero, 0, 15)), scales and zeros transposed to [K/G, N], then
``awq/modules/linear/gemm.py`` ``WQLinear_GEMM.from_linear``: intweight[k, n] = round((W[n, k] + zero*scale) /
scale), and each int32 word of qweight [K, N/8] / qzeros [K/G, N/8] holds columns ``8c + order_map[i]`` at bits
4i with order_map = [0, 2, 4, 6, 1, 3, 5, 7]. The scale is rounded to fp16 before the codes are computed (AutoAWQ
quantizes an fp16 model), so the stored scale is the one that counts. Dequantized W = (q - zero) * scale
(``awq/utils/packing_utils.py`` ``dequantize_gemm``).
"""

from __future__ import annotations

import torch

from tests.helpers.gptq_writer import ReferenceCheckpoint
from tests.helpers.tiny_llama import write_quantized_checkpoint

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_like_from_linear(intweight: torch.Tensor) -> torch.Tensor:
    """int [R, C] -> int32 [R, C/8], the loop of ``WQLinear_GEMM.from_linear``."""
    rows, cols = intweight.shape
    words = torch.zeros(rows, cols // 8, dtype=torch.int64)
    for col in range(cols // 8):
        for i in range(8):
            words[:, col] |= intweight[:, col * 8 + ORDER_MAP[i]].to(torch.int64) << (i * 4)
    return _to_int32(words)


def awq_quantize(w: torch.Tensor, group_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    n_out, k_in = w.shape
    wg = w.reshape(-1, group_size)
    max_val, min_val = wg.amax(dim=1, keepdim=True), wg.amin(dim=1, keepdim=True)
    scales = ((max_val - min_val).clamp(min=1e-5) / 15).half().double()
    zeros = (-torch.round(min_val / scales)).clamp(0, 15)
    codes = (torch.round(wg / scales) + zeros).clamp(0, 15)
    dequantized = ((codes - zeros) * scales).reshape(n_out, k_in)
    scales = scales.reshape(n_out, -1).t().contiguous()  # [K/G, N]
    zeros = zeros.reshape(n_out, -1).t().contiguous()
    # from_linear: the integer weight recomputed from the (pseudo-quantized) weight, then packed
    g = torch.arange(k_in) // group_size
    intweight = torch.round((dequantized + (zeros * scales)[g].t()) / scales[g].t()).to(torch.int64).t()  # [K, N]
    assert int(intweight.min()) >= 0 and int(intweight.max()) <= 15
    stored = {
        "qweight": pack_like_from_linear(intweight),
        "qzeros": pack_like_from_linear(zeros.to(torch.int64)),
        "scales": scales.half(),
    }
    return stored, dequantized


def write_awq_checkpoint(directory, *, group_size=32, seed=0, config_style="config_json",
                         **model_kwargs) -> ReferenceCheckpoint:
    """``config_style``: "config_json" (transformers' AwqConfig in config.json, what AutoAWQ saves today) or
    "quant_config" (older AutoAWQ's quant_config.json: w_bit, q_group_size, zero_point, version)."""
    quantization_config = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                           "version": "gemm", "modules_to_not_convert": None}
    ckpt = write_quantized_checkpoint(directory, lambda name, w: awq_quantize(w, group_size), quantization_config,
                                      seed=seed, bits=4, group_size=group_size, sym=False, **model_kwargs)
    if config_style == "quant_config":
        import json

        config = json.loads((ckpt.path / "config.json").read_text())
        del config["quantization_config"]
        (ckpt.path / "config.json").write_text(json.dumps(config, indent=2))
        (ckpt.path / "quant_config.json").write_text(json.dumps(
            {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}, indent=2))
    return ckpt
