"""The continuous-batching engine on a real (tiny, random) GPTQ checkpoint: many users, one model.

Every answer the engine gives while batching is compared with the same request answered alone (batch 1)
by ``Generator.answer``: exact text, greedy, fp32.
"""

import copy
import dataclasses
import threading
import time

import pytest
import torch

import worker.inference.engine as engine_module
from worker.errors import PromptTooLong
from worker.inference.engine import AnswerStream, Engine, EngineStopped
from worker.inference.generate import AnswerText, Generator
from worker.inference.llama_runtime import attention_windows
from worker.inference.prompt import VICUNA, Turn
from worker.inference.sampling import GenerationParams
from worker.model.loader import load_model

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=60)
QUESTIONS = [
    "What is the capital of France?",
    "Hello there! How are you today?",
    "The quick brown fox",
    "Add two and three.",
    "Tell me about the lazy dog.",
    "Hi",
]
STOP_TOKEN = 113  # in this tiny model's greedy answers: after 13-19 tokens for QUESTIONS[2:], never in the others


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from tests.helpers.gptq_writer import write_gptq_checkpoint

    ckpt = write_gptq_checkpoint(tmp_path_factory.mktemp("engine"), group_size=32, desc_act=True, sym=False)
    return load_model(ckpt.path, device="cpu", dtype=torch.float32)


def ask(question: str) -> list[Turn]:
    return [Turn("user", question)]


@pytest.fixture(scope="module")
def alone(loaded):
    """Each question answered on its own by the batch-1 generator (before any engine runs)."""
    generator = Generator(loaded, VICUNA, system_prompt="")
    return {q: generator.answer(ask(q), GREEDY) for q in QUESTIONS}


@pytest.fixture
def make_engine(loaded, alone):
    engines = []

    def make(max_batch: int, step_delay: float = 0.002, model=loaded, mix_prefill: bool = True) -> Engine:
        engine = Engine(Generator(model, VICUNA, system_prompt=""), max_batch=max_batch, mix_prefill=mix_prefill)
        launch, launch_mixed = engine.runtime.launch, engine.runtime.launch_mixed

        def paced(rows, longest):  # a few ms a step, as on a real model, so requests surely overlap
            time.sleep(step_delay)
            return launch(rows, longest)

        def paced_mixed(rows, longest, segments):
            time.sleep(step_delay)
            return launch_mixed(rows, longest, segments)

        engine.runtime.launch, engine.runtime.launch_mixed = paced, paced_mixed
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def answered_alone(model, requests: list[tuple[str, GenerationParams]]) -> list[str]:
    """Each request answered on its own by the batch-1 generator."""
    generator = Generator(model, VICUNA, system_prompt="")
    return [generator.answer(ask(question), params) for question, params in requests]


@pytest.mark.parametrize("mix", [True, False], ids=["mixed", "unmixed"])
@pytest.mark.parametrize("padded", [False, True], ids=["exact-rows", "padded-rows-chunked-prefill"])
def test_overlapping_requests_answer_exactly_as_alone(make_engine, alone, monkeypatch, padded, mix):
    engine = make_engine(max_batch=8, mix_prefill=mix)
    if padded:  # as with CUDA graphs: 3 rows run as a batch of 4, the extra row in a free or half-prefilled slot
        engine.runtime.pad_to_buckets = True
        monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 8)  # prompts prefill over several steps
        monkeypatch.setattr(engine_module, "MIXED_PREFILL_TOKENS", 8)
        engine.runtime.windows = attention_windows(engine.runtime.max_seq_len, smallest=16)  # rows in different windows
    engine.start()
    requests = []
    for question in QUESTIONS[:4]:  # each joins while the earlier ones are mid-answer
        stream = engine.submit(ask(question), GREEDY)
        pieces = iter(stream)
        requests.append((question, stream, pieces, [next(pieces) for _ in range(3)]))
    for question, stream, pieces, got in requests:
        got += list(pieces)
        assert "".join(got) == stream.text == alone[question]
        assert stream.finished and not stream.cancelled and stream.error is None
        assert stream.tokens > 0 and stream.first_token_at >= stream.submitted_at
    stats = engine.stats
    assert stats.max_batch_seen >= 3
    assert sum(steps for rows, steps in stats.batch_size_histogram.items() if rows > 1) > 0
    assert stats.steps == sum(stats.batch_size_histogram.values())
    assert stats.prefill_s > 0 and stats.decode_s > 0  # the time split a benchmark or operator reads
    assert (stats.mixed_steps > 0) == mix  # each later question was prefilled inside the others' decode steps
    wait_until(lambda: engine.stats.active == 0)


@pytest.mark.parametrize("padded", [False, True], ids=["exact-rows", "padded-rows"])
def test_answers_ending_at_different_steps_while_others_join_answer_exactly_as_alone(make_engine, loaded, padded):
    """Rows end every few steps, each while the step launched after it is in flight: the last row moves into
    the freed slot with what that step wrote, and new requests join. Every answer is still the one it gets
    alone, and the engine counts exactly the tokens it delivered (no look-ahead row of an ended answer)."""
    limits = [7, 1, 23, 2, 40, 12, 3, 18, 5, 30]
    requests = [(QUESTIONS[i % len(QUESTIONS)], GREEDY.replace(max_new_tokens=n)) for i, n in enumerate(limits)]
    expected = answered_alone(loaded, requests)
    engine = make_engine(max_batch=4)
    engine.runtime.pad_to_buckets = padded  # as with CUDA graphs: 3 rows run as a batch of 4
    engine.start()
    streams = []
    for question, params in requests:  # each arrives once the one before has its first token
        streams.append(engine.submit(ask(question), params))
        wait_until(lambda: streams[-1].tokens > 0)
    for stream, answer, limit in zip(streams, expected, limits):
        assert "".join(stream) == answer
        assert stream.tokens == limit and stream.error is None  # each ran to its own limit
    wait_until(lambda: engine.stats.active == 0)
    stats = engine.stats
    assert stats.tokens_generated == sum(limits)
    assert stats.steps == sum(stats.batch_size_histogram.values()) and stats.max_batch_seen == 4


def test_answers_ending_on_a_stop_token_while_others_go_on_answer_exactly_as_alone(make_engine, loaded):
    config = copy.deepcopy(loaded.config)
    config.eos_token_id = [loaded.tokenizer.eos_token_id, STOP_TOKEN]  # a model with a second end-of-answer id
    with_stop = dataclasses.replace(loaded, config=config)
    requests = [(question, GREEDY) for question in QUESTIONS]
    expected = answered_alone(with_stop, requests)
    engine = make_engine(max_batch=8, model=with_stop)
    streams = [engine.submit(ask(question), params) for question, params in requests]
    engine.start()
    for stream, answer in zip(streams, expected):
        assert "".join(stream) == answer and stream.error is None
    stopped = [s for s in streams if s.tokens < GREEDY.max_new_tokens]
    assert len(stopped) == len(QUESTIONS) - 2 and all(s.tokens < 20 for s in stopped)  # the others went on to 60
    wait_until(lambda: engine.stats.active == 0)
    # Every token counted reached an answer: its text's tokens, and the stop token that ended it.
    assert engine.stats.tokens_generated == sum(s.tokens for s in streams) + len(stopped)


def test_questions_arriving_together_prefill_in_one_pass_and_answer_as_alone(make_engine, alone):
    engine = make_engine(max_batch=8)
    streams = {question: engine.submit(ask(question), GREEDY) for question in QUESTIONS}  # all waiting
    engine.start()
    for question, stream in streams.items():
        assert "".join(stream) == alone[question]  # prompts of different lengths, padded in one batch
    assert engine.stats.prefill_group_histogram == {len(QUESTIONS): 1}


@pytest.mark.parametrize("while_one_decodes", [False, True], ids=["together", "mixed-in-while-one-decodes"])
def test_questions_admitted_together_each_sample_with_their_own_settings(make_engine, loaded, while_one_decodes):
    """The settings and first inputs of questions admitted in one turn are written for all of them at once:
    each row must get its own. Hot sampling (temperature 1.5, no top-k) sits between rows that must come out
    greedy: temperature 0, or temperature 1 with top_k 1 (the same choice); one row ends at its first token, so
    the rows after it join one slot lower."""
    hot = GenerationParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=30)
    exact = [GREEDY, GREEDY.replace(max_new_tokens=1), GenerationParams(temperature=1.0, top_k=1, max_new_tokens=60),
             GREEDY.replace(max_new_tokens=25)]
    questions = QUESTIONS[:4]
    expected = answered_alone(loaded, list(zip(questions, [p.replace(temperature=0.0) for p in exact])))
    engine = make_engine(max_batch=9, step_delay=0.05)  # slow steps: the 8 questions land within one
    if while_one_decodes:
        engine.start()
        first = engine.submit(ask(QUESTIONS[4]), GREEDY.replace(max_new_tokens=20))
        wait_until(lambda: first.tokens > 0)
    streams = []
    for question, params in zip(questions, exact):
        streams.append(engine.submit(ask(QUESTIONS[5]), hot))
        streams.append(engine.submit(ask(question), params))
    engine.start()
    got = ["".join(stream) for stream in streams]
    assert got[1::2] == expected
    assert all(stream.error is None and stream.finished for stream in streams)
    assert streams[3].tokens == 1
    wait_until(lambda: engine.stats.active == 0)
    if while_one_decodes:  # read in by mixed steps (all 8 in one, unless a step began between two submits)
        assert engine.stats.mixed_steps >= 1 and first.error is None
    else:
        assert engine.stats.prefill_group_histogram == {len(streams): 1}


@pytest.mark.parametrize("mix", [False, True], ids=["unmixed", "mixed"])
def test_a_burst_larger_than_the_prefill_budget_is_split(make_engine, alone, monkeypatch, mix):
    longest = max(len(make_engine(1).generator.fit(ask(q), GREEDY).token_ids) for q in QUESTIONS)
    monkeypatch.setattr(engine_module, "PREFILL_TOKENS", 2 * longest)  # two prompts a pass
    engine = make_engine(max_batch=8, mix_prefill=mix)
    streams = {question: engine.submit(ask(question), GREEDY) for question in QUESTIONS}
    engine.start()
    for question, stream in streams.items():
        assert "".join(stream) == alone[question]
    groups = engine.stats.prefill_group_histogram
    if mix:  # the first pass is grouped (nobody decodes yet); the others join inside its answers' steps
        assert groups == {2: 1} and engine.stats.mixed_steps > 0
    else:
        assert max(groups) <= 2 and sum(size * times for size, times in groups.items()) == len(QUESTIONS)


def test_more_requests_than_slots_take_turns(make_engine, alone):
    engine = make_engine(max_batch=2)
    engine.start()
    streams = {question: engine.submit(ask(question), GREEDY) for question in QUESTIONS}
    assert engine.stats.waiting + engine.stats.active == len(QUESTIONS)
    for question, stream in streams.items():
        assert "".join(stream) == alone[question]
    stats = engine.stats
    assert stats.max_batch_seen == 2 and set(stats.batch_size_histogram) <= {1, 2}
    assert stats.waiting == 0


def test_cancel_stops_one_answer_and_the_others_go_on(make_engine, alone):
    engine = make_engine(max_batch=4)
    engine.start()
    long = engine.submit(ask("Hi"), GREEDY.replace(max_new_tokens=200))
    other = engine.submit(ask(QUESTIONS[0]), GREEDY)
    pieces = iter(long)
    for _ in range(3):
        next(pieces)
    long.cancel()
    assert list(pieces) == [] and long.cancelled
    wait_until(lambda: long.finished)
    tokens = long.tokens
    assert "".join(other) == alone[QUESTIONS[0]]
    assert long.tokens == tokens < 100 and long.error is None
    wait_until(lambda: engine.stats.active == 0)


def test_too_long_prompt_is_refused_at_submit_and_others_are_served(make_engine, alone):
    engine = make_engine(max_batch=2)
    engine.start()
    running = engine.submit(ask(QUESTIONS[1]), GREEDY)
    with pytest.raises(PromptTooLong, match=r"limit is \d+ tokens"):
        engine.submit(ask("word " * 400), GREEDY)
    with pytest.raises(ValueError, match="must end with the user"):
        engine.submit([Turn("assistant", "hello")], GREEDY)
    assert "".join(running) == alone[QUESTIONS[1]]
    assert "".join(engine.submit(ask(QUESTIONS[2]), GREEDY)) == alone[QUESTIONS[2]]


def test_a_failing_request_fails_alone(make_engine, alone, monkeypatch):
    engine = make_engine(max_batch=4)
    bad_prompt = engine.generator.fit(ask(QUESTIONS[3]), GREEDY).token_ids
    push = AnswerText.push

    def faulty_push(self, token_id):  # this one request's text breaks on its 5th token
        if self.prompt_ids == bad_prompt and self.tokens == 4:
            raise RuntimeError("detokenizer broke")
        return push(self, token_id)

    monkeypatch.setattr(AnswerText, "push", faulty_push)
    engine.start()
    streams = {question: engine.submit(ask(question), GREEDY) for question in QUESTIONS[2:5]}
    bad = streams.pop(QUESTIONS[3])
    with pytest.raises(RuntimeError, match="detokenizer broke"):
        list(bad)
    assert bad.finished and isinstance(bad.error, RuntimeError) and bad.tokens == 4
    for question, stream in streams.items():
        assert "".join(stream) == alone[question]
    assert "".join(engine.submit(ask(QUESTIONS[0]), GREEDY)) == alone[QUESTIONS[0]]  # the engine still serves


LONG_QUESTION = "Tell me about the lazy dog. " * 6  # 150 prompt tokens: several steps of a small mixed-prefill budget


def start_decoding(engine: Engine, question: str, params: GenerationParams) -> AnswerStream:
    """A request already decoding (its first token out) when the next ones arrive."""
    stream = engine.submit(ask(question), params)
    wait_until(lambda: stream.tokens > 0)
    return stream


@pytest.mark.parametrize("mix", [True, False], ids=["mixed", "unmixed"])
def test_prompts_arriving_while_others_decode_answer_as_alone_and_pause_them_at_most_a_chunk(
        make_engine, loaded, monkeypatch, mix):
    """A long prompt (four chunks) and short ones (grouped when not mixed) arrive together while one answer
    decodes. Mixed, they are prefilled inside its decode steps: between two of its tokens at most one chunk of
    prompt runs. Unmixed, the short prompts' grouped pass (rows padded, over a chunk) runs between two."""
    chunk = 40  # under the short prompts together (20-33 tokens each), over each alone
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", chunk)
    monkeypatch.setattr(engine_module, "MIXED_PREFILL_TOKENS", chunk)
    requests = [(QUESTIONS[1], GREEDY), (LONG_QUESTION, GREEDY), (QUESTIONS[0], GREEDY),
                (QUESTIONS[5], GREEDY), (QUESTIONS[3], GREEDY.replace(max_new_tokens=5))]
    expected = answered_alone(loaded, requests)
    engine = make_engine(max_batch=6, mix_prefill=mix)
    engine.runtime.windows = attention_windows(engine.runtime.max_seq_len, smallest=16)  # parts in other windows
    engine.start()
    streams = [start_decoding(engine, *requests[0])]
    streams += [engine.submit(ask(question), params) for question, params in requests[1:]]
    for stream, answer in zip(streams, expected):
        assert "".join(stream) == answer and stream.error is None
    wait_until(lambda: engine.stats.active == 0)
    stats = engine.stats
    assert stats.max_batch_seen >= 3
    if mix:
        assert stats.mixed_steps >= 4  # the long prompt's 150 tokens alone take four
        assert 0 < stats.longest_decode_pause_tokens <= chunk
    else:
        assert stats.mixed_steps == 0 and stats.longest_decode_pause_tokens > chunk


def test_a_long_prompt_goes_in_a_chunk_a_step_while_short_ones_pack_up_to_the_budget(make_engine, loaded,
                                                                                       monkeypatch):
    """Mixed steps carry up to MIXED_PREFILL_TOKENS of whole short prompts, but a long one only PREFILL_CHUNK a
    step: the answer streaming meanwhile pauses for one chunk of it, and everyone's answer is as alone."""
    chunk = 16
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", chunk)
    monkeypatch.setattr(engine_module, "MIXED_PREFILL_TOKENS", 4 * chunk)
    requests = [(QUESTIONS[1], GREEDY), (LONG_QUESTION, GREEDY)]
    expected = answered_alone(loaded, requests)
    engine = make_engine(mix_prefill=True, max_batch=3)
    engine.start()
    streams = [start_decoding(engine, *requests[0]), engine.submit(ask(LONG_QUESTION), GREEDY)]
    for stream, answer in zip(streams, expected):
        assert "".join(stream) == answer and stream.error is None
    stats = engine.stats
    assert stats.mixed_steps >= streams[1].prompt_tokens // chunk  # ~150 tokens: ten steps, not three
    assert 0 < stats.longest_decode_pause_tokens <= chunk


def test_cancelling_a_prompt_part_way_through_mixed_prefill_ends_only_it(make_engine, loaded, alone, monkeypatch):
    monkeypatch.setattr(engine_module, "MIXED_PREFILL_TOKENS", 8)  # the long prompt takes ~19 mixed steps
    engine = make_engine(mix_prefill=True, max_batch=3, step_delay=0.01)
    engine.start()
    decoding = start_decoding(engine, QUESTIONS[1], GREEDY)
    long = engine.submit(ask(LONG_QUESTION), GREEDY)
    wait_until(lambda: engine.stats.mixed_steps >= 3)
    long.cancel()
    after = engine.submit(ask(QUESTIONS[0]), GREEDY)  # prefilled into the slot the cancel freed
    assert list(long) == []
    wait_until(lambda: long.finished)
    assert long.tokens == 0 and long.error is None
    assert "".join(decoding) == alone[QUESTIONS[1]]
    assert "".join(after) == alone[QUESTIONS[0]]
    wait_until(lambda: engine.stats.active == 0)


def test_a_request_failing_as_it_joins_from_a_mixed_step_fails_alone(make_engine, alone, monkeypatch):
    engine = make_engine(mix_prefill=True, max_batch=4)
    bad_prompt = engine.generator.fit(ask(QUESTIONS[3]), GREEDY).token_ids
    push = AnswerText.push

    def faulty_push(self, token_id):  # its first token, sampled by the mixed step that ended its prompt
        if self.prompt_ids == bad_prompt:
            raise RuntimeError("detokenizer broke")
        return push(self, token_id)

    monkeypatch.setattr(AnswerText, "push", faulty_push)
    engine.start()
    decoding = start_decoding(engine, QUESTIONS[1], GREEDY)
    bad, good = (engine.submit(ask(q), GREEDY) for q in (QUESTIONS[3], QUESTIONS[4]))
    with pytest.raises(RuntimeError, match="detokenizer broke"):
        list(bad)
    assert bad.tokens == 0
    assert "".join(good) == alone[QUESTIONS[4]] and "".join(decoding) == alone[QUESTIONS[1]]
    assert engine.stats.mixed_steps > 0


def test_a_failing_mixed_step_ends_its_prompts_and_the_decoding_answers_go_on(make_engine, alone):
    engine = make_engine(mix_prefill=True, max_batch=4)
    launch_mixed = engine.runtime.launch_mixed
    failures = []

    def fails_once(rows, longest, segments):
        if not failures:
            failures.append(segments)
            raise RuntimeError("out of memory in the prefill")
        return launch_mixed(rows, longest, segments)

    engine.runtime.launch_mixed = fails_once
    engine.start()
    decoding = start_decoding(engine, QUESTIONS[1], GREEDY)
    failed = engine.submit(ask(QUESTIONS[0]), GREEDY)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(failed)
    assert failures and failed.tokens == 0
    later = engine.submit(ask(QUESTIONS[2]), GREEDY)  # mixed again, into the slot the failure freed
    assert "".join(later) == alone[QUESTIONS[2]]
    assert "".join(decoding) == alone[QUESTIONS[1]] and decoding.error is None
    assert engine.stats.mixed_steps > 0
    wait_until(lambda: engine.stats.active == 0)


def test_stop_ends_unfinished_answers_with_an_error(make_engine):
    engine = make_engine(max_batch=1, step_delay=0.01)
    engine.start()
    running = engine.submit(ask("Hi"), GREEDY.replace(max_new_tokens=200))
    queued = engine.submit(ask(QUESTIONS[0]), GREEDY)
    next(iter(running))
    engine.stop()
    for stream in (running, queued):
        with pytest.raises(EngineStopped, match="engine stopped"):
            list(stream)
        assert stream.finished
    with pytest.raises(EngineStopped):
        engine.submit(ask("Hi"), GREEDY)


def test_batched_reading_gets_what_came_while_it_rested_and_the_end_without_waiting():
    """How a job thread reads: the first text at once, then what arrived meanwhile as one piece; the end of
    the answer wakes it in the middle of a long rest."""
    stream = AnswerStream()
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(stream.batches(interval=5.0)))
    reader.start()
    stream._deliver("Hello", 1)
    wait_until(lambda: got == ["Hello"])
    for tokens, word in enumerate([" big", " wide", " world"], start=2):
        stream._deliver(word, tokens)

    stream._end()
    reader.join(timeout=2.0)

    assert not reader.is_alive()  # did not sit out its 5 s rest
    assert got == ["Hello", " big wide world"]
    assert stream.text == "Hello big wide world"


def test_batched_reading_raises_a_failed_answers_error_after_its_text():
    stream = AnswerStream()
    stream._deliver("partial", 1)
    stream._end(RuntimeError("the GPU fell over"))

    pieces = stream.batches(interval=0.01)
    assert next(pieces) == "partial"
    with pytest.raises(RuntimeError, match="fell over"):
        next(pieces)
