"""The streaming generation API on a real (tiny, random) GPTQ checkpoint loaded through the loader."""

import dataclasses

import pytest
import torch

from worker.errors import PromptTooLong
from worker.inference.generate import Generator
from worker.inference.kv_cache import KVCache
from worker.inference.llama_runtime import LlamaRuntime, forward
from worker.inference.prompt import VICUNA, Turn
from worker.inference.sampling import GenerationParams
from worker.model.loader import load_model

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tests.helpers.gptq_writer import write_gptq_checkpoint

    ckpt = write_gptq_checkpoint(tmp_path_factory.mktemp("gen"), group_size=32, desc_act=True, sym=False)
    return load_model(ckpt.path, device="cpu", dtype=torch.float32)


def reference_greedy(model, prompt_ids, n):
    """Greedy decoding by recomputing the whole sequence through the transformers forward each step."""
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt_ids) :].tolist()


def test_runtime_logits_match_transformers_forward(loaded):
    ids = torch.randint(3, loaded.config.vocab_size, (1, 30))
    cache = KVCache(loaded.config.num_hidden_layers, 1, loaded.config.num_key_value_heads, 64,
                    loaded.config.hidden_size // loaded.config.num_attention_heads, "cpu", torch.float32)
    with torch.no_grad():
        expected = loaded.model(ids).logits
        pieces = [forward(loaded.model, cache, ids[:, :20], torch.arange(20), 64, last_only=False)]
        for pos in range(20, 30):  # one token at a time against the cache
            pieces.append(forward(loaded.model, cache, ids[:, pos : pos + 1], torch.tensor([pos]),
                                  32 if pos < 32 else 64, last_only=False))
    got = torch.cat(pieces, dim=1)
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def test_a_new_prompt_reads_nothing_its_cache_slot_held_before(loaded):
    """Prompts from position 0 attend to their own keys and values, never the slot's window: entries an earlier
    conversation left there (NaN here, which any read would spread) change nothing of the new prompt's answer."""
    prompts = [list(range(3, 23)), list(range(40, 51))]  # two rows, the second padded to the first's length
    runtimes = [LlamaRuntime(loaded.model, 64, max_batch=2) for _ in range(2)]
    runtimes[1].cache.keys.fill_(float("nan"))
    runtimes[1].cache.values.fill_(float("nan"))
    with torch.inference_mode():
        first = [runtime.prefill_prompts(0, prompts) for runtime in runtimes]
    assert first[0] == first[1]
    assert not runtimes[1].cache.keys[:, 0, :, :20].isnan().any()  # and the prompt's own entries are written


def test_greedy_tokens_match_full_recompute(loaded):
    generator = Generator(loaded, VICUNA)
    prompt = generator.fit([Turn("user", "What is the capital of France?")], GREEDY).token_ids
    tokens = list(generator.runtime.generate(prompt, 16, GREEDY))
    assert tokens == reference_greedy(loaded.model, prompt, 16)


def test_steps_launched_before_the_one_before_is_read_give_the_greedy_tokens(loaded):
    """Each step starts from the token the step before fed back on the device, not from the host."""
    generator = Generator(loaded, VICUNA)
    prompt = generator.fit([Turn("user", "What is the capital of France?")], GREEDY).token_ids
    runtime = generator.runtime
    runtime.set_sampling(0, [GREEDY])
    first = runtime.prefill_chunk(0, prompt, 0)
    runtime.set_inputs(0, [first], [len(prompt)])
    launched = [runtime.launch(1, len(prompt) + 1 + i) for i in range(15)]  # none read yet
    assert [first] + [runtime.read(step)[0] for step in launched] == reference_greedy(loaded.model, prompt, 16)


def test_steps_at_the_end_of_the_cache_stay_on_its_last_entry(loaded):
    """A row fed at the cache's last entry stays there (as padded rows do): nothing is written past it."""
    generator = Generator(loaded, VICUNA, system_prompt="", max_context_tokens=64)
    runtime = generator.runtime
    first = runtime.prefill_chunk(0, list(range(3, 65)), 0)
    runtime.set_inputs(0, [first], [62])
    for _ in range(3):
        runtime.read(runtime.launch(1, 64))
    assert runtime.step_input[1, 0] == 63


def test_stream_pieces_add_up_to_the_answer(loaded):
    generator = Generator(loaded, VICUNA)
    turns = [Turn("user", "Hello there! How are you today?")]
    pieces = list(generator.stream(turns, GREEDY))
    assert len(pieces) > 1  # it streams, not one blob at the end
    assert "".join(pieces) == generator.answer(turns, GREEDY)


def test_max_new_tokens_bounds_the_answer(loaded):
    generator = Generator(loaded, VICUNA)
    turns = [Turn("user", "Hello there!")]
    short = generator.answer(turns, GREEDY.replace(max_new_tokens=3))
    long = generator.answer(turns, GREEDY.replace(max_new_tokens=24))
    assert len(loaded.tokenizer.encode(short, add_special_tokens=False)) <= 4
    assert long.startswith(short) and len(long) > len(short)


def test_answer_stops_before_a_stop_sequence_seen_in_the_stream(loaded):
    plain = Generator(loaded, VICUNA)
    turns = [Turn("user", "The quick brown fox")]
    full = plain.answer(turns, GREEDY)
    assert len(full) > 12
    marker = full[6:10]  # pretend this text is the next turn's marker
    template = dataclasses.replace(VICUNA, stop_sequences=(marker,))
    cut = Generator(loaded, template).answer(turns, GREEDY)
    assert cut == full[: full.index(marker)].strip()
    assert marker not in cut


def test_too_long_prompt_gets_a_clear_error_with_the_limit(loaded):
    generator = Generator(loaded, VICUNA, max_context_tokens=128)
    with pytest.raises(PromptTooLong, match=r"limit is \d+ tokens"):
        list(generator.stream([Turn("user", "word " * 400)], GREEDY))


def test_long_history_is_trimmed_and_still_answered(loaded):
    generator = Generator(loaded, VICUNA, system_prompt="Be brief.", max_context_tokens=128)
    turns = []
    for i in range(30):
        turns += [Turn("user", f"question {i}"), Turn("assistant", f"answer {i}")]
    turns.append(Turn("user", "last question"))
    fitted = generator.fit(turns, GREEDY)
    assert fitted.dropped_turns > 0 and len(fitted.token_ids) <= 128 - GREEDY.max_new_tokens
    assert isinstance(generator.answer(turns, GREEDY), str)


def test_answer_never_overflows_the_cache(loaded):
    generator = Generator(loaded, VICUNA, system_prompt="", max_context_tokens=64)
    answer = generator.answer([Turn("user", "Hi")], dataclasses.replace(GREEDY, max_new_tokens=500))
    assert len(loaded.tokenizer.encode(answer, add_special_tokens=False)) <= 64


def test_generation_crossing_attention_windows_matches_full_recompute(loaded):
    from worker.inference.llama_runtime import attention_windows

    generator = Generator(loaded, VICUNA, system_prompt="")
    generator.runtime.windows = attention_windows(generator.runtime.max_seq_len, smallest=16)
    assert generator.runtime.windows[:4] == [16, 32, 64, 128]
    prompt = generator.fit([Turn("user", "Hi there")], GREEDY).token_ids
    tokens = list(generator.runtime.generate(prompt, 60, GREEDY))
    assert 16 < len(prompt) < 32 and len(prompt) + 60 > 64  # prefill in the second window, decoding crosses two more
    assert tokens == reference_greedy(loaded.model, prompt, 60)
