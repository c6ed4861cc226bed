"""Write a GPTQ checkpoint with random codes in a real model's shape (AutoGPTQ v1 layout, act-order).

Random codes are enough to measure speed and memory: every byte the kernels read is real. Tensors are made on
the GPU when there is one (the 13B shape has 280 quantized layers) and saved in one shard per few layers.

Shapes (``SHAPES``, by the benchmarks' ``--shape`` names):

- ``xwin13b``: Xwin-LM-13B (Llama-2 13B: 40 heads, no GQA, 32k vocabulary, 4k positions);
- ``llama3-8b``: Llama-3.1-8B (GQA with 8 KV heads, 128,256-token vocabulary, rope_theta 500k with the "llama3"
  rope scaling, 131,072 positions in the config; the benchmarks still size their KV cache themselves, 4k);
- ``tiny`` and ``tiny-llama3``: the same two families at a size the CPU runs (the latter keeps GQA, the llama3
  rope scaling and a vocabulary over 64k, so the CPU checks the code paths the 8B takes).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from worker.model.loader import pick_device

XWIN_13B = dict(
    vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
    pad_token_id=0, tie_word_embeddings=False,
)
TINY = dict(XWIN_13B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=1000)
LLAMA3_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
    bos_token_id=128000, eos_token_id=[128001, 128008, 128009], tie_word_embeddings=False,
)
# GQA (4 query heads a KV head), llama3 rope scaling, a vocabulary over 64k (ids past int16, a wide lm_head)
TINY_LLAMA3 = dict(LLAMA3_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                   num_key_value_heads=2, head_dim=32, vocab_size=70000, bos_token_id=69990,
                   eos_token_id=[69991, 69992, 69993])
SHAPES = {"xwin13b": XWIN_13B, "llama3-8b": LLAMA3_8B, "tiny": TINY, "tiny-llama3": TINY_LLAMA3}
SHARED_INPUT = {"self_attn.q_proj": "attn", "self_attn.k_proj": "attn", "self_attn.v_proj": "attn",
                "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp"}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def act_order_g_idx(k: int, group: int, device) -> torch.Tensor:
    order = torch.randperm(k, device=device)
    g_idx = torch.empty(k, dtype=torch.int32, device=device)
    g_idx[order] = torch.arange(k, dtype=torch.int32, device=device) // group
    return g_idx


def random_gptq_linear(k: int, n: int, group: int, g_idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """4-bit symmetric (z = 8, stored as 7 in v1), the given act-order g_idx, realistic scale magnitudes."""
    return {
        "qweight": torch.randint(-(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32, device=device),
        "qzeros": torch.full((k // group, n // 8), 0x77777777, dtype=torch.int32, device=device),
        "scales": (torch.rand(k // group, n, device=device) * 0.004 + 0.002).half(),
        "g_idx": g_idx,
    }


def special_ids(shape: dict) -> tuple[int, int]:
    """(bos, eos) of a shape; with several EOS ids (Llama-3.1's), the first is the tokenizer's."""
    eos = shape.get("eos_token_id", 2)
    return shape.get("bos_token_id", 1), eos[0] if isinstance(eos, list) else eos


def write_tokenizer(path: Path, vocab_size: int, bos: int = 1, eos: int = 2) -> None:
    """A word-level tokenizer: "w5 w17 ..." is one token a word (id i is "w{i}"), with <unk> at 0 and <s>, </s>
    at the shape's BOS and EOS ids (1 and 2 for Llama-2; 128000 and 128001 for Llama-3)."""
    vocab = {f"w{i}": i for i in range(vocab_size)}
    specials = {0: "<unk>", bos: "<s>", eos: "</s>"}
    for i, name in specials.items():
        del vocab[f"w{i}"]
        vocab[name] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)


def llama2_shape_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    """A small tokenizer of the shape of Llama-2's fast one (Xwin's), trained on ``corpus``: spaces as "▁" with
    one prepended, characters outside the vocabulary as byte tokens ``<0xNN>``, decoded by Replace("▁", " "),
    ByteFallback, Fuse and Strip of the leading space, as its tokenizer.json lists them."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write_synthetic_checkpoint(path: Path, shape: dict = XWIN_13B, group: int = 128, layers_per_shard: int = 5) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    config = LlamaConfig(**shape)
    h, inter, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q_out, kv_out = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim  # GQA: kv < q
    sizes = {"self_attn.q_proj": (h, q_out), "self_attn.k_proj": (h, kv_out), "self_attn.v_proj": (h, kv_out),
             "self_attn.o_proj": (q_out, h), "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter),
             "mlp.down_proj": (inter, h)}
    weight_map: dict[str, str] = {}
    n_layers = config.num_hidden_layers
    shard_starts = list(range(0, n_layers, layers_per_shard))
    total = len(shard_starts) + 1
    for number, start in enumerate(shard_starts, 1):
        tensors = {}
        for layer in range(start, min(start + layers_per_shard, n_layers)):
            prefix = f"model.layers.{layer}"
            # As AutoGPTQ writes them: layers reading the same input share its act-order (q/k/v, gate/up).
            shared = {"attn": act_order_g_idx(h, group, device), "mlp": act_order_g_idx(h, group, device)}
            for name in LINEARS:
                k, n = sizes[name]
                family = SHARED_INPUT.get(name)
                g_idx = shared[family] if family else act_order_g_idx(k, group, device)
                for suffix, t in random_gptq_linear(k, n, group, g_idx, device).items():
                    tensors[f"{prefix}.{name}.{suffix}"] = t.cpu().clone()
            tensors[f"{prefix}.input_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
            tensors[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        save_shard(path, tensors, number, total, weight_map)
    plain = {
        "model.embed_tokens.weight": (torch.randn(vocab, h) * 0.02).half(),
        "model.norm.weight": torch.ones(h, dtype=torch.float16),
        "lm_head.weight": (torch.randn(vocab, h) * 0.02).half(),
    }
    save_shard(path, plain, total, total, weight_map)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(path)
    quant = {"bits": 4, "group_size": group, "desc_act": True, "sym": True, "damp_percent": 0.01,
             "true_sequential": True, "model_file_base_name": "model"}
    (path / "quantize_config.json").write_text(json.dumps(quant))
    write_tokenizer(path, vocab, *special_ids(shape))
    return path


def save_shard(path: Path, tensors: dict, number: int, total: int, weight_map: dict) -> None:
    name = f"model-{number:05d}-of-{total:05d}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / name)
    weight_map.update({k: name for k in tensors})
