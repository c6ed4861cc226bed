"""A gpt-fast style runtime for Llama-family models: static KV cache, ``prefill`` and ``decode_one_token``.

The families (``SUPPORTED_MODEL_TYPES``) differ only in what the model's own modules and config hold, which
the runtime takes from them: rotary tables with any rope scaling (Llama 3.1's ``llama3``) from ``rotary_emb``;
q/k/v bias (Qwen2) inside the projections; per-head q/k RMSNorm (Qwen3's ``q_norm``/``k_norm``) before the
rotary; a sliding window (Mistral, windowed Qwen layers) in the attention mask and the decode kernel; tied
embeddings through ``lm_head``.

It runs the loaded transformers model's own modules (embeddings, norms, MLPs, int4 projections, rotary
tables) but does attention against a KV cache allocated once, so a decode step has fixed shapes and replays
as a CUDA graph. Attention reads a window of the cache (a power of two covering the conversation so far),
so short conversations do not pay for the whole context.

The cache has ``max_batch`` slots, one conversation each. A decode step runs the conversations in slots
``0 .. n-1`` at once, each at its own position (rows are at different lengths): its own rotary angles, its
own K/V write and its own causal mask. The caller (``worker.inference.engine``) keeps the decoding conversations in the
lowest slots, so a step reads a plain slice of the cache and free slots cost nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from worker.inference.decode_graph import DecodeGraphs
from worker.inference.kv_cache import KVCache
from worker.inference.layer_ops import (
    act_order_perm,
    add_rms_norm,
    gate_up_silu_mul,
    kernels_serve,
    output_order_for,
    projection_partials,
    rotary_into_cache,
)
from worker.inference.prefill_graph import PrefillGraphs
from worker.inference.sampling import GenerationParams, SamplingTensors, sample
from worker.kernels.kv_quant import KVQuant
from worker.model.loader import SUPPORTED_MODEL_TYPES, head_dim_of, unsupported_model_type

PREFILL_CHUNK = 512
MIN_WINDOW = 256

CALIBRATION_TOKENS = 256  # the fixed prompt a quantized cache's static scales are calibrated on


def calibration_tokens(config, length: int = CALIBRATION_TOKENS) -> torch.Tensor:
    """[1, length] token ids for ``calibrate_kv_scales``: the model's BOS (the first position's keys are often
    the odd ones out) then ids drawn with a fixed seed, so every start of a model gets the same scales."""
    ids = torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    if getattr(config, "bos_token_id", None) is not None:
        ids[0, 0] = config.bos_token_id
    return ids


@torch.inference_mode()
def calibrate_kv_scales(model: nn.Module, cache: KVCache) -> None:
    """A quantized cache's static scales from one forward of ``calibration_tokens`` into a scratch cache in the
    model's dtype: an fp8 cache's per (layer, kv head) scales, an int8 cache's K channel scales. Static, so they
    suit the fixed buffers CUDA graphs replay (as vLLM's per-layer k_scale/v_scale are static), and computed at
    load, so no checkpoint has to ship them."""
    layers, _, kv_heads, _, head_dim = cache.keys.shape
    tokens = calibration_tokens(model.config).to(cache.keys.device)
    length = tokens.shape[1]
    scratch = KVCache(layers, 1, kv_heads, length, head_dim, cache.keys.device,
                      model.get_input_embeddings().weight.dtype)
    forward(model, scratch, tokens, torch.arange(length, device=tokens.device), length, last_only=True)
    keys, values = (t[:, 0].abs().float() for t in (scratch.keys, scratch.values))  # [layers, kv_heads, T, D]
    if cache.quant is KVQuant.PER_TOKEN:
        cache.set_key_channel_scales(keys.amax(dim=-2))
    else:
        cache.set_scales(torch.stack([keys.amax(dim=(-1, -2)), values.amax(dim=(-1, -2))], dim=1))


def sliding_window_of(attn: nn.Module, config) -> int | None:
    """How many entries (its own included) a layer's queries see, or None for all: Qwen2/Qwen3 set it per
    layer (``attn.sliding_window``, from ``layer_types``), Mistral for every layer (``config.sliding_window``)."""
    if hasattr(attn, "sliding_window"):
        return attn.sliding_window
    return getattr(config, "sliding_window", None)


@dataclass
class AttentionPart:
    """Rows of a forward that attend as one batch: ``batch`` cache slots from ``first_row``, ``length`` tokens
    each at ``positions`` [batch, length], reading the first ``window`` entries of their slots. A decode step is
    one part; a mixed step (``LlamaRuntime.launch_mixed``) is the decoding rows' part then one part a prefill
    segment, all sharing every matmul. ``decode_kernel``: one-token rows on the GPU attend with
    ``worker.kernels.decode_attention`` instead of ``scaled_dot_product_attention``. ``slots`` [batch] (on the
    device): each row's slot instead of first_row + row, -1 for a padding row that writes nothing (a captured
    prefill's input, ``worker.inference.prefill_graph``). ``whole_prompts``: rows are prompts from position 0,
    which attend to their own keys and values as computed, causally, without reading the cache: no gather of
    slots, and SDPA's flash kernel where no mask is needed (``window`` is then their length)."""

    first_row: int
    positions: torch.Tensor
    window: int
    decode_kernel: bool = False
    slots: torch.Tensor | None = None
    whole_prompts: bool = False
    cos: torch.Tensor | None = None  # rotary tables of these rows [batch, length, D], set by ``run_layers``
    sin: torch.Tensor | None = None
    masks: dict = field(default_factory=dict)  # by sliding window: built on first use, shared by the layers

    @property
    def rows(self) -> int:
        return self.positions.numel()

    def sliding(self, sliding_window: int | None) -> int | None:
        """The layer's sliding window as this part sees it: None when every entry read is inside it."""
        return None if sliding_window is None or sliding_window >= self.window else sliding_window

    def mask(self, sliding: int | None) -> torch.Tensor:
        """[batch, 1, length, window]: causal per row; with ``sliding``, a query sees entries position - sliding
        + 1 .. position."""
        if sliding not in self.masks:
            batch, length = self.positions.shape
            slots = torch.arange(self.window, device=self.positions.device).view(1, 1, 1, self.window)
            query = self.positions.view(batch, 1, length, 1)
            mask = slots <= query
            self.masks[sliding] = mask if sliding is None else mask & (slots > query - sliding)
        return self.masks[sliding]


def part_attention(attn: nn.Module, qkv: torch.Tensor, part: AttentionPart, cache: KVCache, layer: int,
                   dtype: torch.dtype, sliding_window: int | None,
                   order: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """One part's attention from its rows of qkv's partial sums: rotary and its K/V write into its slots, then
    attention over its window -> (out [rows, q_heads * D], whether out is in ``order``, o_proj's input order:
    only the decode kernel writes it so)."""
    head_dim = attn.head_dim
    q_heads, kv_heads = attn.q_proj.out_features // head_dim, attn.k_proj.out_features // head_dim
    batch, length = part.positions.shape
    q = rotary_into_cache(qkv, part.cos, part.sin, part.positions, cache, layer, part.first_row, q_heads, kv_heads,
                          dtype, getattr(attn, "q_norm", None), getattr(attn, "k_norm", None),  # Qwen3's q/k norms
                          slots=part.slots, with_kv=part.whole_prompts)
    sliding = part.sliding(sliding_window)
    if part.whole_prompts:
        q, keys, values = q
        # A prompt's padding sits at its end, after every real token: causal attention keeps it out of them.
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=None if sliding is None else part.mask(sliding), is_causal=sliding is None,
            scale=attn.scaling, enable_gqa=q_heads != kv_heads,
        )
        return out.transpose(1, 2).reshape(batch * length, -1), False
    if part.decode_kernel and length == 1 and kernels_serve(q, q.dtype):
        from worker.kernels.decode_attention import decode_attention  # Triton: only where it runs

        keys, values = cache.window(layer, part.first_row, batch, part.window)
        per_head = cache.scales[layer] if cache.quant is KVQuant.PER_HEAD else None
        per_token = (cache.window_token_scales(layer, part.first_row, batch, part.window)
                     if cache.quant is KVQuant.PER_TOKEN else None)
        out = decode_attention(q[:, :, 0].contiguous(), keys, values, part.positions.reshape(-1), part.window,
                               attn.scaling, order, sliding, per_head, token_scales=per_token,
                               key_channel_scales=cache.key_channel_scales[layer] if per_token is not None else None)
        return out, order is not None
    keys, values = cache.read(layer, part.first_row, batch, part.window, q.dtype)
    out = F.scaled_dot_product_attention(
        q, keys, values, attn_mask=part.mask(sliding), scale=attn.scaling,
        enable_gqa=q_heads != kv_heads,
    )
    return out.transpose(1, 2).reshape(batch * length, -1), False


def rows_of(partials: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Rows first.. of split-K partial sums [split, rows, N], contiguous (the kernels index splits by
    ``partials[0].numel()``): a view with one split, a copy with more."""
    if first == 0 and count == partials.shape[1]:
        return partials
    return partials[:, first : first + count].contiguous()


def attention(attn: nn.Module, x, ordered: bool, parts: list[AttentionPart], cache: KVCache, layer: int,
              sliding_window: int | None = None) -> torch.Tensor:
    """Self-attention of x (its rows are the parts' rows, in order; in qkv's input order when ``ordered``)
    -> o_proj's partial sums. q/k/v are projected for all rows at once; each part then attends on its own."""
    if hasattr(attn, "qkv_proj"):  # fused at load time (worker.model.int4_fusion)
        qkv = projection_partials(attn.qkv_proj, x, ordered)
    else:
        qkv = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
        qkv = qkv.reshape(1, -1, qkv.shape[-1])
    # One part (a decode step, a prefill) may have the decode kernel write o_proj's input order; several
    # parts' outputs are concatenated, so each keeps the plain order.
    order = output_order_for(attn.o_proj) if len(parts) == 1 else None
    outs, first, out_ordered = [], 0, False
    for part in parts:
        out, out_ordered = part_attention(attn, rows_of(qkv, first, part.rows), part, cache, layer, x.dtype,
                                          sliding_window, order)
        outs.append(out)
        first += part.rows
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    return projection_partials(attn.o_proj, out, ordered=out_ordered)


def mlp(block: nn.Module, x: torch.Tensor, ordered: bool) -> torch.Tensor:
    """The MLP of x (in gate_up's input order when ``ordered``) -> down_proj's partial sums."""
    if hasattr(block, "gate_up_proj"):  # fused at load time (worker.model.int4_fusion)
        hidden = gate_up_silu_mul(block.gate_up_proj, x, ordered, block.act_fn, x.dtype)
        return projection_partials(block.down_proj, hidden)
    return block(x).reshape(1, -1, x.shape[-1])


def attention_order(layer: nn.Module) -> torch.Tensor | None:
    """The input order (act-order permutation) of the layer's fused q/k/v matmul, if it gathers one."""
    return act_order_perm(getattr(layer.self_attn, "qkv_proj", None))


def mlp_order(layer: nn.Module) -> torch.Tensor | None:
    """The input order of the layer's fused gate/up matmul, if it gathers one."""
    return act_order_perm(getattr(layer.mlp, "gate_up_proj", None))


def run_layers(model: nn.Module, cache: KVCache, h: torch.Tensor, parts: list[AttentionPart]) -> torch.Tensor:
    """The decoder layers on embeddings h (rows: the parts' rows in order, as [B, T, H] or [rows, H]) -> the
    final norm's output, h's shape; writes each part's K/V into its cache slots. Matmuls, norms and MLPs run
    once on all rows; attention per part (``attention``)."""
    inner = model.model
    positions = torch.cat([part.positions.reshape(1, -1) for part in parts], dim=1) if len(parts) > 1 \
        else parts[0].positions.reshape(1, -1)
    cos, sin = inner.rotary_emb(h, positions)  # [1, rows, D]
    first = 0
    for part in parts:
        part.cos, part.sin = (t[0, first : first + part.rows].view(*part.positions.shape, -1) for t in (cos, sin))
        first += part.rows
    layers = list(inner.layers)
    # Each norm hands the next int4 layer its input already in that layer's act-order (None: no reordering).
    h, x = add_rms_norm(h, None, layers[0].input_layernorm, attention_order(layers[0]))
    for index, layer in enumerate(layers):
        following = layers[index + 1] if index + 1 < len(layers) else None
        delta = attention(layer.self_attn, x, attention_order(layer) is not None, parts, cache, index,
                          sliding_window_of(layer.self_attn, model.config))
        h, x = add_rms_norm(h, delta, layer.post_attention_layernorm, mlp_order(layer))
        delta = mlp(layer.mlp, x, mlp_order(layer) is not None)
        if following is None:  # the final norm feeds lm_head, which gathers nothing
            next_norm, next_order = inner.norm, None
        else:
            next_norm, next_order = following.input_layernorm, attention_order(following)
        h, x = add_rms_norm(h, delta, next_norm, next_order)
    return x


def forward(model: nn.Module, cache: KVCache, tokens, input_pos, window: int, last_only: bool, first_row: int = 0,
            last_index: torch.Tensor | None = None, decode_kernel: bool = False, slots: torch.Tensor | None = None,
            whole_prompts: bool = False):
    """tokens [B, T] of cache slots first_row.. (or ``slots`` [B], see ``AttentionPart``) at positions input_pos
    ([T] shared, or [B, T] per row) -> logits [B, T or 1, V]; writes K/V into the cache. ``last_only``: logits of
    position T-1 only, or of position last_index[b] in row b (rows padded at their end).

    Attention reads only the first ``window`` cache entries, which must cover every position in input_pos;
    ``whole_prompts`` (input_pos 0..T-1): none, each row attends to its own tokens (``AttentionPart``).
    """
    batch, length = tokens.shape
    positions = input_pos.expand(batch, length) if input_pos.dim() == 1 else input_pos
    part = AttentionPart(first_row, positions, length if whole_prompts else window, decode_kernel, slots=slots,
                         whole_prompts=whole_prompts)
    x = run_layers(model, cache, model.model.embed_tokens(tokens), [part])
    if last_index is not None:
        x = x[torch.arange(batch, device=x.device), last_index].unsqueeze(1)
    elif last_only:
        x = x[:, -1:]
    return model.lm_head(x)


def prefill(model, cache, tokens, input_pos, window, temperature, top_k, top_p, first_row: int = 0,
            last_index: torch.Tensor | None = None, whole_prompts: bool = False) -> torch.Tensor:
    logits = forward(model, cache, tokens, input_pos, window, last_only=True, first_row=first_row,
                     last_index=last_index, whole_prompts=whole_prompts)
    return sample(logits[:, -1], temperature, top_k, top_p)


def decode_one_token(model, cache, token, input_pos, window, temperature, top_k, top_p,
                     decode_kernel: bool = False) -> torch.Tensor:
    """token [B, 1] of slots 0..B-1 at positions input_pos ([1] shared or [B, 1]) -> next token ids [B]."""
    logits = forward(model, cache, token, input_pos, window, last_only=True, decode_kernel=decode_kernel)
    return sample(logits[:, -1], temperature, top_k, top_p)


def attention_windows(max_len: int, smallest: int = MIN_WINDOW) -> list[int]:
    """Window sizes: powers of two from ``smallest``, then ``max_len`` itself."""
    windows, size = [], smallest
    while size < max_len:
        windows.append(size)
        size *= 2
    return windows + [max_len]


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes a CUDA graph is captured for: 1, 2, 4, … below ``max_batch``, then ``max_batch``."""
    buckets, size = [], 1
    while size < max_batch:
        buckets.append(size)
        size *= 2
    return buckets + [max_batch]


@dataclass(frozen=True)
class Segment:
    """Part of a prompt to prefill in a mixed step: ``token_ids`` at positions start.. of cache ``slot``."""

    slot: int
    start: int
    token_ids: list[int]

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True)
class LaunchedStep:
    """A decode step enqueued on the device and not waited for: ``LlamaRuntime.read`` gives its tokens."""

    tokens: torch.Tensor  # [rows] on the host: pinned, filled by a copy queued after the step (CUDA)
    done: torch.cuda.Event | None  # recorded after that copy (CUDA); None on the CPU, where the step has run


class LlamaRuntime:
    """Holds the model, its cache of ``max_batch`` slots and the per-slot sampling settings.

    ``prefill_chunk`` writes part of a prompt into one slot; ``decode`` advances slots 0..n-1 one token each;
    ``generate`` is the batch-1 loop on slot 0. ``cuda_graphs`` (CUDA only): a decode step replays a graph
    captured per (batch bucket, attention window); a step of n rows runs the smallest bucket >= n, the extra
    rows reading and writing only the very last cache entry of slots n.., which no conversation reads before
    writing it itself (a row attends to entries <= its own position, and writes its position first).

    A step's inputs live on the device (``step_input``) and the step feeds its own outputs back there: each
    row's sampled token, at the next position. So ``launch`` can enqueue step N+1 before the host has read
    step N's tokens (``read``): the host turns them into text while the device computes. The host sets a
    slot's inputs only when conversations join (``set_inputs``); ``move_slot`` carries them along.
    """

    def __init__(self, model: nn.Module, max_seq_len: int, *, max_batch: int = 1, cuda_graphs: bool = False,
                 kv_dtype: torch.dtype | None = None, attention: str = "triton"):
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(unsupported_model_type(config.model_type))
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if attention not in ("sdpa", "triton"):
            raise ValueError(f"attention must be 'sdpa' or 'triton', got {attention!r}")
        self.model = model
        self.device = next(model.parameters()).device
        dtype = model.get_input_embeddings().weight.dtype
        head_dim = head_dim_of(config)
        self.cache = KVCache(config.num_hidden_layers, max_batch, config.num_key_value_heads, max_seq_len, head_dim,
                             self.device, kv_dtype or dtype)
        if self.cache.quant is not KVQuant.NONE:
            calibrate_kv_scales(model, self.cache)
        self.max_seq_len = max_seq_len
        self.max_batch = max_batch
        self.windows = attention_windows(max_seq_len)
        self.buckets = batch_buckets(max_batch)
        # Static inputs of a decode step (graphs read them in place and write the next step's): row i is slot i.
        self.step_input = torch.zeros((2, max_batch), dtype=torch.long, device=self.device)  # tokens; positions
        unused = GenerationParams(temperature=0.0, top_k=0, top_p=1.0)  # valid settings for slots nobody uses yet
        self.sampling = SamplingTensors.of([unused] * max_batch, self.device)  # each slot's settings
        use_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs = DecodeGraphs(self._graph_step) if use_graphs else None
        # Whole prompts prefill as captured passes too where the GPU kernels run (their K/V write takes the slots
        # from the graph's inputs); other prompts, and later chunks of long ones, eagerly.
        self.prefill_graphs = PrefillGraphs(self._prefill_pass, self.buckets, max_seq_len, self.device,
                                            self.graphs.side) if use_graphs and dtype != torch.float32 else None
        self.pad_to_buckets = use_graphs  # eager steps run exactly the live rows
        head_dim_fits = head_dim & (head_dim - 1) == 0  # the decode attention kernel tiles whole power-of-two heads
        # Decode steps on the GPU: worker.kernels.decode_attention reads each row's entries only, a faster step
        # than SDPA's (benchmarks/NOTES.md row 18); "sdpa" keeps PyTorch's kernel.
        self.decode_kernel = attention == "triton" and head_dim_fits

    def window_for(self, length: int) -> int:
        return next(w for w in self.windows if w >= length)

    def bucket_for(self, rows: int) -> int:
        return next(b for b in self.buckets if b >= rows)

    def warm_up(self) -> None:
        """Compile and capture now rather than during someone's answer: a long and a short prefill (they
        write slot 0's cache, which a conversation overwrites before reading), every (batch bucket, window)
        decode graph and the smaller captured prefill passes (the rest: ``capture_idle``)."""
        if self.device.type == "cuda":
            for length in {min(PREFILL_CHUNK, self.max_seq_len), 8}:
                self.prefill_chunk(0, [0] * length, 0)
        if self.graphs is not None:
            with torch.inference_mode():
                for batch in self.buckets:
                    for window in self.windows:
                        self.graphs.get(batch, window)
        if self.prefill_graphs is not None:
            with torch.inference_mode():
                self.prefill_graphs.capture_start()

    @torch.inference_mode()
    def capture_idle(self) -> bool:
        """Capture one more prefill pass (call only while nothing else runs); False when none is left."""
        return self.prefill_graphs is not None and self.prefill_graphs.capture_next()

    def _graph_step(self, batch: int, window: int):
        """The decode step a graph captures: slots 0..batch-1, reading the static inputs in place."""
        # Capture (and its warm-up runs) write K/V at the last entry of these slots: harmless, see the class.
        self.step_input[1, :batch].fill_(self.max_seq_len - 1)
        return lambda: self._step(batch, window)

    def _step(self, batch: int, window: int) -> torch.Tensor:
        """Slots 0..batch-1 one token on from ``step_input`` -> the sampled tokens [batch]. Then each row's
        input is its sampled token at the next position, so the next step needs nothing from the host. The
        position stops at the cache's last entry: padded rows stay there, and nothing is written past it."""
        tokens, positions = self.step_input[0, :batch], self.step_input[1, :batch]
        sampling = (t[:batch] for t in self.sampling.as_args())
        out = decode_one_token(self.model, self.cache, tokens.view(batch, 1), positions.view(batch, 1), window,
                               *sampling, decode_kernel=self.decode_kernel)
        tokens.copy_(out)
        positions.add_(1).clamp_(max=self.max_seq_len - 1)
        return out

    def _graph(self, batch: int, window: int):
        """The captured step for (batch, window). Capturing one now (``warm_up`` did not) runs it on placeholder
        rows, which feed back into ``step_input``: the inputs already set for this step are put back after."""
        if (batch, window) in self.graphs.captured:
            return self.graphs.captured[(batch, window)]
        inputs = self.step_input.clone()
        graph = self.graphs.get(batch, window)
        self.step_input.copy_(inputs)
        return graph

    def _from_host(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the device, its copy queued like the steps: pinned on CUDA, where a pageable copy would wait
        for the step in flight (PyTorch keeps a pinned block until its copy is done)."""
        if self.device.type == "cuda":
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True)

    def _write_from_host(self, destination: torch.Tensor, host: torch.Tensor) -> None:
        """Copy ``host`` into ``destination`` on the device, queued like the steps (pinned, as ``_from_host``)."""
        destination.copy_(host.pin_memory() if self.device.type == "cuda" else host, non_blocking=True)

    def set_inputs(self, first_slot: int, tokens: Sequence[int], positions: Sequence[int]) -> None:
        """Feed tokens[i] at positions[i] of slot first_slot + i in the next step (conversations joining the
        decoding ones): one copy for them all. Each operation the engine's thread runs is a GIL round trip while
        job threads run Python (benchmarks/NOTES.md, "Where the 32-user time goes")."""
        self._write_from_host(self.step_input[:, first_slot : first_slot + len(tokens)],
                              torch.tensor([list(tokens), list(positions)], dtype=torch.long))

    def set_sampling(self, first_slot: int, params: Sequence[GenerationParams]) -> None:
        """The settings the conversations in slots first_slot.. sample with, params[i] for slot first_slot + i:
        one copy for them all."""
        self._write_from_host(self.sampling.rows[:, first_slot : first_slot + len(params)],
                              SamplingTensors.of(list(params), torch.device("cpu")).rows)

    @torch.inference_mode()
    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Move a conversation (its first ``length`` cache entries, its sampling settings and its next step's
        inputs) to another slot. Device copies queued after any step in flight: they move what it wrote."""
        self.cache.move(src, dst, length)
        self.sampling.rows[:, dst].copy_(self.sampling.rows[:, src])
        self.step_input[:, dst].copy_(self.step_input[:, src])

    @torch.inference_mode()
    def prefill_chunk(self, slot: int, token_ids: list[int], start: int) -> int:
        """Write prompt tokens at positions start.. of ``slot``; return the token sampled after the last one."""
        return self.prefill_prompts(slot, [token_ids], start)[0]

    @torch.inference_mode()
    def prefill_prompts(self, first_slot: int, prompts: list[list[int]], start: int = 0) -> list[int]:
        """Prompts (or their parts from position ``start``) into slots first_slot.. in one forward, rows padded
        at their end to the longest; return the token sampled after each. A padded row writes K/V past its
        prompt, entries its decoding overwrites before it reads them."""
        longest = max(len(p) for p in prompts)
        end = start + longest
        if end > self.max_seq_len:
            raise ValueError(f"{end} tokens exceed the {self.max_seq_len}-token cache")
        rows = len(prompts)
        sampling = [t[first_slot : first_slot + rows] for t in self.sampling.as_args()]
        shape = self.prefill_graphs.ready_shape(rows, longest) if self.prefill_graphs and start == 0 else None
        if shape is not None:
            logits = self.prefill_graphs.run(shape, first_slot, prompts, self._write_from_host)
            return sample(logits, *sampling).tolist()
        host = torch.tensor([prompt + [0] * (longest - len(prompt)) + [len(prompt) - 1] for prompt in prompts],
                            dtype=torch.long)  # each row: its tokens padded to the longest, then its last index
        on_device = self._from_host(host)
        tokens, last = on_device[:, :longest], on_device[:, longest]
        positions = torch.arange(start, end, device=self.device)
        token = prefill(self.model, self.cache, tokens, positions, self.window_for(end),
                        *sampling, first_row=first_slot, last_index=last, whole_prompts=start == 0)
        return token.tolist()

    def _prefill_pass(self, batch: int, length: int, inputs: torch.Tensor):
        """The prefill pass a graph captures: ``batch`` prompts padded to ``length`` tokens from position 0, read
        from ``inputs`` (``prefill_graph.pass_inputs``' layout) -> the logits after each one's last token."""
        tokens = inputs[: batch * length].view(batch, length)
        last, slots = inputs[batch * length : batch * length + batch], inputs[batch * length + batch :]

        def run() -> torch.Tensor:
            positions = torch.arange(length, device=self.device)
            logits = forward(self.model, self.cache, tokens, positions, self.window_for(length), last_only=True,
                             last_index=last, slots=slots, whole_prompts=True)
            return logits[:, -1]

        return run

    @torch.inference_mode()
    def launch(self, rows: int, longest: int) -> LaunchedStep:
        """Enqueue one step for slots 0..rows-1 from what ``step_input`` holds, without waiting for it (or for
        an earlier one). ``longest``: the furthest position fed + 1, which picks the attention window."""
        window = self.window_for(longest)
        batch = self.bucket_for(rows) if self.pad_to_buckets else rows
        graph = self._graph(batch, window) if self.graphs is not None else None
        if batch > rows:  # padded rows touch only the last cache entry (see the class)
            self.step_input[1, rows:batch].fill_(self.max_seq_len - 1)
        out = graph.replay() if graph is not None else self._step(batch, window)
        return self._launched(out[:rows])

    def _launched(self, out: torch.Tensor) -> LaunchedStep:
        """A step's sampled tokens on their way to the host: copied (on CUDA into pinned memory, before the next
        replay overwrites a graph's output) behind the step, with an event to wait for that copy alone."""
        if self.device.type != "cuda":
            return LaunchedStep(out, None)
        tokens = torch.empty(out.shape[0], dtype=torch.long, pin_memory=True)
        tokens.copy_(out, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return LaunchedStep(tokens, done)

    @torch.inference_mode()
    def launch_mixed(self, rows: int, longest: int, segments: list[Segment]) -> LaunchedStep:
        """Enqueue ONE forward for slots 0..rows-1 one token on from ``step_input`` (as ``launch`` does; ``longest``
        likewise) and prefill ``segments`` (parts of prompts into their slots), without waiting for it. The
        matmuls read the weights once for all of them, so decoding rows go on while a prompt is prefilled
        instead of pausing for it. Eager (the shapes vary). The step's tokens: one a decoding row (fed back
        into ``step_input`` as ``launch``'s are) then one a segment, sampled after its last token with its
        slot's settings (meaningful when the segment ends its prompt)."""
        for segment in segments:
            if not segment.token_ids:
                raise ValueError(f"an empty prefill segment for slot {segment.slot}")
            if not rows <= segment.slot < self.max_batch:
                raise ValueError(f"segment slot {segment.slot} is not a free slot above the {rows} decoding ones")
            if segment.end > self.max_seq_len:
                raise ValueError(f"{segment.end} tokens exceed the {self.max_seq_len}-token cache")
        lengths = [len(segment.token_ids) for segment in segments]
        prefill = sum(lengths)
        logit_rows = list(range(rows)) + [rows + end - 1 for end in itertools.accumulate(lengths)]
        slots = list(range(rows)) + [segment.slot for segment in segments]
        host = torch.tensor([t for segment in segments for t in segment.token_ids]
                            + [p for segment in segments for p in range(segment.start, segment.end)]
                            + logit_rows + slots, dtype=torch.long)
        ids, positions, logit_rows, slots = self._from_host(host).split(
            [prefill, prefill, len(logit_rows), len(slots)])
        parts, first = [], rows
        if rows:
            parts.append(AttentionPart(0, self.step_input[1, :rows].view(rows, 1), self.window_for(longest),
                                       self.decode_kernel))
        for segment, length in zip(segments, lengths):
            parts.append(AttentionPart(segment.slot, positions[first - rows : first - rows + length].view(1, length),
                                       self.window_for(segment.end)))
            first += length
        tokens = torch.cat([self.step_input[0, :rows], ids])
        x = run_layers(self.model, self.cache, self.model.model.embed_tokens(tokens), parts)
        logits = self.model.lm_head(x[logit_rows])
        out = sample(logits, *(t[slots] for t in self.sampling.as_args()))
        self.step_input[0, :rows].copy_(out[:rows])
        self.step_input[1, :rows].add_(1).clamp_(max=self.max_seq_len - 1)
        return self._launched(out)

    def read(self, step: LaunchedStep) -> list[int]:
        """The tokens a launched step sampled, one per row; waits for that step only, not for later ones."""
        if step.done is not None:
            step.done.synchronize()
        return step.tokens.tolist()

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int]) -> list[int]:
        """One step for slots 0..n-1: token i is fed at positions[i] of slot i; returns the next token of each."""
        self.set_inputs(0, tokens, positions)
        return self.read(self.launch(len(tokens), max(positions) + 1))

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, params: GenerationParams,
                 stop_ids: Collection[int] = frozenset()):
        """Batch 1 on slot 0: yield new token ids until a stop id (not yielded), ``max_new_tokens`` or a full cache.
        The worker passes no stop ids (``AnswerText`` watches for the end of the answer); benchmarks stop at EOS."""
        if len(prompt_ids) + max_new_tokens > self.max_seq_len:
            raise ValueError(f"{len(prompt_ids)} prompt + {max_new_tokens} new tokens exceed {self.max_seq_len}")
        self.set_sampling(0, [params])
        for start in range(0, len(prompt_ids), PREFILL_CHUNK):
            token = self.prefill_chunk(0, prompt_ids[start : start + PREFILL_CHUNK], start)
        position = len(prompt_ids)
        for produced in range(1, max_new_tokens + 1):
            if token in stop_ids:
                return
            yield token
            if produced == max_new_tokens or position >= self.max_seq_len:
                return
            token = self.decode([token], [position])[0]
            position += 1

