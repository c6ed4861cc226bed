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
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from tests.helpers.gptq_writer import QUANTIZED_LINEARS, ReferenceCheckpoint
from tests.helpers.tiny_tokenizer import write_tiny_tokenizer

Quantize = Callable[[str, torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]


def build_tiny_llama(path: Path, *, seed: int, hidden_size=128, intermediate_size=256, num_layers=2,
                     num_heads=4, num_kv_heads=2, bias=False, config: PretrainedConfig | None = None):
    """(config, fp32 model with non-trivial norms and biases, tokenizer saved into ``path``). ``config``: another
    architecture to build (its sizes win over the size arguments)."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tiny_tokenizer(path)
    if config is None:
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            max_position_embeddings=256, tie_word_embeddings=False, attention_bias=bias, mlp_bias=False,
            bos_token_id=1, eos_token_id=2,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    config.architectures = [type(model).__name__]
    config.dtype = torch.float16
    return config, model, tokenizer


def write_quantized_checkpoint(directory, quantize: Quantize, quantization_config: dict, *, seed: int,
                               bits: int, group_size: int, sym: bool, desc_act: bool = False,
                               **model_kwargs) -> ReferenceCheckpoint:
    path = Path(directory)
    config, model, tokenizer = build_tiny_llama(path, seed=seed, **model_kwargs)
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
