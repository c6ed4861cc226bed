"""Write small but real GPTQ checkpoints in the AutoGPTQ "v1" layout (or GPTQModel's "gptq_v2"), plus the fp32
model they should load as.

Written straight from AutoGPTQ's layout (below), independently of ``worker.model.gptq_layout``, and kept
deliberately naive (explicit loops for the bit packing) so that a packing bug in production code cannot be
mirrored here. Per quantized Linear with K inputs, N outputs, group size G, per = 32 / bits:

- ``qweight`` int32 [K/per, N]: code q[k, n] at bits ``bits*(k % per)`` of word [k // per, n].
- ``qzeros``  int32 [K/G, N/per]: z[g, n] - 1 at bits ``bits*(n % per)`` of word [g, n // per].
- ``scales``  fp16 [K/G, N]; ``g_idx`` int32 [K].
- W[n, k] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]).
- A Linear's bias (Qwen2's q/k/v) is stored as a plain fp16 ``bias`` next to its ``qweight``, as AutoGPTQ does.
- With ``tie_word_embeddings`` there is no ``lm_head.weight`` (as in Llama 3.2's checkpoints).

``checkpoint_format="gptq_v2"`` (ModelCloud/GPTQModel, ``gptqmodel/utils/model.py``: converting v1 to v2 adds one
to every 4-bit zero nibble) stores z itself in qzeros, so a zero code of 0 is possible (asymmetric zeros are
clamped to [0, maxq] instead of [1, maxq]); the config says ``checkpoint_format: gptq_v2`` (or, as newer
GPTQModel writes it, ``format: gptq_v2``).

``config``: any transformers causal-LM config (Llama, Mistral, Qwen2, Qwen3, ...) instead of the default Llama.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

from tests.helpers.tiny_tokenizer import write_tiny_tokenizer

QUANTIZED_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class QuantizedLinear:
    q: torch.Tensor  # int64 [K, N] codes in 0..maxq
    z: torch.Tensor  # int64 [K/G, N] zero codes (the true z, not z - 1)
    scales: torch.Tensor  # fp16 [K/G, N]
    g_idx: torch.Tensor  # int64 [K]

    def dequantize(self) -> torch.Tensor:
        """fp32 [N, K], computed in float64 from the integer codes."""
        s = self.scales.double()[self.g_idx]  # [K, N]
        return (s * (self.q - self.z[self.g_idx]).double()).T.float().contiguous()


@dataclass
class ReferenceCheckpoint:
    path: Path
    config: PretrainedConfig
    model: nn.Module | None  # fp32 reference (None when the bit width cannot be packed)
    tokenizer: object
    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    codes: dict[str, QuantizedLinear] = field(default_factory=dict)  # module name -> codes
    weight_map: dict[str, str] = field(default_factory=dict)  # tensor name -> safetensors file name


def shared_input_family(module: str) -> str:
    """Layers that read the same input: q/k/v, and gate/up."""
    for members, family in ((("q_proj", "k_proj", "v_proj"), "attn_in"), (("gate_proj", "up_proj"), "mlp_in")):
        if module.rsplit(".", 1)[1] in members:
            return f"{module.rsplit('.', 2)[0]}.{family}"
    return module


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int, desc_act: bool, sym: bool,
                 gen: torch.Generator, order: torch.Tensor | None = None, min_zero: int = 1) -> QuantizedLinear:
    """Round-to-nearest GPTQ-style quantization of a Linear weight w [N, K].

    With desc_act, ``order`` is the act-order visiting order of the input channels (random if not given).
    """
    n_out, k_in = w.shape
    maxq = 2**bits - 1
    n_groups = k_in // group_size
    if desc_act:
        order = torch.randperm(k_in, generator=gen) if order is None else order
        g_idx = torch.empty(k_in, dtype=torch.int64)
        g_idx[order] = torch.arange(k_in) // group_size
    else:
        g_idx = torch.arange(k_in) // group_size
    w64 = w.double()
    scales = torch.zeros(n_groups, n_out, dtype=torch.float16)
    z = torch.zeros(n_groups, n_out, dtype=torch.int64)
    for g in range(n_groups):
        cols = w64[:, g_idx == g]  # [N, G]
        if sym:
            scale = cols.abs().amax(dim=1) * 2 / maxq
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            zero = torch.full((n_out,), (maxq + 1) // 2, dtype=torch.int64)
        else:
            lo = cols.amin(dim=1).clamp(max=0)
            hi = cols.amax(dim=1).clamp(min=0)
            scale = (hi - lo) / maxq
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            zero = torch.round(-lo / scale).clamp(min_zero, maxq).to(torch.int64)  # v1 stores z - 1 >= 0
        scales[g] = scale.to(torch.float16)
        z[g] = zero
    s = scales.double()[g_idx]  # [K, N]: codes are computed with the stored fp16 scales
    q = torch.round(w64.T / s + z[g_idx].double()).clamp(0, maxq).to(torch.int64)
    return QuantizedLinear(q=q, z=z, scales=scales, g_idx=g_idx)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> the same bits as int32 (two's complement)."""
    assert int(words.min()) >= 0 and int(words.max()) < 2**32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_qweight(q: torch.Tensor, bits: int) -> torch.Tensor:
    per = 32 // bits
    k_in, n_out = q.shape
    words = torch.zeros(k_in // per, n_out, dtype=torch.int64)
    for k in range(k_in):
        words[k // per] |= q[k] << (bits * (k % per))
    return _to_int32(words)


def pack_qzeros(z: torch.Tensor, bits: int, stored_offset: int = 1) -> torch.Tensor:
    """v1 stores z - 1 (``stored_offset`` 1); v2 stores z (0)."""
    per = 32 // bits
    n_groups, n_out = z.shape
    words = torch.zeros(n_groups, n_out // per, dtype=torch.int64)
    for n in range(n_out):
        words[:, n // per] |= (z[:, n] - stored_offset) << (bits * (n % per))
    return _to_int32(words)


def build_tiny_model(path: Path, *, seed: int, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                     num_kv_heads=2, bias=False, config: PretrainedConfig | None = None):
    """(config, fp32 model with non-trivial norms and biases, tokenizer saved into ``path``, the generator that
    randomised them, for the writer's further draws). ``config``: another architecture (its sizes win over the
    size arguments; a Llama of those sizes when None). Every format's writer quantizes this same model."""
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
    with torch.no_grad():  # non-trivial norms and biases, so a loader that skips them is caught
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    config.architectures = [type(model).__name__]
    config.dtype = torch.float16
    return config, model, tokenizer, gen


def write_gptq_checkpoint(directory, *, bits=4, group_size=32, desc_act=False, sym=True, shards=1,
                          config_style="quantize_config", seed=0, bias=False, hidden_size=128,
                          intermediate_size=256, num_layers=2, num_heads=4,
                          num_kv_heads=2, shared_act_order=True, checkpoint_format="gptq",
                          format_key="checkpoint_format",
                          config: PretrainedConfig | None = None) -> ReferenceCheckpoint:
    """``shared_act_order``: q/k/v share one act-order permutation and gate/up another, as AutoGPTQ writes
    them (the order comes from their common input); False gives every layer its own. ``config``: the
    architecture to write (its sizes win over the size arguments; a Llama of those sizes when None)."""
    assert config_style in ("quantize_config", "config_json")
    assert checkpoint_format in ("gptq", "gptq_v2")
    v2 = checkpoint_format == "gptq_v2"
    path = Path(directory)
    config, model, tokenizer, gen = build_tiny_model(
        path, seed=seed, hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, bias=bias, config=config)
    num_layers = config.num_hidden_layers
    tied = bool(getattr(config, "tie_word_embeddings", False))

    packable = 32 % bits == 0
    reference = copy.deepcopy(model).requires_grad_(False) if packable else None
    ref_params = dict(reference.named_parameters()) if packable else {}
    tensors: dict[str, torch.Tensor] = {}
    codes: dict[str, QuantizedLinear] = {}
    orders: dict[str, torch.Tensor] = {}
    quantized = {f"model.layers.{i}.{lin}" for i in range(num_layers) for lin in QUANTIZED_LINEARS}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            module = name.rsplit(".", 1)[0]
            if tied and name == "lm_head.weight":  # tied checkpoints leave it out; the reference stays tied
                continue
            if module in quantized and name.endswith(".weight"):
                n_out, k_in = p.shape
                if packable:
                    family = shared_input_family(module) if shared_act_order else module
                    if family not in orders:
                        orders[family] = torch.randperm(k_in, generator=gen)
                    ql = quantize_rtn(p, bits, group_size, desc_act, sym, gen, orders[family],
                                      min_zero=0 if v2 else 1)
                    codes[module] = ql
                    ref_params[name].copy_(ql.dequantize())
                    tensors[f"{module}.qweight"] = pack_qweight(ql.q, bits)
                    tensors[f"{module}.qzeros"] = pack_qzeros(ql.z, bits, stored_offset=0 if v2 else 1)
                    tensors[f"{module}.scales"] = ql.scales
                    tensors[f"{module}.g_idx"] = ql.g_idx.to(torch.int32)
                else:  # e.g. 3-bit: shapes only, so the loader's "unsupported" error can be tested
                    tensors[f"{module}.qweight"] = torch.zeros(k_in * bits // 32, n_out, dtype=torch.int32)
                    tensors[f"{module}.qzeros"] = torch.zeros(k_in // group_size, n_out * bits // 32,
                                                              dtype=torch.int32)
                    tensors[f"{module}.scales"] = torch.ones(k_in // group_size, n_out, dtype=torch.float16)
                    tensors[f"{module}.g_idx"] = (torch.arange(k_in) // group_size).to(torch.int32)
            else:  # stored in fp16; the reference holds the same fp16-rounded values
                tensors[name] = p.to(torch.float16).contiguous()
                if packable:
                    ref_params[name].copy_(tensors[name].float())

    names = list(tensors)
    weight_map: dict[str, str] = {}
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        weight_map = {n: "model.safetensors" for n in names}
    else:
        per_shard = -(-len(names) // shards)
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            chunk = names[i * per_shard:(i + 1) * per_shard]
            save_file({n: tensors[n] for n in chunk}, str(path / file), metadata={"format": "pt"})
            weight_map.update({n: file for n in chunk})
        index = {"metadata": {}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    config_dict = json.loads(config.to_json_string())
    quant = {"bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym}
    if config_style == "config_json":
        config_dict["quantization_config"] = {"quant_method": "gptq", **quant, format_key: checkpoint_format}
    else:
        extra = {format_key: checkpoint_format} if v2 else {}
        (path / "quantize_config.json").write_text(json.dumps(
            {**quant, "damp_percent": 0.01, "true_sequential": True, "model_file_base_name": "model", **extra},
            indent=2))
    (path / "config.json").write_text(json.dumps(config_dict, indent=2))

    return ReferenceCheckpoint(path=path, config=config, model=reference.eval() if reference else None,
                               tokenizer=tokenizer, bits=bits, group_size=group_size, desc_act=desc_act,
                               sym=sym, codes=codes, weight_map=weight_map)
