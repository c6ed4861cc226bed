"""The loader reproduces, in fp32 on CPU, the plain model holding the dequantized GPTQ weights.

Checkpoints come from ``gptq_writer`` (an independent, loop-based implementation of the AutoGPTQ v1 layout);
the reference model holds W = scale * (q - z) computed from the integer codes, and the fp16-rounded values of
every unquantized tensor. Both sides run the same fp32 math, so logits must agree to ~1e-6 relative.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from worker.model.loader import head_dim_of, load_model
from worker.model.tinygemm_linear import TinygemmInt4Linear

QUANTIZED_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
REL_TOL = 1e-4


def decoder_linear_names(num_layers: int) -> list[str]:
    return [f"model.layers.{i}.{lin}" for i in range(num_layers) for lin in QUANTIZED_LINEARS]


def assert_logits_match(ckpt, loaded, batches: int = 2) -> None:
    gen = torch.Generator().manual_seed(1234)
    vocab = ckpt.config.vocab_size
    for _ in range(batches):
        ids = torch.randint(3, vocab, (2, 12), generator=gen)
        with torch.no_grad():
            want = ckpt.model(ids).logits
            got = loaded.model(ids).logits
        assert got.shape == want.shape
        assert got.dtype == torch.float32
        rel = float((got - want).abs().max() / want.abs().max())
        assert rel < REL_TOL, f"logits differ from the reference by {rel:.2e} (relative to max |logit|)"


def assert_unquantized_ends(loaded) -> None:
    model = loaded.model
    embed = model.get_input_embeddings()
    assert type(embed) is nn.Embedding and embed.weight.dtype == torch.float32
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() != embed.weight.data_ptr()  # tie_word_embeddings is False


def read_all_tensors(ckpt) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(set(ckpt.weight_map.values())):
        tensors.update(load_file(str(ckpt.path / file)))
    return tensors


# A covering set rather than the full cross product: every group size with and without act-order, every
# (sym, desc_act) pair, single file and 3 shards, both places the quantization settings can live.
CASES = [
    # group, desc_act, sym, shards, config_style
    (32, False, True, 1, "quantize_config"),
    (32, True, False, 3, "config_json"),
    (64, True, True, 1, "config_json"),
    (64, False, False, 3, "quantize_config"),
    (128, True, False, 1, "quantize_config"),
    (128, False, True, 3, "config_json"),
]


@pytest.mark.parametrize(
    "group_size,desc_act,sym,shards,config_style", CASES,
    ids=[f"g{g}-{'act' if a else 'noact'}-{'sym' if s else 'asym'}-{n}shard-{c}" for g, a, s, n, c in CASES],
)
def test_4bit_logits_match_reference(gptq_checkpoint, group_size, desc_act, sym, shards, config_style):
    ckpt = gptq_checkpoint(bits=4, group_size=group_size, desc_act=desc_act, sym=sym, shards=shards,
                           config_style=config_style, seed=group_size + shards)
    loaded = load_model(str(ckpt.path), device="cpu", dtype=torch.float32)

    assert (loaded.quant.bits, loaded.quant.group_size, loaded.quant.desc_act, loaded.quant.sym) == (
        4, group_size, desc_act, sym)
    assert not loaded.model.training
    modules = dict(loaded.model.named_modules())
    for name in decoder_linear_names(ckpt.config.num_hidden_layers):
        assert isinstance(modules[name], TinygemmInt4Linear), f"{name} is {type(modules[name]).__name__}"
    fused = {name for name in modules if name.endswith((".qkv_proj", ".gate_up_proj"))}
    assert len(fused) == 2 * ckpt.config.num_hidden_layers  # q/k/v and gate/up share their input order
    assert sum(isinstance(m, TinygemmInt4Linear) for m in modules.values()) == 9 * ckpt.config.num_hidden_layers
    assert_unquantized_ends(loaded)
    assert_logits_match(ckpt, loaded)


@pytest.mark.parametrize("group_size,desc_act,sym", [(128, True, False), (32, False, True)])
def test_8bit_loads_through_dequantize_fallback(gptq_checkpoint, group_size, desc_act, sym):
    ckpt = gptq_checkpoint(bits=8, group_size=group_size, desc_act=desc_act, sym=sym, seed=8)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)

    assert loaded.quant.bits == 8
    modules = dict(loaded.model.named_modules())
    assert not any(isinstance(m, TinygemmInt4Linear) for m in modules.values())
    for name in decoder_linear_names(ckpt.config.num_hidden_layers):
        assert type(modules[name]) is nn.Linear and modules[name].weight.dtype == torch.float32
    assert_unquantized_ends(loaded)
    assert_logits_match(ckpt, loaded)


def test_attention_bias_is_loaded(gptq_checkpoint):
    ckpt = gptq_checkpoint(bits=4, group_size=32, desc_act=True, sym=False, bias=True, seed=3)
    stored = read_all_tensors(ckpt)
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert f"model.layers.0.self_attn.{proj}.bias" in stored  # next to .qweight, as AutoGPTQ writes it
        assert f"model.layers.0.self_attn.{proj}.qweight" in stored
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)

    modules = dict(loaded.model.named_modules())
    reference = dict(ckpt.model.named_modules())
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        name = f"model.layers.1.self_attn.{proj}"
        assert isinstance(modules[name], TinygemmInt4Linear)
        assert modules[name].bias is not None, f"{name}.bias was dropped"
        torch.testing.assert_close(modules[name].bias.float(), reference[name].bias, rtol=0, atol=0)
    assert_logits_match(ckpt, loaded)


# --- The writer itself, checked bit by bit against the spec (so a test failure above points at the loader) ---


@pytest.mark.parametrize("bits,desc_act,sym", [(4, True, False), (8, False, True)])
def test_writer_layout_follows_spec(gptq_checkpoint, bits, desc_act, sym):
    ckpt = gptq_checkpoint(bits=bits, group_size=32, desc_act=desc_act, sym=sym, seed=5)
    stored = read_all_tensors(ckpt)
    per, mask = 32 // bits, (1 << bits) - 1
    name = "model.layers.1.self_attn.k_proj"  # N = 64 (GQA), K = 128
    codes = ckpt.codes[name]
    qweight, qzeros = stored[f"{name}.qweight"], stored[f"{name}.qzeros"]
    assert qweight.dtype == qzeros.dtype == stored[f"{name}.g_idx"].dtype == torch.int32
    assert stored[f"{name}.scales"].dtype == torch.float16
    k_in, n_out = codes.q.shape
    assert tuple(qweight.shape) == (k_in // per, n_out)
    assert tuple(qzeros.shape) == (k_in // 32, n_out // per)
    for k in range(k_in):
        for n in range(n_out):
            word = int(qweight[k // per, n]) & 0xFFFFFFFF
            assert (word >> (bits * (k % per))) & mask == int(codes.q[k, n])
    for g in range(k_in // 32):
        for n in range(n_out):
            word = int(qzeros[g, n // per]) & 0xFFFFFFFF
            assert (word >> (bits * (n % per))) & mask == int(codes.z[g, n]) - 1
    g_idx = stored[f"{name}.g_idx"].long()
    assert torch.equal(torch.bincount(g_idx), torch.full((k_in // 32,), 32))
    assert desc_act != torch.equal(g_idx, torch.arange(k_in) // 32)
    if sym:
        assert bool((codes.z == 2 ** (bits - 1)).all())
    else:
        assert len(codes.z.unique()) > 1
    # The reference weight is the dequantized one, and it stays close to the original weight.
    weight = dict(ckpt.model.named_parameters())[f"{name}.weight"]
    scales = stored[f"{name}.scales"].double()
    for k, n in [(0, 0), (k_in - 1, n_out - 1), (37, 11)]:
        g = int(g_idx[k])
        expected = float(scales[g, n]) * (int(codes.q[k, n]) - int(codes.z[g, n]))
        assert float(weight[n, k]) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_writer_agrees_with_production_dequantize(gptq_checkpoint):
    """Two independent implementations of the layout must agree (pinpoints layout vs. kernel bugs)."""
    from worker.model.gptq_layout import GPTQTensors, dequantize

    ckpt = gptq_checkpoint(bits=4, group_size=64, desc_act=True, sym=False, seed=6)
    stored = read_all_tensors(ckpt)
    reference = dict(ckpt.model.named_parameters())
    for name in decoder_linear_names(ckpt.config.num_hidden_layers):
        t = GPTQTensors(*(stored[f"{name}.{part}"] for part in ("qweight", "qzeros", "scales", "g_idx")))
        torch.testing.assert_close(dequantize(t, 4), reference[f"{name}.weight"], rtol=1e-6, atol=1e-7)


def test_act_order_layers_with_their_own_orders_stay_separate(gptq_checkpoint):
    """When q/k/v (or gate/up) were quantized with different act-orders they cannot share one matmul."""
    ckpt = gptq_checkpoint(bits=4, group_size=32, desc_act=True, sym=False, shared_act_order=False, seed=11)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    names = {name for name, _ in loaded.model.named_modules()}
    assert not any(name.endswith((".qkv_proj", ".gate_up_proj")) for name in names)
    assert_logits_match(ckpt, loaded)


def test_fused_projections_share_memory_with_their_views(gptq_checkpoint):
    ckpt = gptq_checkpoint(bits=4, group_size=64, desc_act=True, sym=True, seed=5)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    attn = loaded.model.model.layers[0].self_attn
    fused = attn.qkv_proj.packed
    for view in (attn.q_proj, attn.k_proj, attn.v_proj):
        start = view.packed.data_ptr() - fused.data_ptr()
        assert 0 <= start < fused.numel() * fused.element_size()  # no second copy of the weights
    mlp = loaded.model.model.layers[0].mlp
    assert mlp.down_proj.perm is None  # its act-order gather moved into gate/up's output order


@pytest.mark.parametrize("group_size,desc_act,sym", [(128, True, False), (32, False, True)])
def test_triton_kernels_give_the_reference_logits(gptq_checkpoint, group_size, desc_act, sym):
    """The GPU's default int4 path (on CPU: Triton's interpreter), short and long inputs (fused / rebuilt W)."""
    pytest.importorskip("triton")
    from worker.model.triton_linear import TritonInt4Linear

    ckpt = gptq_checkpoint(bits=4, group_size=group_size, desc_act=desc_act, sym=sym, seed=11)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32, int4_kernel="triton")

    modules = dict(loaded.model.named_modules())
    for name in decoder_linear_names(ckpt.config.num_hidden_layers):
        assert isinstance(modules[name], TritonInt4Linear)
    assert_logits_match(ckpt, loaded, batches=1)  # 2 x 12 rows: the fused kernel
    ids = torch.randint(3, ckpt.config.vocab_size, (1, 80), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = ckpt.model(ids).logits, loaded.model(ids).logits  # 80 rows: weights rebuilt for cuBLAS
    assert float((got - want).abs().max() / want.abs().max()) < REL_TOL


@pytest.mark.parametrize("bias", [False, True])  # q/k/v biases (Qwen2) ride on the first partial sum
def test_our_runtime_on_triton_layers_gives_the_reference_logits(gptq_checkpoint, bias):
    """The decode path a GPU takes: each norm hands the next int4 layer its input already in act-order, the
    matmuls return split-K partial sums and the next step adds them (prefill of 19 rows, then one-row steps)."""
    pytest.importorskip("triton")
    from worker.inference.kv_cache import KVCache
    from worker.inference.llama_runtime import attention_order, forward, mlp_order

    ckpt = gptq_checkpoint(bits=4, group_size=32, desc_act=True, sym=False, bias=bias, seed=13)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32, int4_kernel="triton")
    layer = loaded.model.model.layers[0]
    assert attention_order(layer) is not None and mlp_order(layer) is not None  # the ordered path is taken
    config = ckpt.config
    cache = KVCache(config.num_hidden_layers, 1, config.num_key_value_heads, 64, head_dim_of(config), "cpu",
                    torch.float32)
    ids = torch.randint(3, config.vocab_size, (1, 22), generator=torch.Generator().manual_seed(14))

    with torch.no_grad():
        want = ckpt.model(ids).logits
        prefilled = forward(loaded.model, cache, ids[:, :19], torch.arange(19), 64, last_only=False)
        steps = [forward(loaded.model, cache, ids[:, t : t + 1], torch.tensor([t]), 64, last_only=True)
                 for t in range(19, 22)]

    got = torch.cat([prefilled, *steps], dim=1)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < REL_TOL, f"logits differ from the reference by {rel:.2e} (relative to max |logit|)"
