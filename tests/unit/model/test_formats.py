"""Every checkpoint format we read, written by a writer that follows its producer's packing, loads into the int4
kernels and reproduces transformers' own float Llama holding the producer's dequantized weights.

Tolerances (CPU, fp32 activations, as ``test_loader_correctness``): max |logit difference| below 1e-4 of the
largest |logit|, and 8 greedy tokens after each of 3 prompts identical to the reference's.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.awq_writer import write_awq_checkpoint
from tests.helpers.compressed_tensors_writer import write_compressed_tensors_checkpoint
from tests.helpers.gptq_writer import write_gptq_checkpoint
from worker.errors import UnsupportedCheckpoint
from worker.model.loader import load_model
from worker.model.tinygemm_linear import TinygemmInt4Linear

QUANTIZED_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
REL_TOL = 1e-4
GREEDY_TOKENS = 8


def assert_matches_reference(ckpt, loaded) -> None:
    gen = torch.Generator().manual_seed(1234)
    vocab = ckpt.config.vocab_size
    ids = torch.randint(3, vocab, (3, 12), generator=gen)
    with torch.no_grad():
        want, got = ckpt.model(ids).logits, loaded.model(ids).logits
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < REL_TOL, f"logits differ from the reference by {rel:.2e} (relative to max |logit|)"
    for row in ids:
        prompt = row[None, :6]
        kwargs = dict(max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False,
                      pad_token_id=0)
        with torch.no_grad():
            want_tokens = ckpt.model.generate(prompt, **kwargs)
            got_tokens = loaded.model.generate(prompt, **kwargs)
        assert got_tokens.tolist() == want_tokens.tolist()


def assert_int4_layers(ckpt, loaded, group_size: int) -> None:
    modules = dict(loaded.model.named_modules())
    for i in range(ckpt.config.num_hidden_layers):
        for lin in QUANTIZED_LINEARS:
            module = modules[f"model.layers.{i}.{lin}"]
            assert isinstance(module, TinygemmInt4Linear), f"layer {i} {lin} is {type(module).__name__}"
            assert module.group_size == group_size


GPTQ_CASES = [
    # checkpoint_format, format_key, group, desc_act, sym, config_style
    ("gptq", "checkpoint_format", 32, True, True, "quantize_config"),
    ("gptq", "checkpoint_format", 64, False, False, "config_json"),
    ("gptq_v2", "checkpoint_format", 32, True, False, "quantize_config"),
    ("gptq_v2", "format", 64, False, True, "config_json"),
    ("gptq_v2", "format", 128, False, False, "quantize_config"),
]


@pytest.mark.parametrize("fmt,format_key,group_size,desc_act,sym,config_style", GPTQ_CASES,
                         ids=[f"{f}-{k}-g{g}-{'act' if a else 'noact'}-{'sym' if s else 'asym'}-{c}"
                              for f, k, g, a, s, c in GPTQ_CASES])
def test_gptq_v1_and_v2(tmp_path, fmt, format_key, group_size, desc_act, sym, config_style):
    ckpt = write_gptq_checkpoint(tmp_path, group_size=group_size, desc_act=desc_act, sym=sym, seed=group_size,
                                 checkpoint_format=fmt, format_key=format_key, config_style=config_style)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    assert (loaded.quant.method, loaded.quant.checkpoint_format, loaded.quant.zero_offset) == (
        "gptq", fmt, 0 if fmt == "gptq_v2" else 1)
    assert_int4_layers(ckpt, loaded, group_size)
    assert_matches_reference(ckpt, loaded)


def test_gptq_v2_stores_zero_codes_as_they_are(tmp_path):
    """v2's qzeros hold z itself (v1: z - 1), read straight from the file."""
    from safetensors.torch import load_file

    ckpt = write_gptq_checkpoint(tmp_path, group_size=32, sym=False, seed=4, checkpoint_format="gptq_v2")
    name = "model.layers.0.self_attn.k_proj"
    qzeros = load_file(str(ckpt.path / "model.safetensors"))[f"{name}.qzeros"]
    z = ckpt.codes[name].z
    for g, n in [(0, 0), (1, 5), (3, 63)]:
        assert (int(qzeros[g, n // 8]) >> (4 * (n % 8))) & 0xF == int(z[g, n])


@pytest.mark.parametrize("group_size,config_style", [(32, "config_json"), (64, "quant_config"),
                                                     (128, "config_json")])
def test_awq_gemm(tmp_path, group_size, config_style):
    ckpt = write_awq_checkpoint(tmp_path, group_size=group_size, seed=group_size, config_style=config_style)
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    assert (loaded.quant.method, loaded.quant.checkpoint_format, loaded.quant.group_size) == (
        "awq", "gemm", group_size)
    assert_int4_layers(ckpt, loaded, group_size)
    assert_matches_reference(ckpt, loaded)


CT_CASES = [("group", 32, True), ("group", 128, False), ("group", 64, False), ("channel", None, True),
            ("channel", None, False)]


@pytest.mark.parametrize("strategy,group_size,sym", CT_CASES,
                         ids=[f"{s}-g{g}-{'sym' if y else 'asym'}" for s, g, y in CT_CASES])
def test_compressed_tensors_pack_quantized(tmp_path, strategy, group_size, sym):
    ckpt = write_compressed_tensors_checkpoint(tmp_path, strategy=strategy, group_size=group_size, sym=sym,
                                               seed=7 + (group_size or 0))
    loaded = load_model(ckpt.path, device="cpu", dtype=torch.float32)
    assert (loaded.quant.method, loaded.quant.sym) == ("compressed-tensors", sym)
    # channel-wise: one scale over all inputs, served as groups of 128 holding the same scale (exact)
    assert_int4_layers(ckpt, loaded, group_size or 128)
    assert_matches_reference(ckpt, loaded)


def test_channel_scales_are_expanded_exactly():
    """A single group over K inputs becomes K/128 groups with the same scale and zero: the same weights."""
    from worker.model.formats import expand_single_group
    from worker.model.gptq_layout import GPTQTensors, dequantize, pack_columns, pack_rows

    gen = torch.Generator().manual_seed(3)
    q = torch.randint(0, 16, (512, 16), generator=gen)
    z = torch.randint(0, 16, (1, 16), generator=gen)
    t = GPTQTensors(pack_rows(q, 4), pack_columns(z, 4), torch.rand(1, 16).half(), torch.zeros(512, dtype=torch.int32))
    expanded = expand_single_group(t, 512)
    assert tuple(expanded.scales.shape) == (4, 16)
    assert torch.equal(dequantize(expanded, 4, 0), dequantize(t, 4, 0))


# --- refusals: the message names what is unsupported ------------------------------------------------------


def set_quantization_config(ckpt, **changes):
    path = ckpt.path / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"].update(changes)
    path.write_text(json.dumps(config))


def test_3bit_gptq_is_refused(tmp_path):
    ckpt = write_gptq_checkpoint(tmp_path, bits=3, config_style="config_json")
    with pytest.raises(UnsupportedCheckpoint, match=r"3-bit GPTQ"):
        load_model(ckpt.path, device="cpu")


def test_8bit_awq_is_refused(tmp_path):
    ckpt = write_awq_checkpoint(tmp_path)
    set_quantization_config(ckpt, bits=8)
    with pytest.raises(UnsupportedCheckpoint, match=r"8-bit AWQ"):
        load_model(ckpt.path, device="cpu")


def test_8bit_compressed_tensors_is_refused(tmp_path):
    """An 8-bit-only (W8A16 int-quantized) llm-compressor checkpoint."""
    ckpt = write_compressed_tensors_checkpoint(tmp_path)
    config = json.loads((ckpt.path / "config.json").read_text())
    group = config["quantization_config"]["config_groups"]["group_0"]
    group["weights"]["num_bits"] = 8
    group["format"] = None
    (ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpoint, match=r"8-bit int"):
        load_model(ckpt.path, device="cpu")


@pytest.mark.parametrize("changes,named", [
    ({"quant_method": "bitsandbytes"}, r"quant_method 'bitsandbytes'"),
    ({"quant_method": "hqq"}, r"quant_method 'hqq'"),
    ({"format": "int-quantized"}, r"format 'int-quantized'"),
    ({"format": "marlin-24"}, r"format 'marlin-24'"),
])
def test_unknown_method_or_format_is_refused(tmp_path, changes, named):
    ckpt = write_compressed_tensors_checkpoint(tmp_path)
    set_quantization_config(ckpt, **changes)
    with pytest.raises(UnsupportedCheckpoint, match=named):
        load_model(ckpt.path, device="cpu")


def test_w4a8_compressed_tensors_is_refused(tmp_path):
    ckpt = write_compressed_tensors_checkpoint(tmp_path)
    config = json.loads((ckpt.path / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int"}
    (ckpt.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedCheckpoint, match=r"input activations"):
        load_model(ckpt.path, device="cpu")


@pytest.mark.parametrize("changes,named", [({"version": "gemv"}, "AWQ version 'gemv'"),
                                           ({"version": "gemv_fast"}, "AWQ version 'gemv_fast'"),
                                           ({"zero_point": False}, "zero_point false")])
def test_other_awq_layouts_are_refused(tmp_path, changes, named):
    ckpt = write_awq_checkpoint(tmp_path)
    set_quantization_config(ckpt, **changes)
    with pytest.raises(UnsupportedCheckpoint, match=named):
        load_model(ckpt.path, device="cpu")


def test_gptq_marlin_format_is_refused(tmp_path):
    ckpt = write_gptq_checkpoint(tmp_path, config_style="config_json")
    set_quantization_config(ckpt, checkpoint_format="marlin")
    with pytest.raises(UnsupportedCheckpoint, match=r"checkpoint_format 'marlin'"):
        load_model(ckpt.path, device="cpu")
