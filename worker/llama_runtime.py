"""A gpt-fast style runtime for Llama-family models: static KV cache, ``prefill`` and ``decode_one_token``.

It runs the loaded transformers model's own modules (embeddings, norms, MLPs, int4 projections, rotary
tables) but does attention against a KV cache allocated once, so a decode step has fixed shapes and replays
as a CUDA graph. Attention reads a window of the cache (a power of two covering the conversation so far),
so short conversations do not pay for the whole context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.decode_graph import DecodeGraphs
from worker.sampling import sample

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
PREFILL_CHUNK = 512
MIN_WINDOW = 256


class KVCache(nn.Module):
    """Keys and values of every layer: [layers, batch, kv_heads, max_len, head_dim], allocated once."""

    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, device, dtype):
        super().__init__()
        shape = (layers, batch, kv_heads, max_len, head_dim)
        self.register_buffer("keys", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("values", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.max_len = max_len
        if self.keys.is_cuda:  # fixed addresses: CUDA graphs replay in-place updates of these buffers
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int):
        """Write k/v at input_pos; return the first ``window`` slots (all a step may attend to)."""
        keys, values = self.keys[layer], self.values[layer]
        keys.index_copy_(2, input_pos, k)
        values.index_copy_(2, input_pos, v)
        return keys[:, :, :window], values[:, :, :window]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm as one fused kernel (transformers' version is six small ones)."""
    eps = getattr(norm, "variance_epsilon", None) or norm.eps
    return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)


def attention(attn: nn.Module, x, cos, sin, mask, cache: KVCache, layer: int, input_pos, window: int) -> torch.Tensor:
    batch, length, _ = x.shape
    head_dim = attn.head_dim
    q_heads, kv_heads = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
    if hasattr(attn, "qkv_proj"):  # fused at load time (worker.int4_fusion)
        qkv = attn.qkv_proj(x)
    else:
        qkv = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    heads = qkv.view(batch, length, -1, head_dim)  # [B, T, q + k + v heads, D]
    qk = heads[:, :, : q_heads + kv_heads]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    qk = qk * cos + rotate_half(qk) * sin  # rotary for q and k heads at once
    q = qk[:, :, :q_heads].transpose(1, 2)
    k = qk[:, :, q_heads:].transpose(1, 2)
    v = heads[:, :, q_heads + kv_heads :].transpose(1, 2)
    keys, values = cache.update(layer, input_pos, k.to(cache.keys.dtype), v.to(cache.values.dtype), window)
    out = F.scaled_dot_product_attention(
        q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask, scale=attn.scaling,
        enable_gqa=q_heads != kv_heads,
    )
    return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(block, "gate_up_proj"):  # fused at load time (worker.int4_fusion)
        gate, up = block.gate_up_proj(x).split(block.gate_proj.out_features, dim=-1)
        return block.down_proj(block.act_fn(gate) * up)
    return block(x)


def forward(model: nn.Module, cache: KVCache, tokens, input_pos, window: int, last_only: bool) -> torch.Tensor:
    """tokens [B, T] at positions input_pos [T] -> logits [B, T or 1, V]; writes K/V into the cache.

    Attention reads only the first ``window`` cache slots, which must cover every position up to input_pos.
    """
    inner = model.model
    h = inner.embed_tokens(tokens)
    cos, sin = inner.rotary_emb(h, input_pos.unsqueeze(0))
    slots = torch.arange(window, device=tokens.device)
    mask = (slots.unsqueeze(0) <= input_pos.unsqueeze(1)).view(1, 1, len(input_pos), window)
    for index, layer in enumerate(inner.layers):
        h = h + attention(layer.self_attn, rms_norm(layer.input_layernorm, h), cos, sin, mask, cache, index, input_pos, window)
        h = h + mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))
    if last_only:
        h = h[:, -1:]
    return model.lm_head(rms_norm(inner.norm, h))


def prefill(model, cache, tokens, input_pos, window, temperature, top_k, top_p) -> torch.Tensor:
    logits = forward(model, cache, tokens, input_pos, window, last_only=True)
    return sample(logits[:, -1], temperature, top_k, top_p)


def decode_one_token(model, cache, token, input_pos, window, temperature, top_k, top_p) -> torch.Tensor:
    logits = forward(model, cache, token, input_pos, window, last_only=True)
    return sample(logits[:, -1], temperature, top_k, top_p)


def attention_windows(max_len: int, smallest: int = MIN_WINDOW) -> list[int]:
    """Window sizes: powers of two from ``smallest``, then ``max_len`` itself."""
    windows, size = [], smallest
    while size < max_len:
        windows.append(size)
        size *= 2
    return windows + [max_len]


class LlamaRuntime:
    """Holds the model and its cache; yields token ids for one prompt at a time (batch 1).

    ``cuda_graphs`` (CUDA only): each decode step replays a captured CUDA graph, one per attention window,
    removing Python and launch overhead. Graphs are captured here and nowhere else.
    """

    def __init__(self, model: nn.Module, max_seq_len: int, *, cuda_graphs: bool = False):
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model type {config.model_type!r} is not supported (supported: {SUPPORTED_MODEL_TYPES})")
        self.model = model
        self.device = next(model.parameters()).device
        dtype = model.get_input_embeddings().weight.dtype
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = KVCache(
            config.num_hidden_layers, 1, config.num_key_value_heads, max_seq_len, head_dim, self.device, dtype
        )
        self.max_seq_len = max_seq_len
        self.windows = attention_windows(max_seq_len)
        use_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs = DecodeGraphs(decode_one_token, model, self.cache) if use_graphs else None

    def window_for(self, length: int) -> int:
        return next(w for w in self.windows if w >= length)

    def warm_up(self) -> None:
        """Capture every window's decode graph now rather than during someone's answer."""
        if self.graphs is not None:
            for window in self.windows:
                self.graphs.get(window)

    def decode(self, token: torch.Tensor, position: int, sampling) -> torch.Tensor:
        window = self.window_for(position + 1)
        input_pos = torch.tensor([position], device=self.device)
        if self.graphs is not None:
            return self.graphs.get(window).run(token, input_pos, sampling)
        return decode_one_token(self.model, self.cache, token, input_pos, window, *sampling.as_args())

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, sampling, stop_ids: set[int]):
        """Yield new token ids until a stop id (not yielded), ``max_new_tokens`` or the cache is full."""
        if len(prompt_ids) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed {self.max_seq_len}")
        prompt = torch.tensor([prompt_ids], device=self.device)
        for start in range(0, len(prompt_ids), PREFILL_CHUNK):
            chunk = prompt[:, start : start + PREFILL_CHUNK]
            end = start + chunk.shape[1]
            positions = torch.arange(start, end, device=self.device)
            token = prefill(self.model, self.cache, chunk, positions, self.window_for(end), *sampling.as_args())
        position = len(prompt_ids)
        for produced in range(1, max_new_tokens + 1):
            token_id = int(token[0])
            if token_id in stop_ids:
                return
            yield token_id
            if produced == max_new_tokens or position >= self.max_seq_len:
                return
            token = self.decode(token.view(1, 1), position, sampling).clone()
            position += 1
