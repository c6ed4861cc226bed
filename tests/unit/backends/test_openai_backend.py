"""The openai backend against a real OpenAI-compatible HTTP server on loopback (tests/fakes/fake_openai.py):
text in order, answers in flight together, cancel closes the connection, and each way the server fails becomes
the right reply or retry."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import SecretStr

from tests.fakes.fake_openai import FakeOpenAI
from worker.backends import describe
from worker.backends.openai_backend import BackendPromptTooLong, OpenAIBackend
from worker.errors import BackendRefused, BackendUnavailable, PromptTooLong
from worker.inference.prompt import Turn
from worker.inference.sampling import GenerationParams
from worker.settings import Settings

KEY = "sk-very-secret-key"
QUESTION = [Turn("user", "one two three four five six")]


@pytest.fixture
def fake():
    with FakeOpenAI(api_key=KEY, model="fake-model") as server:
        yield server


def backend_for(fake, **overrides) -> OpenAIBackend:
    settings = dict(backend="openai", backend_url=fake.base_url, backend_key=SecretStr(KEY),
                    backend_model="fake-model", backend_timeout_s=2.0, max_new_tokens=64, temperature=0.5)
    window = overrides.pop("window", 5.0)
    backend = OpenAIBackend(Settings(**(settings | overrides)), rate_limit_window_s=window)
    backend.start()
    return backend


def read_all(stream, interval: float = 0.0) -> str:
    return "".join(stream.batches(interval))


def test_streamed_text_arrives_in_order_with_the_jobs_settings(fake):
    backend = backend_for(fake, system_prompt="Be brief.")
    history = [Turn("user", "Hi"), Turn("assistant", "Hello!"), *QUESTION]
    stream = backend.submit(history, GenerationParams(temperature=0.2, top_p=0.9, top_k=5, max_new_tokens=20))
    assert read_all(stream) == "You said: one two three four five six"
    assert stream.finished and not stream.cancelled and stream.error is None
    assert stream.tokens == 8 and stream.prompt_tokens is not None  # the server's usage chunk
    assert stream.first_token_at >= stream.submitted_at and stream.last_token_at >= stream.first_token_at
    body, = [r.body for r in fake.requests]
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": "one two three four five six"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["stream"]) == (0.2, 0.9, 20, True)
    assert "top_k" not in body  # vLLM's extra, off unless XWINBOT_BACKEND_TOP_K
    assert fake.requests[0].key == KEY
    assert backend.stats.tokens_generated == 8 and backend.stats.decoding == 0


def test_the_jobs_system_prompt_wins_and_top_k_goes_when_asked(fake):
    backend = backend_for(fake, system_prompt="Configured.", backend_top_k=True)
    read_all(backend.submit(QUESTION, GenerationParams(top_k=7), system_prompt="The channel's persona."))
    body = fake.requests[-1].body
    assert body["messages"][0] == {"role": "system", "content": "The channel's persona."}
    assert body["top_k"] == 7


def test_batches_gather_what_arrived_meanwhile(fake):
    fake.word_delay_s = 0.05
    pieces = list(backend_for(fake).submit(QUESTION).batches(0.2))
    assert "".join(pieces) == "You said: one two three four five six"
    assert 1 < len(pieces) < 8  # the first at once, then a few gathered ones, not one per word


def test_two_answers_stream_at_once(fake):
    fake.word_delay_s = 0.05
    backend = backend_for(fake)
    answers = {}

    def ask(name):
        answers[name] = read_all(backend.submit([Turn("user", f"question {name} with some words")]))

    threads = [threading.Thread(target=ask, args=(n,)) for n in ("a", "b")]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == {n: f"You said: question {n} with some words" for n in ("a", "b")}
    assert fake.max_in_flight == 2
    assert backend.stats.max_batch_seen == 2
    assert time.monotonic() - started < 2 * 6 * 0.05 + 0.5  # overlapped, not one after the other


def test_cancel_closes_the_connection(fake):
    fake.word_delay_s = 0.1
    fake.answer = " ".join(f"w{i}" for i in range(100))
    stream = backend_for(fake).submit(QUESTION, GenerationParams(max_new_tokens=100))
    pieces = stream.batches(0.0)
    assert next(pieces) == "w0"
    stream.cancel()
    assert list(pieces) == []
    assert stream.cancelled and stream.finished and stream.error is None
    fake.wait_for(lambda: fake.requests[0].outcome == "client_closed")
    assert fake.requests[0].words_sent < 20


@pytest.mark.parametrize("key, model, says", [
    ("wrong-key", "fake-model", "refused this bot's key (HTTP 401)"),
    (KEY, "no-such-model", "has no model `no-such-model` (HTTP 404)"),
])
def test_a_wrong_key_or_model_is_a_clear_reply(fake, caplog, key, model, says):
    backend = backend_for(fake, backend_key=SecretStr(key), backend_model=model)
    with pytest.raises(BackendRefused, match=says.replace("(", r"\(").replace(")", r"\)")) as raised:
        backend.submit(QUESTION)
    assert isinstance(raised.value, ValueError)  # worker.tasks replies with its message, status "refused"
    assert len(fake.requests) == 1  # not retried: another attempt would not help
    assert KEY not in caplog.text and "wrong-key" not in caplog.text and KEY not in str(raised.value)


def test_a_conversation_too_long_drops_old_turns_then_says_the_limit(fake):
    fake.context_tokens = 30
    backend = backend_for(fake)
    old = [Turn("user", "word " * 10), Turn("assistant", "word " * 10)]
    stream = backend.submit([*old, Turn("user", "short question")], GenerationParams(max_new_tokens=10))
    assert read_all(stream) == "You said: short question"
    assert [len(r.body["messages"]) for r in fake.requests] == [3, 1]  # the oldest exchange went first
    with pytest.raises(PromptTooLong) as raised:  # what submit_fitting shortens files on, and tasks replies with
        backend.submit([Turn("user", "word " * 40)], GenerationParams(max_new_tokens=10))
    assert isinstance(raised.value, BackendPromptTooLong)
    assert str(raised.value) == PromptTooLong(40, 20).args[0]  # our own engine's sentence: 30 - 10 answer tokens


def test_a_server_error_or_no_server_raises_for_a_retry(fake):
    backend = backend_for(fake)
    fake.fail_next("500")
    with pytest.raises(BackendUnavailable, match=r"did not answer \(HTTP 500\)"):
        backend.submit(QUESTION)
    assert read_all(backend.submit(QUESTION)).startswith("You said:")  # the next attempt is answered
    fake.stop()
    with pytest.raises(BackendUnavailable, match="did not answer"):
        backend.submit(QUESTION)


def test_a_silent_server_times_out(fake):
    backend = backend_for(fake, backend_timeout_s=0.5)
    fake.fail_next("hang")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="silent too long"):
        backend.submit(QUESTION)
    assert time.monotonic() - started < 3
    fake.fail_next("stall", after_words=2)
    stream = backend.submit(QUESTION)
    with pytest.raises(BackendUnavailable, match="stopped in the middle of the answer"):
        read_all(stream)
    assert stream.text == "You said:" and stream.finished and isinstance(stream.error, BackendUnavailable)


def test_a_dropped_stream_raises_for_a_retry(fake):
    fake.fail_next("drop", after_words=3)
    stream = backend_for(fake).submit(QUESTION)
    with pytest.raises(BackendUnavailable, match="stopped in the middle of the answer"):
        read_all(stream)
    assert stream.text == "You said: one"
    assert backend_for(fake).stats.decoding == 0


def test_rate_limits_are_waited_out_then_refused(fake):
    backend = backend_for(fake, window=3.0)
    fake.fail_next("429", retry_after=0.3)
    started = time.monotonic()
    assert read_all(backend.submit(QUESTION)).startswith("You said:")
    assert 0.3 <= time.monotonic() - started < 2
    fake.fail_next("429", times=5, retry_after=1)
    with pytest.raises(BackendRefused, match="too busy"):
        backend.submit(QUESTION)
    assert 3 <= len(fake.requests) - 2 <= 4  # waited 1 s a time within the 3 s window, then gave up


def test_describe_and_stop(fake):
    settings = Settings(backend="openai", backend_url=fake.base_url, backend_model="fake-model",
                        backend_key=SecretStr(KEY))
    backend = OpenAIBackend(settings)
    info = describe(backend, settings)
    assert (info.name, info.model, info.device, info.context_tokens, info.gpu) == \
        ("openai", "fake-model", fake.base_url, None, None)
    assert not backend.running
    backend.start()
    assert backend.running
    fake.word_delay_s = 0.2
    stream = backend.submit(QUESTION)
    backend.stop()
    assert not backend.running
    with pytest.raises(BackendUnavailable):
        read_all(stream)
    with pytest.raises(BackendUnavailable, match="stopping"):
        backend.submit(QUESTION)
