"""Every supported architecture, end to end on CPU, against transformers' own float implementation.

For each architecture a tiny random model is built with transformers (seeded: hidden 64, 2 layers, 4 heads,
2 KV heads, head_dim 16, intermediate 128), its Linears are quantized and written as a checkpoint by a writer
that follows the producer's packing (``CHECKPOINT_WRITERS``: GPTQ now; AWQ and compressed-tensors writers plug
in there), and the reference is transformers' float model holding the dequantized weights. We load the
checkpoint with our loader and compare:

- prefill logits (our runtime's ``forward``, fp32): max |diff| < ``REL_TOL`` x max |logit|, as in
  tests/unit/model/test_loader_correctness.py (both sides do the same fp32 math, so ~1e-6 in practice);
- greedy tokens: ``LlamaRuntime.generate`` (batch 1) and the batching ``Engine`` (two conversations at once)
  give exactly the tokens of transformers' ``generate(do_sample=False)``, through several attention windows.

The architectures cover what differs between the families: Llama 3.1's rope scaling (``rope_type: llama3``),
Llama 3.2's tied embeddings and a 128k vocabulary, Mistral with a sliding window smaller than the prompts (and
without one), Qwen2's q/k/v bias, Qwen3's q/k RMSNorm and decoupled head_dim.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config, Qwen3Config

import worker.inference.llama_runtime as llama_runtime
from tests.helpers.awq_writer import write_awq_checkpoint
from tests.helpers.compressed_tensors_writer import write_compressed_tensors_checkpoint
from tests.helpers.gptq_writer import write_gptq_checkpoint
from worker.errors import UnsupportedCheckpoint
from worker.inference.engine import Engine
from worker.inference.generate import AnswerText, Generator
from worker.inference.llama_runtime import LlamaRuntime, Segment, attention_windows, forward
from worker.inference.prompt import TextTemplate, Turn
from worker.inference.sampling import GenerationParams
from worker.model.loader import SUPPORTED_MODEL_TYPES, load_model

REL_TOL = 1e-4  # max |logit difference| relative to max |logit|: fp32 on both sides
PROMPT_LENGTH = 40  # longer than Mistral's sliding window below, so the window changes the answer
NEW_TOKENS = 30  # 40 + 30 positions: decoding crosses from the 64-entry attention window into the 128 one
SLIDING_WINDOW = 16

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
            vocab_size=300)  # the tiny tokenizer's size (tests/helpers/tiny_tokenizer.py)


def architectures() -> dict[str, PretrainedConfig]:
    llama3 = {**TINY, "vocab_size": 128256, "tie_word_embeddings": True}  # Llama 3.2 1B/3B: tied, 128k vocabulary
    return {
        "llama2": LlamaConfig(**TINY),
        "llama3": LlamaConfig(**llama3, rope_scaling={  # Llama 3.1's, with a short original context so it bites
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32, "rope_theta": 500000.0}),
        "mistral-sliding": MistralConfig(**TINY, sliding_window=SLIDING_WINDOW),
        "mistral": MistralConfig(**TINY, sliding_window=None),  # Mistral 7B v0.2 and later
        "qwen2": Qwen2Config(**TINY),  # q/k/v bias (not o_proj)
        "qwen3": Qwen3Config(**{**TINY, "head_dim": 32}),  # q/k norm; head_dim * heads != hidden
    }


@dataclass
class Written:
    path: Path
    reference: nn.Module  # transformers' float model holding the dequantized weights


def write_gptq(directory: Path, config: PretrainedConfig) -> Written:
    ckpt = write_gptq_checkpoint(directory, config=config, group_size=32, desc_act=True, sym=False, seed=7)
    return Written(ckpt.path, ckpt.model)


def write_awq(directory: Path, config: PretrainedConfig) -> Written:
    ckpt = write_awq_checkpoint(directory, config=config, group_size=32, seed=7)
    return Written(ckpt.path, ckpt.model)


def write_compressed_tensors(directory: Path, config: PretrainedConfig) -> Written:
    ckpt = write_compressed_tensors_checkpoint(directory, config=config, strategy="group", group_size=32, sym=False,
                                               seed=7)
    return Written(ckpt.path, ckpt.model)


# format -> writer(directory, config): a checkpoint in that format plus the float reference it should load as.
CHECKPOINT_WRITERS: dict[str, Callable[[Path, PretrainedConfig], Written]] = {
    "gptq": write_gptq, "awq": write_awq, "compressed-tensors": write_compressed_tensors,
}

CASES = [(arch, fmt) for arch in architectures() for fmt in CHECKPOINT_WRITERS]


@dataclass
class Case:
    arch: str
    written: Written
    loaded: object  # LoadedModel

    @property
    def reference(self) -> nn.Module:
        return self.written.reference


@pytest.fixture(scope="module")
def checkpoint_writers() -> dict[str, Callable[[Path, PretrainedConfig], Written]]:
    return CHECKPOINT_WRITERS


@pytest.fixture(scope="module")
def built(tmp_path_factory, checkpoint_writers):
    """(arch, format) -> Case, each written and loaded once per module."""
    cases: dict[tuple[str, str], Case] = {}

    def get(arch: str, fmt: str) -> Case:
        if (arch, fmt) not in cases:
            written = checkpoint_writers[fmt](tmp_path_factory.mktemp(f"{arch}-{fmt}"), architectures()[arch])
            loaded = load_model(written.path, device="cpu", dtype=torch.float32)
            cases[(arch, fmt)] = Case(arch, written, loaded)
        return cases[(arch, fmt)]

    return get


def prompts(rows: int, length: int = PROMPT_LENGTH) -> torch.Tensor:
    return torch.randint(3, 300, (rows, length), generator=torch.Generator().manual_seed(99))


def reference_greedy(reference: nn.Module, prompt: list[int], new_tokens: int, eos: int = 2) -> list[int]:
    """transformers' own greedy generation (its cache, masks and sliding windows), without the final EOS."""
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=0, attention_mask=torch.ones(1, len(prompt)))
    tokens = out[0, len(prompt):].tolist()
    return tokens[:-1] if tokens and tokens[-1] == eos else tokens


@pytest.mark.parametrize("arch,fmt", CASES)
def test_prefill_logits_match_transformers(built, arch, fmt):
    case = built(arch, fmt)
    ids = prompts(2)
    runtime = LlamaRuntime(case.loaded.model, 128, max_batch=2)
    with torch.inference_mode():
        got = forward(case.loaded.model, runtime.cache, ids, torch.arange(PROMPT_LENGTH), 64, last_only=False)
    with torch.no_grad():
        want = case.reference(ids).logits
    assert got.shape == want.shape == (2, PROMPT_LENGTH, case.loaded.config.vocab_size)
    rel = float((got - want).abs().max() / want.abs().max())
    assert rel < REL_TOL, f"{arch}/{fmt}: logits differ from transformers' by {rel:.2e} of max |logit|"


@pytest.mark.parametrize("arch,fmt", CASES)
def test_greedy_tokens_match_transformers_generate(built, arch, fmt):
    case = built(arch, fmt)
    runtime = LlamaRuntime(case.loaded.model, 128)
    runtime.windows = attention_windows(128, smallest=16)  # prefill in the 64 window, decode into the 128 one
    greedy = GenerationParams(temperature=0.0)
    for prompt in prompts(2).tolist():
        got = list(runtime.generate(prompt, NEW_TOKENS, greedy, stop_ids={2}))
        want = reference_greedy(case.reference, prompt, NEW_TOKENS)
        assert got == want, f"{arch}/{fmt}: greedy tokens differ from transformers' generate"
        assert len(got) > PROMPT_LENGTH // 4  # long enough to say something (no early EOS)


def mixed_and_separate_logits(model: nn.Module, monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mixed, separate) logits of the same rows: two conversations decoding while a long prompt (in two
    chunks) and a short one are prefilled inside their steps (``LlamaRuntime.launch_mixed``), against the same
    decode steps and prefills run apart. The parts read different attention windows, the long prompt runs past
    Mistral's 16-entry sliding window, and the rows take any split-K path."""
    sampled: list[torch.Tensor] = []

    def recording_greedy(logits, *settings):  # every sampling call's logits, in order
        sampled.append(logits.float())
        return logits.argmax(dim=-1)

    monkeypatch.setattr(llama_runtime, "sample", recording_greedy)
    ids = prompts(1, 100)[0].tolist()
    decoding, long, short = [ids[:30], ids[30:50]], ids[50:90], ids[90:99]
    runs = []
    for mixed in (True, False):
        runtime = LlamaRuntime(model, 128, max_batch=4)
        runtime.windows = attention_windows(128, smallest=16)
        sampled.clear()
        with torch.inference_mode():
            first = runtime.prefill_prompts(0, decoding)
            runtime.step_input[:, :2].copy_(torch.tensor([first, [30, 20]]))
            if mixed:
                runtime.read(runtime.launch_mixed(2, 31, [Segment(2, 0, long[:24])]))
                runtime.read(runtime.launch_mixed(2, 32, [Segment(2, 24, long[24:]), Segment(3, 0, short)]))
                runs.append(torch.cat(sampled[1:]))  # [rows 0-1, long's first chunk, rows 0-1, long, short]
            else:
                runtime.read(runtime.launch(2, 31))
                runtime.prefill_chunk(2, long[:24], 0)
                runtime.read(runtime.launch(2, 32))
                runtime.prefill_chunk(2, long[24:], 24)
                runtime.prefill_chunk(3, short, 0)
                runs.append(torch.cat(sampled[1:]))
    return [(runs[0], runs[1])]


@pytest.mark.parametrize("arch,fmt", CASES)
def test_a_mixed_step_gives_the_logits_of_its_decode_step_and_prefills_apart(built, arch, fmt, monkeypatch):
    case = built(arch, fmt)
    for got, want in mixed_and_separate_logits(case.loaded.model, monkeypatch):
        assert got.shape == want.shape == (7, case.loaded.config.vocab_size)
        rel = float((got - want).abs().max() / want.abs().max())
        assert rel < REL_TOL, f"{arch}/{fmt}: mixed logits differ from separate steps' by {rel:.2e}"


PLAIN = TextTemplate("plain", "{system}", "{text} ", "{text} ", "", ())  # no stop text: the tokens decide
QUESTIONS = [
    "The quick brown fox jumps over the lazy dog. Hello there! How are you today? I am fine, thank you. 0123456789",
    "A chat between a curious user and an artificial intelligence assistant. What is the capital of France?",
]


@pytest.mark.parametrize("arch,fmt", CASES)
def test_engine_batches_two_conversations_with_transformers_tokens(built, arch, fmt, monkeypatch):
    case = built(arch, fmt)
    answers: list[AnswerText] = []
    pushed: dict[int, list[int]] = {}
    original_push = AnswerText.push

    def recording_push(self, token_id):  # every token the engine hands each answer
        pushed.setdefault(id(self), []).append(token_id)
        return original_push(self, token_id)

    monkeypatch.setattr(AnswerText, "push", recording_push)
    generator = Generator(case.loaded, PLAIN, system_prompt="", max_context_tokens=128)
    start_answer = generator.start_answer

    def recorded(*args, **kwargs):
        answer = start_answer(*args, **kwargs)
        answers.append(answer)
        return answer

    generator.start_answer = recorded
    engine = Engine(generator, max_batch=2)
    engine.runtime.windows = attention_windows(engine.runtime.max_seq_len, smallest=16)
    engine.start()
    try:
        params = GenerationParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
        streams = [engine.submit([Turn("user", q)], params) for q in QUESTIONS]
        for stream in streams:
            "".join(stream)
            assert stream.finished and stream.error is None
        assert engine.stats.max_batch_seen == 2  # the two answers were decoded in the same steps
    finally:
        engine.stop()
    assert len(answers) == 2
    for answer in answers:
        assert len(answer.prompt_ids) >= PROMPT_LENGTH - 10  # most of it outside a 16-entry sliding window
        got = [t for t in pushed[id(answer)] if t not in answer.eos_ids]
        assert got == reference_greedy(case.reference, answer.prompt_ids, NEW_TOKENS), f"{arch}/{fmt}"


# --- What each architecture's case actually exercises (so a pass above means what it says) ---


def test_rope_scaling_is_in_the_rotary_tables_the_runtime_reads(built):
    model = built("llama3", "gptq").loaded.model
    rotary = model.model.rotary_emb
    plain = LlamaConfig(**{**TINY, "rope_theta": 500000.0})
    plain_inv_freq = type(rotary)(plain).inv_freq
    assert rotary.rope_type == "llama3"
    assert not torch.allclose(rotary.inv_freq.float(), plain_inv_freq.float())  # the low frequencies are scaled
    assert torch.allclose(rotary.inv_freq[:1].float(), plain_inv_freq[:1].float())  # the highest one is not


def test_tied_embeddings_share_one_matrix_with_a_128k_vocabulary(built):
    case = built("llama3", "gptq")
    from safetensors import safe_open

    with safe_open(str(case.written.path / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # as Llama 3.2 checkpoints ship
    model = case.loaded.model
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.lm_head.weight.shape == (128256, 64)


def test_qwen2_bias_is_loaded_on_q_k_v_and_added_once(built):
    case = built("qwen2", "gptq")
    from safetensors import safe_open

    with safe_open(str(case.written.path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert f"model.layers.0.self_attn.{proj}.bias" in names and f"model.layers.0.self_attn.{proj}.qweight" in names
    assert "model.layers.0.self_attn.o_proj.bias" not in names
    modules = dict(case.loaded.model.named_modules())
    reference = dict(case.reference.named_modules())
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.1.self_attn.{proj}"
        torch.testing.assert_close(modules[name].bias.float(), reference[name].bias, rtol=0, atol=0)
    assert modules["model.layers.1.self_attn.o_proj"].bias is None


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize("rows", [5, 40], ids=["split-k-fused", "dequantized-matmul"])
def test_fused_qkv_on_the_triton_int4_layers_adds_the_bias_once(tmp_path, arch, rows):
    """The GPU's int4 layers (here in Triton's interpreter): q/k/v fused into one matmul whose split-K partial
    sums carry the bias once, whatever the number of splits; then the q/k norm (Qwen3) and the rotary."""
    pytest.importorskip("triton")
    written = write_gptq(tmp_path, architectures()[arch])
    loaded = load_model(written.path, device="cpu", dtype=torch.float32, int4_kernel="triton")
    attn = loaded.model.model.layers[0].self_attn
    assert hasattr(attn, "qkv_proj")  # one int4 layer for q/k/v
    assert (attn.qkv_proj.bias is not None) == (arch == "qwen2")
    ids = prompts(1, rows)
    runtime = LlamaRuntime(loaded.model, 64)
    with torch.inference_mode():
        got = forward(loaded.model, runtime.cache, ids, torch.arange(rows), 64, last_only=False)
    with torch.no_grad():
        want = written.reference(ids).logits
    assert float((got - want).abs().max() / want.abs().max()) < REL_TOL


def test_sliding_window_changes_the_answer(built):
    """The Mistral case's prompts are long enough that a runtime ignoring the window would be caught."""
    case = built("mistral-sliding", "gptq")
    config = case.loaded.model.config
    ids = prompts(1)
    runtime = LlamaRuntime(case.loaded.model, 64)
    with torch.inference_mode():
        windowed = forward(case.loaded.model, runtime.cache, ids, torch.arange(PROMPT_LENGTH), 64, last_only=True)
        config.sliding_window = None
        try:
            full = forward(case.loaded.model, runtime.cache, ids, torch.arange(PROMPT_LENGTH), 64, last_only=True)
        finally:
            config.sliding_window = SLIDING_WINDOW
    assert float((windowed - full).abs().max()) > 1e-3


def test_qwen3_has_q_k_norms_and_its_own_head_dim(built):
    attn = built("qwen3", "gptq").loaded.model.model.layers[0].self_attn
    assert attn.head_dim == 32 and attn.q_proj.out_features == 4 * 32  # not hidden / heads = 16
    assert attn.q_norm.weight.shape == attn.k_norm.weight.shape == (32,)
    assert not torch.allclose(attn.q_norm.weight, torch.ones(32))  # the writer randomizes norms


# --- Anything else: one clear line at start ---


@pytest.mark.parametrize("model_type", ["gpt2", "phi3", "gemma"])
def test_unsupported_model_type_fails_before_any_weight_is_read(tmp_path, model_type):
    (tmp_path / "config.json").write_text(f'{{"model_type": "{model_type}"}}')  # no weights at all
    message = f"unsupported model type {model_type}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    with pytest.raises(UnsupportedCheckpoint) as err:
        load_model(tmp_path, device="cpu")
    assert str(err.value) == message
    assert SUPPORTED_MODEL_TYPES == ("llama", "mistral", "qwen2", "qwen3")


def test_the_runtime_names_the_supported_types_too():
    class Phi(nn.Module):
        config = type("Config", (), {"model_type": "phi3"})()

    with pytest.raises(ValueError, match="^unsupported model type phi3; supported: llama, mistral, qwen2, qwen3$"):
        LlamaRuntime(Phi(), 16)


def test_generate_command_says_it_in_one_line_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    from worker.cli import main

    (tmp_path / "config.json").write_text('{"model_type": "gemma"}')
    monkeypatch.setattr(sys, "argv", ["xwinbot"])
    assert main(["generate", "hi", "--model", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert err == "xwinbot: unsupported model type gemma; supported: llama, mistral, qwen2, qwen3"
