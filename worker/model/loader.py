"""Load a quantized Llama-family checkpoint (GPTQ, AWQ or compressed-tensors) into a transformers model whose
quantized Linears run on int4 kernels.

    loaded = load_model("TheBloke/Xwin-LM-13B-V0.1-GPTQ")   # or a local directory
    loaded.model(input_ids).logits

The model skeleton is built on the meta device (no memory), each quantized Linear is replaced by an int4 layer
(``TritonInt4Linear`` or ``TinygemmInt4Linear``) built from its tensors (read by ``worker.model.formats``, one
reader per producer), and the remaining tensors (embeddings, norms, lm_head) are read from the shards
straight onto the target device.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from worker.errors import CheckpointError, UnsupportedCheckpoint
from worker.model.checkpoint import TensorStore, read_config_json, resolve_checkpoint_dir, safetensors_shards
from worker.model.formats import quantized_prefixes as quantized_layer_prefixes
from worker.model.formats import read_layer
from worker.model.gptq_layout import GPTQTensors
from worker.model.int4_fusion import build_int4_modules
from worker.model.quant_config import INT4_KERNEL_GROUP_SIZES, QuantConfig, read_quant_config
from worker.model.tinygemm_linear import Int4Codes, TinygemmInt4Linear, dequantized_linear, int4_kernel_fits

log = logging.getLogger(__name__)

# The architectures the runtime (``worker.inference.llama_runtime``) computes exactly as transformers does:
# Llama 2/3.x (rope scaling, tied embeddings), Mistral (sliding window or none), Qwen2/2.5 (q/k/v bias),
# Qwen3 (q/k RMSNorm). Checked from config.json before any weight is read.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def unsupported_model_type(model_type) -> str:
    return f"unsupported model type {model_type}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"


def check_model_type(model_type) -> None:
    """UnsupportedCheckpoint (one line: the type and the supported ones) unless the runtime serves it."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedCheckpoint(unsupported_model_type(model_type))


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    quant: QuantConfig
    path: Path
    device: torch.device
    dtype: torch.dtype

    @functools.cached_property
    def eos_token_ids(self) -> set[int]:
        """Ids that end an answer: the tokenizer's EOS, and config.json's and generation_config.json's
        ``eos_token_id`` (each an id or a list: Llama 3.1 Instruct lists <|end_of_text|>, <|eom_id|>, <|eot_id|>;
        Qwen2.5 Instruct <|im_end|>, <|endoftext|>)."""
        ids = {self.tokenizer.eos_token_id}
        for configured in (self.config.eos_token_id, generation_eos_ids(self.path)):
            ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    @property
    def max_positions(self) -> int:
        return int(self.config.max_position_embeddings)


def generation_eos_ids(path: Path) -> int | list[int] | None:
    """``eos_token_id`` of the checkpoint's generation_config.json, if it has one (unreadable: ignored)."""
    try:
        return json.loads((Path(path) / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return None


def head_dim_of(config: PretrainedConfig) -> int:
    """Width of one attention head: the config's ``head_dim`` when it sets one, else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def pick_device(requested: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): the GPU when PyTorch sees one, else the CPU; a named device as it is, except that
    "cuda" without a visible GPU raises RuntimeError."""
    if requested is None or requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"XWINBOT_DEVICE={requested} but PyTorch sees no CUDA GPU")
    return device


def load_model(
    source: str | Path,
    *,
    revision: str = "main",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    int4_kernel: str = "auto",
) -> LoadedModel:
    """``int4_kernel``: "triton" (our w4a16 kernels, the GPU default), "tinygemm" (PyTorch's int4 kernels, the
    CPU default) or "auto"."""
    device = pick_device(device)
    dtype = dtype or torch.bfloat16  # int4 kernels are fastest with bf16 activations, on CPU too
    int4_kernel = choose_int4_kernel(int4_kernel, device)
    path = resolve_checkpoint_dir(source, revision)
    config_json = read_config_json(path)
    check_model_type(config_json.get("model_type"))  # before the quantization settings or any weight
    quant = read_quant_config(path, config_json)
    config = read_model_config(path)
    store = TensorStore(safetensors_shards(path))
    model = empty_model(config, dtype)
    replace_quantized_linears(model, store, quant, device, dtype, int4_kernel)
    load_plain_tensors(model, store, config, device, dtype)
    model.to(device).eval()
    tokenizer = load_tokenizer(path)
    return LoadedModel(model, tokenizer, config, quant, path, device, dtype)


def choose_int4_kernel(requested: str, device: torch.device) -> str:
    if requested not in ("auto", "triton", "tinygemm"):
        raise ValueError(f"unknown int4 kernel {requested!r} (auto, triton, tinygemm)")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "tinygemm"
    if importlib.util.find_spec("triton") is None:  # it ships with CUDA builds of PyTorch
        log.warning("triton is not installed: using PyTorch's int4 kernels (slower for batches and prompts)")
        return "tinygemm"
    return "triton"


def int4_linear_type(int4_kernel: str) -> type:
    if int4_kernel == "triton":
        from worker.model.triton_linear import TritonInt4Linear  # imports triton: only where it is used

        return TritonInt4Linear
    return TinygemmInt4Linear


def int4_layout_fits(int4_kernel: str, in_features: int, out_features: int, group: int, device: torch.device) -> bool:
    if int4_kernel == "triton":
        from worker.kernels.w4a16 import layout_fits

        return layout_fits(in_features, group)
    return int4_kernel_fits(in_features, out_features, device)


def read_model_config(path: Path) -> PretrainedConfig:
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path / 'config.json'} could not be read as a model config: {err}") from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we do the quantized loading; transformers must not try
    return config


def empty_model(config: PretrainedConfig, dtype: torch.dtype) -> nn.Module:
    """The architecture with parameters on the meta device; small buffers (rotary tables) real."""
    try:
        with init_empty_weights(include_buffers=False):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError as err:
        raise UnsupportedCheckpoint(f"model type {config.model_type!r} is not a supported causal LM: {err}") from err


def int4_codes_or_none(
    tensors: GPTQTensors, linear: nn.Linear, quant: QuantConfig, device: torch.device, int4_kernel: str
) -> Int4Codes | None:
    """The layer's codes for the int4 kernels, or None when only the dequantized path can serve it."""
    group = linear.in_features // tensors.scales.shape[0]  # a single group may have been expanded (formats)
    if not (quant.bits == 4 and group in INT4_KERNEL_GROUP_SIZES
            and int4_layout_fits(int4_kernel, linear.in_features, linear.out_features, group, device)):
        return None
    try:
        return Int4Codes.from_gptq(tensors, group, quant.zero_offset, device)
    except ValueError:  # unequal act-order groups
        return None


def decoder_layer_of(prefix: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``model.layers.3``: the unit loaded (and fused) at once."""
    return prefix.rsplit(".", 2)[0]


def replace_quantized_linears(
    model: nn.Module, store: TensorStore, quant: QuantConfig, device: torch.device, dtype: torch.dtype,
    int4_kernel: str = "tinygemm",
) -> None:
    """Layer by layer (bounded memory): read, repack (fusing where possible) and swap in each quantized Linear."""
    quantized_prefixes = quantized_layer_prefixes(store, quant)
    modules = dict(model.named_modules())
    by_layer: dict[str, list[str]] = {}
    for prefix in quantized_prefixes:
        by_layer.setdefault(decoder_layer_of(prefix), []).append(prefix)
    fallbacks = 0
    for prefixes in by_layer.values():
        codes, replacements = {}, {}
        for prefix in prefixes:
            linear = modules.get(prefix)
            if not isinstance(linear, nn.Linear):
                raise UnsupportedCheckpoint(
                    f"quantized layer {prefix} has no matching Linear layer in {type(model).__name__}")
            tensors = read_layer(store, prefix, linear, quant)
            layer_codes = int4_codes_or_none(tensors, linear, quant, device, int4_kernel)
            if layer_codes is None:
                replacements[prefix] = dequantized_linear(tensors, quant.bits, quant.zero_offset, device, dtype)
                fallbacks += 1
            else:
                codes[prefix] = layer_codes
        int4_modules, fused = build_int4_modules(codes, dtype, int4_linear_type(int4_kernel))
        for prefix, module in {**replacements, **int4_modules, **fused}.items():
            parent_name, _, child_name = prefix.rpartition(".")
            setattr(model.get_submodule(parent_name), child_name, module)
    if fallbacks:
        log.warning(
            "%d of %d quantized layers use dequantized weights (%s): more memory, same answers",
            fallbacks, len(quantized_prefixes), quant.description,
        )


def load_plain_tensors(
    model: nn.Module, store: TensorStore, config: PretrainedConfig, device: torch.device, dtype: torch.dtype
) -> None:
    """Every parameter still on the meta device comes from the shards (or from tied embeddings)."""
    tie = bool(getattr(config, "tie_word_embeddings", False))
    for name, param in list(model.named_parameters()):
        if not param.is_meta:
            continue
        if name == "lm_head.weight" and name not in store and tie:
            continue
        tensor = store.get(name)
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}")
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr,
                nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False))
    if tie and "lm_head.weight" not in store:
        model.lm_head.weight = model.get_input_embeddings().weight


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"the tokenizer files in {path} could not be loaded: {err}") from err
