"""Streamed replies: throttled edits, retries with backoff, a clear failure when a reply cannot be delivered."""

import pytest

from worker.posters.base import DeliveryFailed, StreamingReply, deliver


class Recorder:
    """Stands in for a chat platform (the boundary): records every call, can fail the first N."""

    def __init__(self, failures: int = 0):
        self.calls, self.failures = [], failures

    def _record(self, kind, text):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("platform unavailable")
        self.calls.append((kind, text))

    def waiting(self, job, position):
        self._record("waiting", position)

    def update(self, job, text):
        self._record("update", text)

    def finish(self, job, text):
        self._record("finish", text)

    def fail(self, job, message):
        self._record("fail", message)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_edits_are_throttled_to_one_per_interval():
    poster, clock = Recorder(), FakeClock()
    reply = StreamingReply(poster, job=None, interval=1.0, clock=clock)
    for i in range(30):  # 30 pieces over 3 seconds
        clock.now = i * 0.1
        reply.add(f"w{i} ")
    reply.finish()
    updates = [text for kind, text in poster.calls if kind == "update"]
    assert len(updates) == 3  # at 0.0, 1.0, 2.0 s
    assert updates[0] == "w0 "  # the first token shows at once
    assert poster.calls[-1] == ("finish", " ".join(f"w{i}" for i in range(30)))


def test_a_flaky_platform_is_retried(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    poster = Recorder(failures=2)
    deliver(lambda: poster.finish(None, "Paris."), attempts=4)
    assert poster.calls == [("finish", "Paris.")]


def test_an_undeliverable_reply_says_why(monkeypatch):
    delays = []
    monkeypatch.setattr("time.sleep", delays.append)
    poster = Recorder(failures=10)
    with pytest.raises(DeliveryFailed, match="could not deliver the answer after 4 attempts: platform unavailable"):
        deliver(lambda: poster.finish(None, "Paris."), attempts=4, what="answer")
    assert delays == [0.5, 1.0, 2.0]  # exponential backoff


def test_cancelled_answer_says_so():
    poster = Recorder()
    reply = StreamingReply(poster, job=None, interval=1.0, clock=FakeClock())
    reply.add("The capital")
    reply.finish("\n\n(stopped)")
    assert poster.calls[-1] == ("finish", "The capital\n\n(stopped)")
