"""The tiny random model every format writer quantizes (a Llama, or any architecture's config), and the common
part of writing its checkpoint.

A writer supplies ``quantize(module_name, weight [N, K] float64) -> (stored tensors by suffix, dequantized
weight [N, K])``, computed by the producer's own formulas; this module builds the model, stores every other
tensor in fp16, and returns the fp32 reference model holding exactly the dequantized weights.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.helpers.gptq_writer import QUANTIZED_LINEARS, ReferenceCheckpoint, build_tiny_model

Quantize = Callable[[str, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def write_quantized_checkpoint(directory, quantize: Quantize, quantization_config: dict, *, seed: int,
                               bits: int, group_size: int, sym: bool, desc_act: bool = False,
                               **model_kwargs) -> ReferenceCheckpoint:
    path = Path(directory)
    config, model, tokenizer, _ = build_tiny_model(path, seed=seed, **model_kwargs)
    reference = copy.deepcopy(model).requires_grad_(False)
    ref_params = dict(reference.named_parameters())
    quantized = {f"model.layers.{i}.{lin}" for i in range(config.num_hidden_layers) for lin in QUANTIZED_LINEARS}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            module = name.rsplit(".", 1)[0]
            if tied and name == "lm_head.weight":  # tied checkpoints leave it out; the reference stays tied
                continue
            if module in quantized and name.endswith(".weight"):
                stored, dequantized = quantize(module, p.double())
                tensors.update({f"{module}.{suffix}": t.contiguous() for suffix, t in stored.items()})
                ref_params[name].copy_(dequantized.float())
            else:
                tensors[name] = p.to(torch.float16).contiguous()
                ref_params[name].copy_(tensors[name].float())
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config_dict = json.loads(config.to_json_string())
    config_dict["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(config_dict, indent=2))
    return ReferenceCheckpoint(path=path, config=config, model=reference.eval(), tokenizer=tokenizer, bits=bits,
                               group_size=group_size, desc_act=desc_act, sym=sym,
                               weight_map={n: "model.safetensors" for n in tensors})
